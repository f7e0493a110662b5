"""Stage 1: training the D2C-VAE (``ddmi train vae``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from ddmi import checkpoint as ckpt
from ddmi.data.images import ImageFolderDataset, save_grid
from ddmi.errors import ConfigError, DataError
from ddmi.models import build_autoencoder
from ddmi.train import Task


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
    stage = "vae"

    def __init__(self, cfg: DictConfig, *, log=print):
        if cfg.data.dir is None:
            raise ConfigError("no training data: set data.dir=FOLDER")
        self.cfg = cfg
        r = cfg.data.resolution
        load_res = 2 * r if cfg.loss.multiscale else r
        self.dataset = ImageFolderDataset(cfg.data.dir, resolution=load_res, hflip=False,
                                          skip_bad=cfg.data.skip_bad)
        self.num_workers = cfg.data.num_workers
        self.autoencoder = build_autoencoder(cfg)
        self.module = _Forward(self.autoencoder, load_perceptual(cfg, log), cfg.loss.lpips_weight)
        preview_dir = cfg.data.test_dir or cfg.data.dir
        preview = ImageFolderDataset(preview_dir, resolution=2 * r, skip_bad=True)
        self.preview = torch.stack([preview[i] for i in range(min(8, len(preview)))])

    def parameters(self):
        return [p for p in self.autoencoder.parameters() if p.requires_grad]

    def to(self, device):
        super().to(device)
        if isinstance(getattr(self, "preview", None), torch.Tensor):
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
        """Rows: inputs (at 2R), reconstructions at R (upscaled for display) and at 2R."""
        ae, r = self.autoencoder, self.cfg.data.resolution
        device = next(ae.parameters()).device
        x = self.preview.to(device)
        z = ae.encode(x).mode()
        rec1 = torch.nn.functional.interpolate(ae.render(z, r), scale_factor=2, mode="nearest")
        rec2 = ae.render(z, 2 * r)
        grid = torch.cat([x, rec1, rec2]).cpu()
        path = folder / f"recon-step{step:07d}.png"
        save_grid(grid, path, nrow=len(x))
        return [path]

    def evaluate(self) -> dict[str, float]:
        """``psnr``: reconstructions (posterior mean) of the preview images at R, in dB."""
        from ddmi.domains.image.pixels import resize
        from ddmi.metrics.image_quality import psnr
        ae = self.autoencoder
        x = resize(self.preview.to(next(ae.parameters()).device), self.cfg.data.resolution)
        rec = ae.render(ae.encode(x).mode(), self.cfg.data.resolution).clamp(-1, 1)
        return {"psnr": float(psnr(rec, x).mean())}


class OccupancyVAETask(VAETask):
    """Stage 1 of the occupancy domain: ONet-layout shapes (``data.dir``), BCE + KL + SN."""

    def __init__(self, cfg: DictConfig, *, log=print):
        from ddmi.data.shapes import ShapesDataset
        if cfg.data.dir is None:
            raise ConfigError("no training data: set data.dir=FOLDER (ONet layout; see `ddmi synth shapes`)")
        self.cfg = cfg
        sc = cfg.shapes
        kw = dict(classes=None if sc.classes is None else list(sc.classes), num_points=sc.num_points,
                  point_noise=sc.point_noise, num_queries=sc.num_queries, seed=cfg.seed)
        self.dataset = ShapesDataset(cfg.data.dir, split="train", **kw)
        self.num_workers = cfg.data.num_workers
        self.autoencoder = build_autoencoder(cfg)
        self.module = _Forward(self.autoencoder, None, 1.0)
        try:  # held-out shapes for the reconstruction previews, if there are any
            preview = ShapesDataset(cfg.data.test_dir or cfg.data.dir, split="test", **kw)
        except DataError:
            preview = self.dataset
        self.preview = torch.stack([preview[i] for i in range(min(8, len(preview)))])

    def write_samples(self, step: int, folder: Path) -> list[Path]:
        """Meshes (32^3) of the reconstructions of up to 8 preview shapes, one view each."""
        from ddmi.data.shapes import split_item
        from ddmi.domains.occupancy.meshes import extract_meshes, preview_sheet
        from ddmi.render.mesh import write_png
        ae = self.autoencoder
        device = next(ae.parameters()).device
        points = split_item(self.preview.to(device), ae.num_points)[0]
        meshes = extract_meshes(ae.decode(ae.encode(points).mode()), 32, threshold=ae.threshold,
                                half_extent=ae.half_extent)
        path = folder / f"recon-step{step:07d}.png"
        return [write_png(path, preview_sheet(meshes, half_extent=ae.half_extent))]

    def evaluate(self) -> dict[str, float]:
        """``iou``: occupancy IoU of the preview shapes' reconstructions at their query points."""
        from ddmi.data.shapes import split_item
        from ddmi.domains.occupancy.model import occupancy_iou
        ae = self.autoencoder
        points, queries, occ = split_item(self.preview.to(next(ae.parameters()).device), ae.num_points)
        logits = ae.decode(ae.encode(points).mode()).query(ae.normalize(queries))[..., 0]
        return {"iou": float(occupancy_iou(logits, occ, ae.threshold_logit))}


class VideoVAETask(VAETask):
    """Stage 1 of the video domain: random ``video.frames``-frame windows of the videos under
    ``data.dir`` (frame folders or video files), L1 + KL + SN (+ LPIPS on one frame per clip)."""

    def __init__(self, cfg: DictConfig, *, log=print):
        from ddmi.data.videos import VideoFolderDataset
        if cfg.data.dir is None:
            raise ConfigError("no training data: set data.dir=FOLDER (frame folders; see `ddmi synth video`)")
        self.cfg = cfg
        kw = dict(frames=cfg.video.frames, resolution=cfg.data.resolution, seed=cfg.seed, log=log)
        self.dataset = VideoFolderDataset(cfg.data.dir, split="train", skip_bad=cfg.data.skip_bad, **kw)
        self.num_workers = cfg.data.num_workers
        self.autoencoder = build_autoencoder(cfg)
        self.module = _Forward(self.autoencoder, load_perceptual(cfg, log), cfg.loss.lpips_weight)
        try:  # held-out videos for the reconstruction previews, if there are any
            preview = VideoFolderDataset(cfg.data.test_dir or cfg.data.dir, split="val", skip_bad=True, **kw)
        except DataError:
            preview = self.dataset
        self.preview = torch.stack([preview[i] for i in range(min(4, len(preview)))])

    def write_samples(self, step: int, folder: Path) -> list[Path]:
        """Rows: each preview clip, then its reconstruction at 2x the frame count (every other
        column is an in-between frame) shown at the same size."""
        from ddmi.render.video import contact_sheet
        ae = self.autoencoder
        device = next(ae.parameters()).device
        x = self.preview.to(device)
        rec = ae.render(ae.encode(x).mode(), ae.resolution, 2 * ae.frames)
        x2 = x.repeat_interleave(2, dim=2)
        rows = torch.stack([x2, rec], dim=1).flatten(0, 1)
        path = folder / f"recon-step{step:07d}.png"
        return [contact_sheet(rows.cpu(), path)]

    def evaluate(self) -> dict[str, float]:
        """``psnr``: reconstructions (posterior mean) of the preview clips, over all frames, in dB."""
        from ddmi.metrics.image_quality import psnr
        ae = self.autoencoder
        x = self.preview.to(next(ae.parameters()).device)
        rec = ae.render(ae.encode(x).mode(), ae.resolution, ae.frames).clamp(-1, 1)
        return {"psnr": float(psnr(rec, x).mean())}


def make_vae_task(cfg: DictConfig, *, log=print) -> VAETask:
    """The stage-1 task of ``cfg.domain`` (adversarial when ``gan.enabled``), initialised from the
    VAE run ``cfg.init`` when given (weights only; a resumed checkpoint overrides them)."""
    if cfg.domain == "occupancy":
        task = OccupancyVAETask(cfg, log=log)
    elif cfg.domain == "nerf":
        from ddmi.domains.nerf.outputs import make_nerf_vae_task
        task = make_nerf_vae_task(cfg, log=log)
    elif cfg.domain == "video" and cfg.gan.enabled:
        from ddmi.gan import AdversarialVideoVAETask
        task = AdversarialVideoVAETask(cfg, log=log)
    elif cfg.domain == "video":
        task = VideoVAETask(cfg, log=log)
    elif cfg.gan.enabled:
        from ddmi.gan import AdversarialVAETask
        task = AdversarialVAETask(cfg, log=log)
    else:
        task = VAETask(cfg, log=log)
    if cfg.init is not None:
        from ddmi.gan import load_init_weights
        name = load_init_weights(task.autoencoder, cfg, Path(cfg.init))
        log(f"initialised the VAE from {cfg.init} ({name}); fresh optimiser, lr {cfg.train.lr:g}")
    return task
