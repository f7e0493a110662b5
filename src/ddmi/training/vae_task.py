"""Stage 1: training the D2C-VAE of any domain (``ddmi train vae``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from ddmi import checkpoint as ckpt
from ddmi import domains
from ddmi.errors import CheckpointError, ConfigError
from ddmi.training.trainer import Task


def kl_weight(cfg: DictConfig, step: int) -> float:
    """KL weight: a linear ramp from ``kl_const`` to ``kl_max`` over the first
    ``kl_anneal_portion`` of the run (or ``kl_max`` throughout without annealing)."""
    lc = cfg.loss
    if not lc.kl_anneal:
        return lc.kl_max
    ramp = max(1.0, lc.kl_anneal_portion * cfg.train.steps)
    return min(lc.kl_max, lc.kl_const + (lc.kl_max - lc.kl_const) * step / ramp)


def spectral_weight(cfg: DictConfig, kl: float) -> float:
    """NVAE weight of the spectral regulariser: ``exp((1-k) ln sn_init + k ln sn_weight)``."""
    lc = cfg.loss
    if not lc.sn_reg:
        return 0.0
    if not lc.sn_anneal:
        return lc.sn_weight
    return math.exp((1 - kl) * math.log(lc.sn_init) + kl * math.log(lc.sn_weight))


class _Forward(nn.Module):
    """Adapter so DDP wraps one module whose ``forward`` is the whole training loss."""

    def __init__(self, autoencoder: nn.Module, perceptual: nn.Module | None, perceptual_weight: float):
        super().__init__()
        self.ae = autoencoder
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        if perceptual is not None:
            perceptual.requires_grad_(False)

    def forward(self, images, rand, **kw):
        return self.ae(images, rand, perceptual=self.perceptual,
                       perceptual_weight=self.perceptual_weight, **kw)


def load_perceptual(cfg: DictConfig, log=print) -> nn.Module | None:
    """The LPIPS network from local files (``loss.lpips_weights`` [+ ``loss.lpips_backbone``]), or
    ``None`` with one line saying how to enable it."""
    from ddmi.losses.lpips import load_lpips
    if cfg.loss.lpips_weights is None and cfg.loss.lpips_backbone is None:
        log("LPIPS perceptual loss off (set loss.lpips_weights=PATH to a local LPIPS weights file to enable)")
        return None
    return load_lpips(cfg.loss.lpips_weights, backbone=cfg.loss.lpips_backbone, log=log)


class VAETask(Task):
    """Stage 1 of any domain: the domain's dataset, autoencoder, previews and probe (through
    the registry, :class:`ddmi.domains.base.Domain`); L-loss + KL + spectral regulariser
    (+ LPIPS where the domain uses it)."""

    stage = "vae"

    def __init__(self, cfg: DictConfig, *, log=print):
        self.domain = domains.get(cfg.domain)
        if cfg.data.dir is None:
            raise ConfigError(f"no training data: set data.dir=FOLDER{getattr(self.domain, 'data_hint', '')}")
        self.cfg = cfg
        self.dataset = self.domain.training_dataset(cfg, log)
        self.num_workers = cfg.data.num_workers
        self.autoencoder = self.domain.build_autoencoder(cfg)
        perceptual = load_perceptual(cfg, log) if self.domain.uses_perceptual_loss(cfg) else None
        self.module = _Forward(self.autoencoder, perceptual, cfg.loss.lpips_weight)
        notice = self.domain.start_notice(cfg)
        if notice:
            log(notice)
        self.preview = self.domain.preview_items(cfg, self.dataset)

    def parameters(self):
        return [p for p in self.autoencoder.parameters() if p.requires_grad]

    def to(self, device):
        super().to(device)
        if isinstance(self.preview, torch.Tensor):
            self.preview = self.preview.to(device)

    def random_inputs(self, generator, n):
        return self.autoencoder.random_inputs(generator, n, hflip=self.cfg.data.hflip)

    def loss_kwargs(self, step):
        k = kl_weight(self.cfg, step)
        return {"kl_weight": k, "sn_weight": spectral_weight(self.cfg, k)}

    def weights(self):
        return {"model": ckpt.state_dict_for_saving(self.autoencoder)}

    def load_weights(self, weights):
        ckpt.load_into(self.autoencoder, weights["model"], what="checkpoint model")

    def write_samples(self, step: int, folder: Path) -> list[Path]:
        return self.domain.write_preview(self.autoencoder, self.preview, folder / f"recon-step{step:07d}.png")

    def evaluate(self) -> dict[str, float]:
        return self.domain.probe(self.autoencoder, self.preview)


def load_init_weights(autoencoder: nn.Module, cfg: DictConfig, init: Path) -> str:
    """Load the latest weights of the VAE run ``init`` into ``autoencoder`` (weights only)."""
    info = ckpt.read_run_info(init)
    if info["stage"] != "vae":
        raise ConfigError(f"init={init} is a {info['stage']} run; it must be a `ddmi train vae` run")
    other = ckpt.load_run_config(init)
    if other.domain != cfg.domain:
        raise ConfigError(f"init={init} is a {other.domain} model; this config is for {cfg.domain}")
    latest = ckpt.latest_checkpoint(init)
    if latest is None:
        raise CheckpointError(f"init={init} has no complete checkpoint yet")
    ckpt.load_into(autoencoder, ckpt.load_weights(latest / "model.safetensors"),
                   what=f"init={init} ({latest.name})")
    return latest.name
