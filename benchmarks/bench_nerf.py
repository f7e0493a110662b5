"""NeRF domain: volume-rendering throughput (rays/s) and the stage-1 train step of nerf-tiny.

Rendering: a decoded field (random latent; the cost does not depend on the weights) rendered
from one camera under ``torch.inference_mode`` with the preset's ``render_samples`` stratified
samples per ray and its ``render_chunk``; one iteration = one full image, the figure is rays per
second (pixels / median time). The srn_cars field (MLPNeRF 0.55 M parameters, 256 samples per
ray) is timed on a 64 x 64 image.

Stage 1: ``NeRFAutoencoder.forward`` on a packed batch of the preset's size (nerf-tiny: 4 objects
x 1024 coloured points x 256 rays x 32 samples), backward and AdamW, spectral regulariser on.
"""

from __future__ import annotations

import torch

from .common import Context, Row, bench, case, millions


def _render_rows(name: str, preset: str, size: int, ctx: Context, warmup: int, repeats: int) -> list[Row]:
    from ddmi.config import load_config
    from ddmi.models import build_autoencoder
    from ddmi.render.volume import focal_from_fov, orbit_pose, render_views

    torch.manual_seed(0)
    cfg = load_config(preset)
    ae = build_autoencoder(cfg).eval()
    pose = orbit_pose(0.6, 0.35, cfg.nerf.turntable_radius)[None]
    with torch.inference_mode():
        z = torch.randn(1, *ae.latent_shape)
        planes = ae.vae.decode(z)

        def run():
            render_views(ae.query_fn(planes), pose, size, size, focal_from_fov(size, ae.fov),
                         **ae.render_kwargs(train=False))
        w, r = ctx.reps(warmup, repeats)
        t = bench(run, warmup=w, repeats=r)
    rays = size * size
    row = Row(name, f"render {size}x{size} ({cfg.nerf.render_samples} samples/ray)", rays / t.median, "rays/s",
              f"{rays * cfg.nerf.render_samples / t.median / 1e6:.2f} M field points/s; MLP "
              f"{millions(ae.mlp):.3f} M params; chunk {cfg.nerf.render_chunk} rays; {w} warm-up + {r}; "
              f"{t.median:.3f} s per image", times=t.times, peak_rss_mib=t.peak_mib, delta_rss_mib=t.delta_mib)
    return [row]


@case("nerf-render-tiny")
def nerf_render_tiny(ctx: Context) -> list[Row]:
    """nerf-tiny field: rays/s rendering a 64^2 image (48 samples/ray)."""
    return _render_rows("nerf-render-tiny", "nerf-tiny", 64, ctx, warmup=1, repeats=5)


@case("nerf-render-paper", slow=True)
def nerf_render_paper(ctx: Context) -> list[Row]:
    """srn_cars field (MLPNeRF, 256 samples/ray): rays/s rendering a 64^2 image."""
    return _render_rows("nerf-render-paper", "srn_cars", 64, ctx, warmup=1, repeats=3)


@case("nerf-stage1-tiny")
def nerf_stage1_tiny(ctx: Context) -> list[Row]:
    """nerf-tiny stage-1 train step at its batch size (fwd + bwd + AdamW)."""
    from ddmi.config import load_config
    from ddmi.models import build_autoencoder
    from ddmi.training.vae_task import kl_weight, spectral_weight

    torch.manual_seed(0)
    cfg = load_config("nerf-tiny")
    nc, b = cfg.nerf, cfg.train.batch_size
    ae = build_autoencoder(cfg).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas))
    g = torch.Generator().manual_seed(0)
    batch = torch.zeros(b, nc.num_points + nc.num_rays, 9)
    batch[:, :nc.num_points, :3] = torch.rand(b, nc.num_points, 3, generator=g) * 1.6 - 0.8
    batch[:, :nc.num_points, 3:6] = torch.rand(b, nc.num_points, 3, generator=g)
    batch[:, nc.num_points:, 0:3] = torch.tensor([0.0, 0.0, 3.2])
    batch[:, nc.num_points:, 3:6] = torch.randn(b, nc.num_rays, 3, generator=g) * 0.15 + torch.tensor([0.0, 0.0, -1.0])
    batch[:, nc.num_points:, 6:9] = torch.rand(b, nc.num_rays, 3, generator=g)
    rand = ae.random_inputs(g, b)
    kl = kl_weight(cfg, 0)
    sn = spectral_weight(cfg, kl)

    def step():
        loss, _ = ae(batch, rand, kl_weight=kl, sn_weight=sn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    w, r = ctx.reps(2, 7)
    t = bench(step, warmup=w, repeats=r)
    extra = (f"batch {b} objects x {nc.num_points} points x {nc.num_rays} rays x {nc.num_samples} samples; "
             f"PointNet {millions(ae.pointnet):.3f} M + VAE {millions(ae.vae):.2f} M + MLP {millions(ae.mlp):.3f} M; "
             f"{b * nc.num_rays / t.median:,.0f} supervised rays/s; {w} warm-up + {r}")
    return [t.row("nerf-stage1-tiny", "stage-1 train step (fwd+bwd+AdamW)", "s", extra)]
