"""Stage-1 (D2C-VAE) training step: forward + loss + backward + AdamW.

One iteration = ``ImageAutoencoder.forward`` (flip, encode, reparameterised sample, decode the
planes, the MLP on the R x R target grid, L1 + KL + spectral regulariser), ``backward``, and an
AdamW step, on a fixed random batch. The zoom of the multiscale randomness is fixed per case so
that every iteration does the same work (the MLP always runs on R x R points; only the target
resize depends on the zoom). Peak memory is measured from before the first (warm-up) step, so
``+RSS`` includes the gradients, the AdamW state and the activations.
"""

from __future__ import annotations

import time

import torch

from .common import OFFICIAL_IMAGE, Context, Row, bench, case, millions

OFFICIAL_STEP_S = 5.40   # official-cpu-timings.md: image stage-1 step, batch 8, 64x64


def step_inputs(ae, *, batch: int, input_size: int, zoom: float) -> tuple[torch.Tensor, dict]:
    """A fixed random batch ``(B, 3, S, S)`` in [-1, 1] and the step's randomness, zoom fixed."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, input_size, input_size, generator=g) * 2 - 1
    rand = ae.random_inputs(g, batch, hflip=True)
    rand["zoom"] = zoom
    return images, rand


def _stage1_step_rows(name: str, cfg, *, batch: int, input_size: int, zoom: float,
                      kl: float, sn: float, ctx: Context, warmup: int, repeats: int,
                      official: float | None = None) -> list[Row]:
    from ddmi.models import build_autoencoder

    torch.manual_seed(0)
    ae = build_autoencoder(cfg).train()
    tc = cfg.train
    opt = torch.optim.AdamW(ae.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    images, rand = step_inputs(ae, batch=batch, input_size=input_size, zoom=zoom)
    phases: dict[str, list[float]] = {"fwd": [], "bwd": [], "opt": []}

    def step():
        t0 = time.perf_counter()
        loss, _ = ae(images, rand, kl_weight=kl, sn_weight=sn)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
            phases[k].append(dt)

    w, r = ctx.reps(warmup, repeats)
    t = bench(step, warmup=w, repeats=r)
    med = {k: sorted(v[w:])[len(v[w:]) // 2] for k, v in phases.items()}
    extra = (f"batch {batch}, {input_size}^2 in, zoom {zoom:g}, MLP on {cfg.data.resolution}^2; "
             f"VAE {millions(ae.vae):.2f} M + MLP {millions(ae.mlp):.2f} M; "
             f"fwd {med['fwd']:.2f} / bwd {med['bwd']:.2f} / AdamW {med['opt']:.2f} s; "
             f"{w} warm-up + {r}")
    row = t.row(name, "stage-1 train step (fwd+bwd+AdamW)", "s", extra)
    if official:
        row.compare(official)
    return [row]


@case("stage1-tiny")
def stage1_tiny(ctx: Context) -> list[Row]:
    """image-tiny preset: train step at its batch size (16), 64^2 inputs (2R), zoom 2."""
    from ddmi.config import load_config
    from ddmi.training.vae_task import kl_weight, spectral_weight

    cfg = load_config("image-tiny")
    kl = kl_weight(cfg, 0)
    return _stage1_step_rows("stage1-tiny", cfg, batch=cfg.train.batch_size,
                             input_size=2 * cfg.data.resolution, zoom=2.0, kl=kl,
                             sn=spectral_weight(cfg, kl), ctx=ctx, warmup=2, repeats=7)


@case("stage1-official")
def stage1_official(ctx: Context) -> list[Row]:
    """Reduced official config: train step, batch 8, 64^2 inputs, zoom 1 (official 5.40 s)."""
    from ddmi.config import load_config

    cfg = load_config("image-tiny", OFFICIAL_IMAGE)
    # As timed officially: L1 + 0.5 KL + the spectral regulariser (its weight does not change
    # the cost as long as it is non-zero).
    return _stage1_step_rows("stage1-official", cfg, batch=8, input_size=64, zoom=1.0, kl=0.5,
                             sn=0.1, ctx=ctx, warmup=2, repeats=5, official=OFFICIAL_STEP_S)
