"""Video: stage-1 training step and decoding throughput for 16 x 64^2 and 16 x 256^2 clips.

The model is the video-tiny architecture scaled to the clip size (``ch_mult [1,2,2,2]``: patch 8,
latent 8x8 / 32x32 like the paper's at 256, planes at R/4, R/2, R; cross-plane attention at
R/8 and R/4), batch 1. One stage-1 step = ``VideoAutoencoder.forward`` (TimeSformer encode,
reparameterised sample, plane decoder, the MLP at every one of the 16 R^2 points, L1 + KL + SN),
backward and AdamW. Decoding = latent -> planes -> MLP over the whole 16 x R x R grid (chunks of
16k points). The ``decode-mlp-paper`` case runs the paper-size MLPVideo (0.86 M) on random
paper-size planes (64 channels; xy 64^2..256^2, time planes 16 x 64..256), i.e. the per-point
cost of a SkyTimelapse field; its FLOPs per point are 2 x the MLP's linear weights.
"""

from __future__ import annotations

import time

import torch

from .common import Context, Row, bench, case

CEILING_GFLOPS = 80.0


def _overrides(r: int) -> list[str]:
    return [f"data.resolution={r}", "video.frames=16", "vae.ch_mult=[1,2,2,2]",
            f"vae.hdbpe_resolutions=[{r // 2},{r // 4}]", f"vae.inter_attn_resolutions=[{r // 8},{r // 4}]"]


def _mlp_flops(mlp: torch.nn.Module) -> float:
    return float(sum(2 * m.weight.numel() for m in mlp.modules() if isinstance(m, torch.nn.Linear)))


def _stage1_rows(r: int, ctx: Context, warmup: int, repeats: int) -> list[Row]:
    from ddmi.config import load_config
    from ddmi.models import build_autoencoder
    from ddmi.training.vae_task import kl_weight, spectral_weight

    cfg = load_config("video-tiny", _overrides(r))
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 3, 16, r, r, generator=g) * 2 - 1
    rand = ae.random_inputs(g, 1, hflip=False)
    kl = kl_weight(cfg, 0)
    phases: dict[str, list[float]] = {"fwd": [], "bwd": [], "opt": []}

    def step():
        t0 = time.perf_counter()
        loss, _ = ae(clip, rand, kl_weight=kl, sn_weight=spectral_weight(cfg, kl))
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        for k, dt in zip(phases, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
            phases[k].append(dt)

    w, n = ctx.reps(warmup, repeats)
    t = bench(step, warmup=w, repeats=n)
    med = {k: sorted(v[w:])[len(v[w:]) // 2] for k, v in phases.items()}
    vae_m = sum(p.numel() for p in ae.vae.parameters()) / 1e6
    extra = (f"batch 1, 16x{r}x{r} clip; VAE {vae_m:.2f} M + MLP {sum(p.numel() for p in ae.mlp.parameters()) / 1e6:.3f} M; "
             f"fwd {med['fwd']:.2f} / bwd {med['bwd']:.2f} / AdamW {med['opt']:.2f} s; {w} warm-up + {n}")
    return [t.row(f"video-stage1-{r}", f"stage-1 train step, 16x{r}x{r} clip", "s", extra)]


def _decode_rows(r: int, ctx: Context, repeats: int) -> list[Row]:
    from ddmi.config import load_config
    from ddmi.models import build_autoencoder
    from ddmi.domains.video.model import render_clip

    cfg = load_config("video-tiny", _overrides(r))
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval()
    z = torch.randn(1, *ae.latent_shape)
    planes_t: list[float] = []

    def run():
        with torch.inference_mode():
            t0 = time.perf_counter()
            field = ae.decode(z, chunk=16384)
            planes_t.append(time.perf_counter() - t0)
            render_clip(field, r, 16)

    w, n = ctx.reps(1, repeats)
    t = bench(run, warmup=w, repeats=n)
    pts = 16 * r * r
    fpp = _mlp_flops(ae.mlp)
    gflops = pts / t.median * fpp / 1e9
    extra = (f"{16 / t.median:.1f} frames/s, {pts / t.median / 1e3:,.0f} k points/s; planes "
             f"{sorted(planes_t[w:])[len(planes_t[w:]) // 2]:.3f} s; MLP {fpp / 1e3:.0f} kFLOP/pt "
             f"({gflops:.1f} GFLOP/s in the whole decode)")
    return [t.row(f"video-decode-{r}", f"decode latent -> 16x{r}x{r} clip", "s", extra)]


@case("video-stage1-64")
def video_stage1_64(ctx: Context) -> list[Row]:
    """Stage-1 train step on a 16x64x64 clip (video-tiny widths, patch 8), batch 1."""
    return _stage1_rows(64, ctx, warmup=1, repeats=5)


@case("video-stage1-256", slow=True)
def video_stage1_256(ctx: Context) -> list[Row]:
    """Stage-1 train step on a 16x256x256 clip (video-tiny widths, patch 8), batch 1."""
    return _stage1_rows(256, ctx, warmup=1, repeats=2)


@case("video-decode-64")
def video_decode_64(ctx: Context) -> list[Row]:
    """Decode a latent to a 16x64x64 clip (planes + MLP at every point)."""
    return _decode_rows(64, ctx, repeats=5)


@case("video-decode-256")
def video_decode_256(ctx: Context) -> list[Row]:
    """Decode a latent to a 16x256x256 clip (planes + MLP at every point)."""
    return _decode_rows(256, ctx, repeats=3)


@case("video-decode-mlp-paper", slow=True)
def video_decode_mlp_paper(ctx: Context) -> list[Row]:
    """Paper-size MLPVideo on random paper-size planes: all 16x256x256 points of a clip."""
    from ddmi.fields import Field
    from ddmi.domains.video.model import VideoMLP, render_clip

    torch.manual_seed(0)
    mlp = VideoMLP(plane_channels=64, num_scales=3, hidden=256).eval()
    planes = []
    for r in (64, 128, 256):
        planes += [torch.randn(1, 64, r, r), torch.randn(1, 64, 16, r), torch.randn(1, 64, 16, r)]
    rows = []
    for chunk in (16384,):
        field = Field(planes, mlp, {}, chunk=chunk)

        def run():
            with torch.inference_mode():
                render_clip(field, 256, 16)

        t = bench(run, warmup=0, repeats=ctx.reps(1, 2)[1])
        pts = 16 * 256 * 256
        fpp = _mlp_flops(mlp)
        gflops = pts / t.median * fpp / 1e9
        rows.append(t.row(f"video-decode-mlp-paper-{chunk // 1024}k", "paper MLP over a 16x256x256 clip", "s",
                          f"{pts / t.median / 1e3:,.0f} k points/s; {fpp / 1e6:.2f} MFLOP/pt -> {gflops:.1f} GFLOP/s "
                          f"({100 * gflops / CEILING_GFLOPS:.0f}% of {CEILING_GFLOPS:.0f}); chunk {chunk}"))
    return rows
