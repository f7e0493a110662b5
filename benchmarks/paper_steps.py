"""One training step of a preset, built in-process on random data of the right shapes.

Used by ``benchmarks.gpu`` (a timed step of each paper preset with its peak GPU memory) and
``benchmarks.paper_scale`` (FLOPs and saved activations counted on the ``meta`` device). Nothing
is read from disk: the batch is random tensors shaped as the preset's data loader would give them
(one micro-batch of ``train.batch_size`` / ``ldm_train.batch_size`` items, the per-process size).

Stage 1 is the D2C-VAE's training loss of the domain (``autoencoder(batch, rand, kl_weight=...,
sn_weight=...)``, as the trainer calls it, spectral regulariser included); stage 2 is the eps-MSE
of the denoiser on random latents of the VAE's latent shape (what an LDM step costs once the
latents are cached). An AdamW step follows the backward pass in a timed step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ddmi.training.trainer import mixed_precision

PAPER_PRESETS = ("afhq", "celebahq", "shapenet", "srn_cars", "skytimelapse")


def stage1_batch(cfg, ae, batch: int, device, generator: torch.Generator | None = None):
    """``(inputs, rand)`` of one stage-1 step of ``batch`` items, on ``device``."""
    g = generator or torch.Generator().manual_seed(0)
    dom = cfg.domain
    if dom == "image":
        size = 2 * cfg.data.resolution if cfg.loss.multiscale else cfg.data.resolution
        x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
        rand = ae.random_inputs(g, batch, hflip=cfg.data.hflip)
    elif dom == "occupancy":
        sc = cfg.shapes
        x = torch.zeros(batch, sc.num_points + sc.num_queries, 4)
        x[..., :3] = torch.rand(batch, sc.num_points + sc.num_queries, 3, generator=g) * 1.1 - 0.55
        x[:, sc.num_points:, 3] = (torch.rand(batch, sc.num_queries, generator=g) < 0.2).float()
        rand = ae.random_inputs(g, batch)
    elif dom == "nerf":
        nc = cfg.nerf
        x = torch.zeros(batch, nc.num_points + nc.num_rays, 9)
        x[:, :nc.num_points, :3] = torch.rand(batch, nc.num_points, 3, generator=g) * 2 - 1
        x[:, :nc.num_points, 3:6] = torch.rand(batch, nc.num_points, 3, generator=g)
        mid = (nc.near + nc.far) / 2
        x[:, nc.num_points:, 0:3] = torch.tensor([0.0, 0.0, mid])
        x[:, nc.num_points:, 3:6] = torch.randn(batch, nc.num_rays, 3, generator=g) * 0.15 + torch.tensor([0.0, 0.0, -1.0])
        x[:, nc.num_points:, 6:9] = torch.rand(batch, nc.num_rays, 3, generator=g)
        rand = ae.random_inputs(g, batch)
    elif dom == "video":
        r = cfg.data.resolution
        x = torch.rand(batch, 3, cfg.video.frames, r, r, generator=g) * 2 - 1
        rand = ae.random_inputs(g, batch, hflip=cfg.data.hflip)
    else:
        raise ValueError(f"no stage-1 batch for domain {dom}")
    move = (lambda v: v.to(device) if isinstance(v, torch.Tensor) else v)
    return x.to(device), {k: move(v) for k, v in rand.items()}


def stage1_weights(cfg) -> tuple[float, float]:
    """The KL and spectral weights of step 0 (their values do not change the cost while > 0)."""
    from ddmi.training.vae_task import kl_weight, spectral_weight
    kl = kl_weight(cfg, 0)
    return kl, spectral_weight(cfg, kl)


def stage1_loss(cfg, ae, batch: int, device) -> Callable[[], torch.Tensor]:
    """A callable computing the stage-1 loss of one fixed random batch."""
    x, rand = stage1_batch(cfg, ae, batch, device)
    kl, sn = stage1_weights(cfg)
    return lambda: ae(x, rand, kl_weight=kl, sn_weight=sn)[0]


def stage2_loss(cfg, d, latent_shape, batch: int, device) -> Callable[[], torch.Tensor]:
    """A callable computing the eps-MSE of the denoiser on one fixed random batch of latents."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, *latent_shape, generator=g).to(device)
    t = torch.randint(0, d.num_steps, (batch,), generator=g).to(device)
    eps = torch.randn(x0.shape, generator=g).to(device)
    return lambda: (d.predict_eps(d.q_sample(d.normalize(x0), t, eps), t) - eps).float().square().mean()


def build_model(cfg, stage: str, device):
    """``(module, loss_fn, batch)`` of one training step of ``stage`` ('vae' or 'ldm')."""
    from ddmi.models import build_diffusion
    from ddmi.models import build_autoencoder
    torch.manual_seed(0)
    if stage == "vae":
        ae = build_autoencoder(cfg).to(device).train()
        b = cfg.train.batch_size
        return ae, stage1_loss(cfg, ae, b, device), b
    with torch.device("meta"):
        latent_shape = tuple(build_autoencoder(cfg).latent_shape)
    d = build_diffusion(cfg, latent_shape).to(device).train()
    b = cfg.ldm_train.batch_size
    return d, stage2_loss(cfg, d, latent_shape, b, device), b


PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}   # benchmark name -> train.mixed_precision


@dataclass
class Step:
    module: torch.nn.Module
    batch: int
    run: Callable[[], None]


def training_step(cfg, stage: str, device, precision: str = "fp32") -> Step:
    """One full training step (forward under autocast, backward, AdamW; fp16 with a GradScaler).

    On a CPU device the step is fp32 whatever ``precision`` says (as the trainer does)."""
    dev = torch.device(device)
    module, loss_fn, batch = build_model(cfg, stage, dev)
    tc = cfg.train if stage == "vae" else cfg.ldm_train
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    autocast, scaler = mixed_precision(PRECISIONS[precision] if dev.type == "cuda" else "no", dev)

    def run():
        with autocast:
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)          # the trainer's loss scaling (a no-op unless fp16)
        scaler.update()
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"non-finite loss {float(loss):g}")

    return Step(module, batch, run)
