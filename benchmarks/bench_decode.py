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
    from ddmi.domains.image.pixels import render_image
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


# ------------------------------------------------------------------------------------------
# "before": the official formulation of the same MLP, for a same-run comparison


def _conv_styled(layer, x, style, *, demodulate=True, bias=None, act=True):
    """A modulated linear as the official code runs it: a grouped 1x1 convolution with
    per-sample modulated (and demodulated) weights over a ``(B, C, N, 1)`` feature map."""
    import torch.nn.functional as F
    lin = layer if bias is None and not act else layer.linear
    b, c = x.shape[:2]
    s = lin.modulation(style) * lin.scale                                  # (B, in)
    w = lin.weight[None] * s[:, None, :]                                   # (B, out, in)
    if demodulate:
        w = w * torch.rsqrt(w.pow(2).sum(2, keepdim=True) + 1e-8)
    out = F.conv2d(x.reshape(1, b * c, -1, 1), w.reshape(-1, c, 1, 1), groups=b).reshape(b, -1, x.shape[2], 1)
    if act:
        out = F.leaky_relu(out + layer.bias[None, :, None, None], 0.2) * 2 ** 0.5
    return out


def conv_mlp_forward(mlp, planes, coords, si):
    """``ImageMLP.forward`` written with 1x1 convolutions on ``(B, C, N, 1)`` maps (official style)."""
    import torch.nn.functional as F

    from ddmi.fields import sample_plane, sinusoidal_embedding
    style = mlp.style(sinusoidal_embedding(si, mlp.spec.scale_embed_dim))
    si_map = si[:, None, None, None].expand(-1, 2, coords.shape[1], 1)
    h = None
    for plane, block in zip(planes, mlp.blocks):
        f = torch.cat([sample_plane(plane, coords).transpose(1, 2)[..., None], si_map], dim=1)
        x = f if h is None else torch.cat([h, f], dim=1)
        y = x
        for layer in block.layers:
            y = _conv_styled(layer, y, style)
        skip = x if isinstance(block.skip, torch.nn.Identity) else F.conv2d(
            x, (block.skip.weight * block.skip.scale)[..., None, None])
        h = (y + skip) / 2 ** 0.5
    y = h
    for layer in mlp.final.layers:
        y = _conv_styled(layer, y, style)
    h = (y + h) / 2 ** 0.5
    rgb = _conv_styled(mlp.to_rgb, h, style, demodulate=False, act=False) + mlp.rgb_bias[None, :, None, None]
    return rgb[..., 0].transpose(1, 2)


@case("decode-before-after")
def decode_before_after(ctx: Context) -> list[Row]:
    """Reduced official config at 256^2: official-style 1x1 convs over 65,536-point chunks
    (before) vs ddmi's batched matrix products over 8,192-point chunks (after), same run."""
    from ddmi.config import load_config
    from ddmi.fields import Field, image_grid
    from ddmi.models import build_autoencoder

    cfg = load_config("image-tiny", OFFICIAL_IMAGE)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval()
    z = torch.randn(1, *ae.latent_shape)
    coords = image_grid(256, 256).reshape(-1, 2)
    si = torch.ones(1)
    with torch.inference_mode():
        planes = ae.vae.decode(z)
        ref = Field(planes, ae.mlp, {"si": si}, chunk=8192).query(coords)
        old = Field(planes, lambda p, c, si: conv_mlp_forward(ae.mlp, p, c, si), {"si": si}, chunk=65536)
        assert torch.allclose(old.query(coords), ref, atol=1e-4), "the two formulations disagree"
    fpp = mlp_flops_per_point(ae.mlp)
    rows = []
    for label, chunk, decoder in (("before", 65536, lambda p, c, si: conv_mlp_forward(ae.mlp, p, c, si)),
                                  ("after", 8192, ae.mlp)):
        def run():
            with torch.inference_mode():
                Field(ae.vae.decode(z), decoder, {"si": si}, chunk=chunk).query(coords)
        t = bench(run, warmup=1, repeats=ctx.reps(1, 5)[1])
        pts = 256 * 256 / t.median
        rows.append(t.row(f"decode-{label}", f"{label}: MLP as {'1x1 convs' if label == 'before' else 'matmuls'} "
                          f"at 256x256", "s",
                          f"{pts / 1e3:,.0f} k points/s, {pts * fpp / 1e9:.1f} GFLOP/s, chunk {chunk}")
                    .compare(OFFICIAL_S[256]))
    rows[1].extra += f"; {rows[0].median / rows[1].median:.2f}x the 'before' row"
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


def _render_whole_grid(field, r: int, train_resolution: int) -> torch.Tensor:
    """The previous render path, for a same-run memory comparison: one ``(R*R, 2)`` coordinate
    grid, a list of per-chunk outputs, then their concatenation."""
    from ddmi.domains.image.pixels import scale_injection
    from ddmi.fields import image_grid
    coords = image_grid(r).reshape(-1, 2)
    si = torch.full((field.batch_size,), scale_injection(train_resolution, r))
    outs = [field.decoder(field.planes, coords[None, i:i + field.chunk].expand(field.batch_size, -1, -1), si=si)
            for i in range(0, len(coords), field.chunk)]
    return torch.cat(outs, dim=1).transpose(1, 2).reshape(field.batch_size, 3, r, r).clamp(-1, 1)


def _memory_rows(label: str, ctx: Context) -> list[Row]:
    from ddmi.config import load_config
    from ddmi.domains.image.pixels import render_image
    from ddmi.models import build_autoencoder

    cfg = load_config("image-tiny", [])
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval()
    z = torch.randn(1, *ae.latent_shape)
    render = (lambda f, r: _render_whole_grid(f, r, ae.resolution)) if label == "before" else \
        (lambda f, r: render_image(f, r, train_resolution=ae.resolution))
    rows = []
    for r in (1024, 2048, 4096):
        def run():
            with torch.inference_mode():
                render(ae.decode(z, chunk=8192), r)
        t = bench(run, warmup=0, repeats=1)
        rows.append(t.row(f"decode-mem-{r}-{label}", f"{label}: render image-tiny at {r}x{r}", "s",
                          f"output {r * r * 3 * 4 / 2**20:.0f} MiB; chunk 8192 points"))
    return rows


@case("decode-memory-before", slow=True)
def decode_memory_before(ctx: Context) -> list[Row]:
    """image-tiny at 1024^2 .. 4096^2 through the previous whole-grid path (time, +RSS)."""
    return _memory_rows("before", ctx)


@case("decode-memory-after", slow=True)
def decode_memory_after(ctx: Context) -> list[Row]:
    """image-tiny at 1024^2 .. 4096^2, streamed: coordinates per chunk of rows, written into the
    output (time, +RSS; the output alone is R^2 x 3 x 4 bytes)."""
    return _memory_rows("after", ctx)
