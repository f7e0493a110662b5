"""Stage 2: one LDM training step (eps-MSE with mixed prediction, backward, AdamW) and sampling.

The official figures (official-cpu-timings.md) are for the reduced ADM UNet (16.07 M) on batch 16
latents of 16x16x16: 0.81-0.91 s per step and 11.35 s for DDIM-50.
"""

from __future__ import annotations

import torch

from .common import OFFICIAL_LDM, Context, Row, bench, case, millions

OFFICIAL_STEP_S = 0.86    # midpoint of 0.81-0.91 s
OFFICIAL_DDIM50_S = 11.35


def build_model(overrides, latent_shape):
    from ddmi.config import load_config
    from ddmi.models import build_diffusion
    torch.manual_seed(0)
    return build_diffusion(load_config("image-tiny", overrides), latent_shape)


def step_batch(d, batch: int, latent_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed latents, timesteps and noises for a training step of ``d``."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, *latent_shape, generator=g)
    t = torch.randint(0, d.num_steps, (batch,), generator=g)
    return x0, t, torch.randn(x0.shape, generator=g)


def train_step(d, x0, t, eps):
    """One eps-MSE training step of ``d`` (forward, backward, AdamW) on a fixed batch, as a callable."""
    opt = torch.optim.AdamW([p for p in d.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def step():
        loss = (d.predict_eps(d.q_sample(d.normalize(x0), t, eps), t) - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _step_row(name, overrides, latent_shape, batch, ctx, official=None) -> Row:
    d = build_model(overrides, latent_shape).train()
    step = train_step(d, *step_batch(d, batch, latent_shape))
    w, r = ctx.reps(2, 5)
    tm = bench(step, warmup=w, repeats=r)
    row = tm.row(name, f"LDM train step, batch {batch} x {latent_shape}", "s",
                 f"UNet {millions(d.net):.2f} M")
    return row.compare(official) if official else row


def _sample_rows(name, overrides, latent_shape, batch, plan, ctx, official=None) -> list[Row]:
    from ddmi.diffusion import sample
    d = build_model(overrides, latent_shape).eval()
    noise = torch.randn(batch, *latent_shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for sampler, steps in plan:
        def run():
            with torch.inference_mode():
                sample(d, noise.shape, sampler=sampler, steps=steps, noise=noise,
                       generator=torch.Generator().manual_seed(1))
        tm = bench(run, warmup=1, repeats=ctx.reps(1, 3)[1])
        row = tm.row(f"{name}-{sampler}{steps}", f"{sampler} {steps} steps, batch {batch}", "s",
                     f"{1e3 * tm.median / batch:.1f} ms per sample, {1e3 * tm.median / steps:.0f} ms per network call")
        if official and (sampler, steps) == ("ddim", 50):
            row.compare(official)
        rows.append(row)
    return rows


@case("ldm-step-official")
def ldm_step_official(ctx: Context) -> list[Row]:
    """Reduced official UNet (16.07 M), batch 16 latents 16x16x16 (official 0.81-0.91 s)."""
    return [_step_row("ldm-step-official", OFFICIAL_LDM, (16, 16, 16), 16, ctx, OFFICIAL_STEP_S)]


@case("sample-official")
def sample_official(ctx: Context) -> list[Row]:
    """Reduced official UNet, batch 16: DDIM-50 (official 11.35 s) and DPM-Solver++(2M) 10/20."""
    return _sample_rows("sample-official", OFFICIAL_LDM, (16, 16, 16), 16,
                        [("ddim", 50), ("dpmpp2m", 20), ("dpmpp2m", 10)], ctx, OFFICIAL_DDIM50_S)


@case("ldm-step-tiny")
def ldm_step_tiny(ctx: Context) -> list[Row]:
    """image-tiny preset's UNet at its batch size (64 latents of 4x8x8)."""
    return [_step_row("ldm-step-tiny", [], (4, 8, 8), 64, ctx)]


@case("sample-tiny")
def sample_tiny(ctx: Context) -> list[Row]:
    """image-tiny preset, batch 64: each sampler at its step count (DDPM 1000, DDIM 50, DPM++ 20)."""
    return _sample_rows("sample-tiny", [], (4, 8, 8), 64,
                        [("ddpm", 1000), ("ddim", 50), ("dpmpp2m", 20), ("dpmpp2m", 10)], ctx)
