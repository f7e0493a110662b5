"""Decoding a field: plane decoder + the per-point CFC MLP over an R x R grid (batch 1).

The MLP's cost per point is counted from its per-point matrix products (2 x in x out FLOPs for
every modulated/skip linear layer; the per-sample style projections are excluded), so GFLOP/s
can be compared with this machine's fp32 matrix-product ceiling (about 80 GFLOP/s on 2 cores).
"""

from __future__ import annotations

import torch

from .common import OFFICIAL_IMAGE, Context, Row, bench, case

CEILING_GFLOPS = 80.0
# official-cpu-timings.md: decode planes + MLP at 64^2 / 256^2 / 1024^2 (seconds)
OFFICIAL_S = {64: 0.17, 256: 2.73, 1024: 44.0}


def mlp_flops_per_point(mlp: torch.nn.Module) -> float:
    from ddmi.fields import EqualLinear, ModulatedLinear
    flops = 0
    for name, m in mlp.named_modules():
        if isinstance(m, ModulatedLinear) or (isinstance(m, EqualLinear) and name.endswith("skip")):
            flops += 2 * m.weight.numel()
    return float(flops)


def _decode_rows(name: str, overrides: list[str], resolutions, ctx: Context, *, chunk: int = 8192,
                 compare: bool = False) -> list[Row]:
    from ddmi.config import load_config
    from ddmi.domains.image import render_image
    from ddmi.models import build_autoencoder

    cfg = load_config("image-tiny", overrides)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval()
    z = torch.randn(1, *ae.latent_shape)
    fpp = mlp_flops_per_point(ae.mlp)
    rows = []
    for r in resolutions:
        def run():
            with torch.inference_mode():
                render_image(ae.decode(z, chunk=chunk), r, train_resolution=ae.resolution)
        repeats = 5 if r <= 256 else (3 if r <= 1024 else 1)
        t = bench(run, warmup=1 if r <= 1024 else 0, repeats=ctx.reps(1, repeats)[1])
        pts = r * r / t.median
        gflops = pts * fpp / 1e9
        row = t.row(f"{name}-{r}", f"decode planes + MLP at {r}x{r}", "s",
                    f"{pts / 1e3:,.0f} k points/s; {fpp / 1e6:.2f} MFLOP/pt -> {gflops:.1f} GFLOP/s "
                    f"({100 * gflops / CEILING_GFLOPS:.0f}% of {CEILING_GFLOPS:.0f}); chunk {chunk}")
        if compare and r in OFFICIAL_S:
            row.compare(OFFICIAL_S[r])
        rows.append(row)
    return rows


@case("decode-official")
def decode_official(ctx: Context) -> list[Row]:
    """Reduced official image config (MLP width 128, 3 x 32-ch planes): 64^2, 256^2, 1024^2."""
    return _decode_rows("decode-official", OFFICIAL_IMAGE, (64, 256, 1024), ctx, compare=True)


@case("decode-tiny")
def decode_tiny(ctx: Context) -> list[Row]:
    """image-tiny preset: one field rendered at 256^2, 1024^2, 2048^2 (time and peak memory)."""
    return _decode_rows("decode-tiny", [], (256, 1024, 2048), ctx)


@case("decode-chunks")
def decode_chunks(ctx: Context) -> list[Row]:
    """Chunk-size sweep at 256^2 for the reduced official config (points per MLP call)."""
    rows = []
    for chunk in (1024, 4096, 8192, 32768, 65536):
        rows += _decode_rows(f"decode-chunk{chunk}", OFFICIAL_IMAGE, (256,), ctx, chunk=chunk)
    return rows
