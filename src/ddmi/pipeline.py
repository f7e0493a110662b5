"""The Python way to use a trained (or imported) DDMI run: load it in one call, sample, decode,
render.

    >>> import ddmi
    >>> pipe = ddmi.DDMIPipeline.from_run("demo_out/runs/ldm", device="cpu")
    >>> out = pipe(num=4, seed=0, steps=25)              # latents -> continuous fields
    >>> images = pipe.render(out.latents, resolution=256)   # (4, 3, 256, 256) in [-1, 1]

``latents`` are ``(N, *autoencoder.latent_shape)``; ``fields`` is a :class:`ddmi.fields.Field`
(query it at any continuous coordinates in [-1, 1], x first). ``render`` is the domain's
renderer: images take ``resolution``; videos ``resolution`` and ``frames``. Seeds match
``ddmi sample --seed``: sample ``i`` of seed ``s`` is the same image in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ddmi import checkpoint as ckpt
from ddmi import domains
from ddmi.devices import resolve_device
from ddmi.diffusion import SAMPLERS
from ddmi.errors import ConfigError
from ddmi.fields import Field
from ddmi.generate import generate_latents, noise_for, resolve_sampler
from ddmi.runs import load_autoencoder, load_diffusion


@dataclass
class Samples:
    """What :meth:`DDMIPipeline.__call__` returns."""

    latents: torch.Tensor        # (N, *latent_shape), on the pipeline's device
    fields: Field                # the decoded batch
    sampler: str
    steps: int | None


class DDMIPipeline:
    """A run folder's autoencoder and (for an LDM run) its EMA denoiser, on one device."""

    def __init__(self, autoencoder: torch.nn.Module, diffusion: torch.nn.Module | None, config, run_dir: Path):
        self.autoencoder, self.diffusion, self.config, self.run_dir = autoencoder, diffusion, config, run_dir

    @classmethod
    def from_run(cls, run_dir: str | Path, *, device: str | torch.device | None = None,
                 ema: bool = True) -> DDMIPipeline:
        """Load ``run_dir`` (a ``ddmi train vae|ldm`` or ``ddmi import-official`` folder) on
        ``device`` (default ``cuda`` when available, else ``cpu``); ``ema=False`` samples with the
        online weights. A VAE run gives a pipeline that encodes, decodes and renders only."""
        run_dir = Path(run_dir)
        device = resolve_device(device)
        info = ckpt.read_run_info(run_dir)
        ae = load_autoencoder(run_dir, device=device)
        diffusion = load_diffusion(run_dir, ae.latent_shape, ema=ema, device=device) if info["stage"] == "ldm" else None
        return cls(ae, diffusion, ae.config, run_dir)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.latent_shape)

    @property
    def samplers(self) -> tuple[str, ...]:
        return tuple(SAMPLERS)

    def noise(self, num: int, seed: int = 0) -> torch.Tensor:
        """The starting noises of ``ddmi sample --seed SEED --num NUM`` (CPU)."""
        return torch.stack([noise_for(seed, i, self.latent_shape) for i in range(num)])

    @torch.inference_mode()
    def sample_latents(self, num: int = 1, *, seed: int = 0, noise: torch.Tensor | None = None,
                       sampler: str | None = None, steps: int | None = None, eta: float = 0.0,
                       batch_size: int = 16, progress: bool = False) -> tuple[torch.Tensor, str, int | None]:
        """``(latents, sampler, steps)``: ``num`` latents from seeded noise (or from ``noise``,
        ``(N, *latent_shape)``), with the run's sampler and step count unless named."""
        if self.diffusion is None:
            raise ConfigError(f"{self.run_dir} is a VAE run: sampling needs an LDM run (`ddmi train ldm`)")
        if sampler is not None and sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler '{sampler}'; choose from {', '.join(SAMPLERS)}")
        sampler, steps = resolve_sampler(self.config, sampler, steps)
        noise = self.noise(num, seed) if noise is None else noise
        if tuple(noise.shape[1:]) != self.latent_shape:
            raise ConfigError(f"noise has shape {tuple(noise.shape)}; expected (N, *{self.latent_shape})")
        z = generate_latents(self.diffusion, self.latent_shape, noise.cpu(), sampler=sampler, steps=steps, eta=eta,
                             batch_size=batch_size, progress=progress)
        return z, sampler, steps

    def __call__(self, num: int = 1, **sampling) -> Samples:
        """Sample ``num`` latents (keywords of :meth:`sample_latents`) and decode them to fields."""
        z, sampler, steps = self.sample_latents(num, **sampling)
        return Samples(latents=z, fields=self.decode(z), sampler=sampler, steps=steps)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor):
        """The posterior (a :class:`ddmi.vae.posterior.DiagonalGaussian`) of inputs ``x`` (the
        domain's layout: images ``(B, 3, H, W)`` in [-1, 1], clips ``(B, 3, T, H, W)``, point
        clouds ``(B, P, 3)``)."""
        return self.autoencoder.encode(x.to(self.device))

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> Field:
        """Latents ``(B, *latent_shape)`` -> a continuous field."""
        return self.autoencoder.decode(z.to(self.device))

    @torch.inference_mode()
    def render(self, z: torch.Tensor, **options):
        """Latents ``(B, *latent_shape)`` rendered by the run's domain:

        * images: ``render(z, resolution=R)`` -> ``(B, 3, R, R)`` in [-1, 1];
        * videos: ``render(z, resolution=R, frames=T)`` -> ``(B, 3, T, R, R)`` in [-1, 1];
        * NeRF: ``render(z, resolution=R, poses=(V, 4, 4))`` or the turntable of ``frames=``,
          ``radius=``, ``elevation=`` -> ``(B, V, 3, R, R)`` in [-1, 1];
        * 3-D shapes: ``render(z, resolution=R)`` -> a list of meshes ``(vertices, faces)`` at ``R^3``.
        """
        return domains.get(self.config.domain).render(self.autoencoder, z.to(self.device), **options)
