"""The task of a ``ddmi train`` stage, built from a config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ddmi.training.adversarial import AdversarialVAETask
from ddmi.training.vae_task import VAETask, load_init_weights


def make_vae_task(cfg: DictConfig, *, log=print) -> VAETask:
    """The stage-1 task of ``cfg.domain`` (adversarial when ``gan.enabled``), initialised from the
    VAE run ``cfg.init`` when given (weights only; a resumed checkpoint overrides them)."""
    task = AdversarialVAETask(cfg, log=log) if cfg.gan.enabled else VAETask(cfg, log=log)
    if cfg.init is not None:
        name = load_init_weights(task.autoencoder, cfg, Path(cfg.init))
        log(f"initialised the VAE from {cfg.init} ({name}); fresh optimiser, lr {cfg.train.lr:g}")
    return task
