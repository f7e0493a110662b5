"""Generation: seeded noise, sampling plans, latents from a trained denoiser.

Every sample's initial noise is a function of ``(seed, index)`` only, drawn on the CPU, and every
batch ``i`` of the sampler sees a generator seeded with ``i``: a sample does not depend on the
batch size of the others, on the device, or on which process draws it.
"""

from __future__ import annotations

import numpy as np
import torch

from ddmi.diffusion import DEFAULT_STEPS
from ddmi.diffusion import sample as diffusion_sample


def noise_for(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The initial noise of sample ``index`` for ``seed``, independent of the batch size."""
    g = torch.Generator().manual_seed(int(np.random.default_rng([seed, index]).integers(2**62)))
    return torch.randn(shape, generator=g)


def latent_batches(diffusion, noises: torch.Tensor, *, sampler: str, steps: int | None, eta: float = 0.0,
                   batch_size: int = 16, starts: list[int] | None = None, progress: bool = True):
    """Sample the batches of ``noises`` (CPU) that start at ``starts`` (default: every batch of
    ``batch_size``), one at a time: yields ``(start, latents)`` on the diffusion model's device.

    Batch ``i`` always sees the noise ``noises[i:i + batch_size]`` and a generator seeded with
    ``i`` (CPU, for the stochastic samplers), so a sample does not depend on which process or
    device draws it, nor on which other batches are drawn. The progress bar counts denoising
    steps (network calls) over all batches, with the samples done."""
    from tqdm.auto import tqdm
    starts = list(range(0, len(noises), batch_size)) if starts is None else list(starts)
    calls = steps or (diffusion.num_steps if sampler == "ddpm" else DEFAULT_STEPS[sampler])
    bar = tqdm(total=calls * len(starts), desc=f"sampling {len(noises)} ({sampler}, {calls} steps)",
               unit="step", disable=not progress)
    def count(*_) -> None:        # a forward hook that returned a value would replace the output
        bar.update(1)

    hook = diffusion.net.register_forward_hook(count)
    try:
        for i in starts:
            x = noises[i:i + batch_size]
            yield i, diffusion_sample(diffusion, x.shape, sampler=sampler, steps=steps, eta=eta, noise=x,
                                      generator=torch.Generator().manual_seed(i))
    finally:
        hook.remove()
        bar.close()


def generate_latents(diffusion, latent_shape, noises: torch.Tensor, *, sampler: str, steps: int | None,
                     eta: float = 0.0, batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """Latents of every noise (see :func:`latent_batches`), on the diffusion model's device."""
    return torch.cat([z for _, z in latent_batches(diffusion, noises, sampler=sampler, steps=steps, eta=eta,
                                                    batch_size=batch_size, progress=progress)])


def resolve_sampler(cfg, sampler: str | None, steps: int | None) -> tuple[str, int | None]:
    """The sampler and step count to use: the run's ``ldm.sampler`` unless one is named; its
    ``ldm.sample_steps`` applies only to that sampler (another one gets its own default)."""
    sampler = sampler or cfg.ldm.sampler
    return sampler, steps or (cfg.ldm.sample_steps if sampler == cfg.ldm.sampler else None)


def sampling_plan(args, cfg, latent_shape) -> tuple[str, int | None, torch.Tensor]:
    """``(sampler, steps, noises)`` of ``ddmi sample``: ``--num`` seeded noises, or, with
    ``--interpolate``, ``--num`` slerps between the noises of seeds ``--seed`` and ``--seed + 1``."""
    sampler, steps = resolve_sampler(cfg, args.sampler, args.steps)
    if args.interpolate:
        a, b = noise_for(args.seed, 0, latent_shape), noise_for(args.seed + 1, 0, latent_shape)
        noises = torch.stack([slerp(a, b, float(t)) for t in np.linspace(0, 1, max(2, args.num))])
    else:
        noises = torch.stack([noise_for(args.seed, i, latent_shape) for i in range(args.num)])
    return sampler, steps, noises


@torch.no_grad()
def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors of the same shape."""
    af, bf = a.flatten(), b.flatten()
    cos = (af @ bf / (af.norm() * bf.norm())).clamp(-1, 1)
    theta = torch.arccos(cos)
    if theta.abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
