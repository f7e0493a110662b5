"""Stage 2: training the latent diffusion model on a frozen D2C-VAE, and sampling from it."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from ddmi import checkpoint as ckpt
from ddmi import domains
from ddmi.config import load_config, parse_overrides
from ddmi.diffusion import sample as diffusion_sample
from ddmi.errors import ConfigError, DDMIError
from ddmi.files import make_temp_dir
from ddmi.models import build_diffusion
from ddmi.runs import load_autoencoder
from ddmi.training.ema import EMA
from ddmi.training.trainer import Task

STAGE2_SECTIONS = ("ldm", "ldm_train", "seed", "name", "run_dir")


def ldm_overrides(overrides: list[str]) -> dict:
    """Command-line overrides of ``ddmi train ldm``: ``vae=DIR`` names the VAE run, and
    ``train.*`` means the LDM's training section (``ldm_train.*``)."""
    items = [f"vae_run={o[4:]}" if o.startswith("vae=") else o for o in overrides]
    out = parse_overrides(items)
    if "train" in out:
        out["ldm_train"] = {**out.get("ldm_train", {}), **out.pop("train")}
    return out


def stage2_config(preset_cfg: DictConfig, vae_run: Path, *, data_dir_overridden: bool = False) -> DictConfig:
    """The LDM run's config: the VAE run's config (architecture, data) + the stage-2 sections.

    The data folder is the VAE's unless ``data.dir`` was given on the command line."""
    vae_cfg = ckpt.load_run_config(vae_run)
    if vae_cfg.domain != preset_cfg.domain:
        raise ConfigError(f"vae={vae_run} is a {vae_cfg.domain} model; this config is for {preset_cfg.domain}")
    merged = OmegaConf.to_container(vae_cfg, resolve=True)
    preset = OmegaConf.to_container(preset_cfg, resolve=True)
    for key in STAGE2_SECTIONS:
        merged[key] = preset[key]
    if data_dir_overridden:
        merged["data"]["dir"] = preset["data"]["dir"]
    merged["vae_run"] = preset["vae_run"] or str(vae_run)
    return load_config(merged)


def unfinished_vae_warning(vae_run: Path) -> str | None:
    """A warning when the VAE run stopped before its ``train.steps`` (stage 2 then learns the
    latents of an unfinished autoencoder), else None."""
    info = ckpt.read_run_info(vae_run)
    if info["stage"] != "vae" or info.get("imported"):
        return None
    latest = ckpt.latest_checkpoint(vae_run)
    planned = ckpt.load_run_config(vae_run).train.steps
    step = int(latest.name.split("-")[1]) if latest else 0
    if step < planned:
        return (f"warning: the VAE run {vae_run} stopped at step {step} of its {planned} (train.steps); the LDM "
                "will learn the latents of that unfinished autoencoder (finish it with the same `ddmi train vae` "
                "command first, or go on if this is intended)")
    return None


# ------------------------------------------------------------------------------------------


CACHE_FOLDER = "latent-cache"


def _item_names(items: Dataset) -> list[str]:
    """The names of a dataset's items, where it lists them (a cache signature)."""
    for attr in ("files", "models", "videos"):
        names = getattr(items, attr, None)
        if names is not None:
            return [str(n[0] if isinstance(n, tuple) and attr == "videos" else n) for n in names]
    return []


class LatentCache(Dataset):
    """Posterior means and standard deviations of every training item, for each encoder view:
    the domain's views of each point-cloud draw (``ae.encoder_views(batch)``: images ->
    [original, mirrored]; shapes and NeRF -> [point cloud] per draw; video -> [clip (, mirror)]).

    Stored in the run folder, ``RUN/latent-cache/``: ``latents.npy``, a ``(N, V, 2, *latent)``
    array ([item][view][mean, std]) in ``float16`` (default) or ``float32``, memory-mapped, so a
    process's RAM does not grow with the dataset; and ``cache.yaml``, the signature it was
    encoded for (items, VAE, draws, dtype), written last. Build it with :func:`build_latent_cache`.

    Item ``i``: ``(V, 2, C, h, w)`` float32.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.stats = np.load(self.folder / "latents.npy", mmap_mode="r")

    @property
    def views(self) -> int:
        return self.stats.shape[1]

    def __len__(self) -> int:
        return len(self.stats)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.stats[i], dtype=np.float32))

    def first_view(self, start: int, stop: int) -> torch.Tensor:
        """``(n, 2, *latent)`` float32: [mean, std] of items ``start:stop``, first view."""
        return torch.from_numpy(np.array(self.stats[start:stop, 0], dtype=np.float32))


class _Draws(Dataset):
    """Item ``i`` -> ``(draws, ...)``: the base dataset's fixed draw and ``draws - 1`` more (the
    draws of global positions ``0..draws-2`` of a positional dataset)."""

    def __init__(self, items: Dataset, draws: int):
        self.items, self.draws = items, draws

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.stack([self.items[i], *(self.items[(i, d)] for d in range(self.draws - 1))])


def build_latent_cache(ae: nn.Module, items: Dataset, folder: Path, *, signature: dict,
                       dtype: str = "float16", draws: int = 1, batch_size: int = 32,
                       num_workers: int = 0, accelerator=None, log=print) -> LatentCache:
    """Encode every item of ``items`` with ``ae`` (on its device) into ``folder``, or reuse the
    cache there when its signature matches. Under several processes each encodes every
    ``world``-th batch into the shared file; the main process publishes it."""
    from tqdm.auto import tqdm
    folder = Path(folder)
    main = accelerator is None or accelerator.is_main_process
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    barrier = (lambda: None) if accelerator is None else accelerator.wait_for_everyone
    signature = {**signature, "items": len(items), "draws": draws, "dtype": dtype,
                 "names": hashlib.sha256("\n".join(_item_names(items)).encode()).hexdigest()[:16]}
    meta = folder / "cache.yaml"
    reuse = meta.is_file() and (folder / "latents.npy").is_file() and \
        (yaml.safe_load(meta.read_text()) or {}).get("signature") == signature
    barrier()                                      # every process has looked before any writes
    if reuse:
        cache = LatentCache(folder)
        log(f"reusing the latent cache of {len(cache)} items ({folder})")
        return cache
    device = next(ae.parameters()).device
    sample = _Draws(items, draws)[0][:, None]
    with torch.inference_mode():
        views = [v for d in sample for v in ae.encoder_views(d.to(device))]
    shape = (len(items), len(views), 2, *ae.encode(views[0]).mean.shape[1:])
    partial = folder / "latents.npy.partial"
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        meta.unlink(missing_ok=True)               # the old cache (if any) is invalid from here on
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.dtype(dtype), shape=shape).flush()
    barrier()
    out = np.load(partial, mmap_mode="r+")
    batches = range(rank, (len(items) + batch_size - 1) // batch_size, world)
    mine = [i for b in batches for i in range(b * batch_size, min(len(items), (b + 1) * batch_size))]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(_Draws(items, draws), mine),
                                         batch_size=batch_size, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    overflow = 0
    with torch.inference_mode():
        for b, x in zip(batches, tqdm(loader, desc="encoding latents", leave=False, disable=None if main else True)):
            per_view = []
            for d in range(draws):
                for xx in ae.encoder_views(x[:, d].to(device, non_blocking=True)):
                    post = ae.encode(xx)
                    per_view.append(torch.stack([post.mean, post.std], dim=1))
            stats = torch.stack(per_view, dim=1).float().cpu().numpy().astype(dtype)
            overflow += int(not np.isfinite(stats).all())
            out[b * batch_size:b * batch_size + len(stats)] = stats
    out.flush()
    del out
    if accelerator is not None and world > 1:
        overflow = int(accelerator.reduce(torch.tensor(overflow, device=accelerator.device), reduction="sum"))
    if overflow:
        raise DDMIError(f"latents do not fit in {dtype} (non-finite after conversion): set "
                        "ldm.latent_cache_dtype=float32")
    barrier()
    if main:
        os.replace(partial, folder / "latents.npy")
        ckpt.atomic_write_text(meta, yaml.safe_dump({"signature": signature, "shape": list(shape)}))
    barrier()
    cache = LatentCache(folder)
    log(f"cached the latents of {len(cache)} items: {tuple(shape[3:])} each, {len(views)} view(s), "
        f"{dtype}, {np.dtype(dtype).itemsize * int(np.prod(shape[1:])) / 1024:.1f} KiB per item")
    return cache


def measure_latent_stats(cache: LatentCache, generator: torch.Generator, mode: str, *, chunk: int = 1024
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)`` (C,) that standardise posterior samples of the training latents (first
    view of each item): ``mode="auto"`` per channel (mean, 1/std), ``"auto-global"`` one factor
    for all channels (no shift, 1/std: the Stable-Diffusion-style scale factor). Streams the
    cache in chunks (float64 sums), so memory does not grow with the dataset."""
    total = total_sq = count = 0
    for start in range(0, len(cache), chunk):
        s = cache.first_view(start, start + chunk)
        z = (s[:, 0] + s[:, 1] * torch.randn(s[:, 0].shape, generator=generator)).double()
        z = z.transpose(0, 1).reshape(z.shape[1], -1)                      # (C, n * ...)
        total, total_sq, count = total + z.sum(1), total_sq + z.square().sum(1), count + z.shape[1]
    if mode == "auto-global":
        mean = total.sum() / (count * len(total))
        var = (total_sq.sum() - count * len(total) * mean ** 2) / (count * len(total) - 1)
        c = len(total)
        return torch.zeros(c), torch.full((c,), float(1.0 / var.clamp_min(0).sqrt().clamp_min(1e-8)))
    mean = total / count
    var = (total_sq - count * mean ** 2) / max(1, count - 1)
    return mean.float(), (1.0 / var.clamp_min(0).sqrt().clamp_min(1e-8)).float()


def _fmt(v: torch.Tensor) -> str:
    return "[" + ", ".join(f"{float(x):.3g}" for x in v[:8]) + (", ...]" if len(v) > 8 else "]")


class _LDMForward(nn.Module):
    """DDP-wrappable loss: ``forward(latent_stats, rand) -> (eps-MSE, logs)``."""

    def __init__(self, diffusion: nn.Module):
        super().__init__()
        self.diffusion = diffusion

    def forward(self, stats: torch.Tensor, rand: dict):
        view = rand["view"].clamp(max=stats.shape[1] - 1)
        stats = stats[torch.arange(len(stats), device=stats.device), view]
        z0 = stats[:, 0] + stats[:, 1] * rand["posterior_noise"]          # posterior sample
        loss = self.diffusion.p_loss(self.diffusion.normalize(z0), rand["t"], rand["eps"])
        return loss, {"loss": loss.detach()}


class LDMTask(Task):
    stage = "ldm"

    def __init__(self, cfg: DictConfig, run_dir: Path, *, accelerator=None, log=print):
        self.cfg = cfg
        self.domain = domains.get(cfg.domain)
        self.run_dir = Path(run_dir)
        main = accelerator is None or accelerator.is_main_process
        vae_copy = self.run_dir / "vae"
        need_copy = not (vae_copy / "model.safetensors").is_file()
        if accelerator is not None:
            accelerator.wait_for_everyone()   # every process has looked before the main one copies
        if need_copy:
            if cfg.vae_run is None:
                raise ConfigError("no VAE: pass vae=VAE_RUN_DIR (a finished `ddmi train vae` run)")
            if main:
                copy_vae(Path(cfg.vae_run), vae_copy)
            if accelerator is not None:
                accelerator.wait_for_everyone()
        device = accelerator.device if accelerator is not None else torch.device("cpu")
        self.ae = load_autoencoder(self.run_dir, device=device).requires_grad_(False)
        if cfg.data.dir is None:
            raise ConfigError("no training data: set data.dir=FOLDER")
        source = (vae_copy / VAE_COPY_MARKER).read_text().strip() if (vae_copy / VAE_COPY_MARKER).is_file() else ""
        self.dataset = build_latent_cache(
            self.ae, self.domain.encoder_dataset(cfg), self.run_dir / CACHE_FOLDER,
            signature={"data_dir": str(Path(cfg.data.dir).resolve()), "vae": source},
            dtype=cfg.ldm.latent_cache_dtype, draws=cfg.ldm.point_draws, num_workers=cfg.data.num_workers,
            accelerator=accelerator, log=log if main else (lambda m: None))
        self.num_workers = 0
        self.latent_shape = self.ae.latent_shape
        mode = str(cfg.ldm.latent_scale)
        if mode.startswith("auto"):
            shift, scale = measure_latent_stats(self.dataset, torch.Generator().manual_seed(cfg.seed), mode)
        else:
            shift, scale = 0.0, float(mode)
        torch.manual_seed(cfg.seed)
        self.diffusion = build_diffusion(cfg, self.latent_shape, latent_scale=scale, latent_shift=shift)
        if main:
            log(f"latent standardisation ({mode}): scale {_fmt(self.diffusion.latent_scale)}, "
                f"shift {_fmt(self.diffusion.latent_shift)}")
        self.module = _LDMForward(self.diffusion)
        self.ema = EMA(self.diffusion, beta=cfg.ldm.ema_decay, update_every=cfg.ldm.ema_every,
                       update_after_step=cfg.ldm.ema_after)
        self.fixed_noise = torch.randn((16, *self.latent_shape), generator=torch.Generator().manual_seed(1234))
        k = min(64, len(self.dataset))           # fixed probe of the denoising loss (evaluate)
        g = torch.Generator().manual_seed(4321)
        self.probe_z0 = self.dataset.first_view(0, k)[:, 0]
        self.probe_t = torch.linspace(0, self.diffusion.num_steps - 1, k).round().long()
        self.probe_eps = torch.randn(self.probe_z0.shape, generator=g)

    def parameters(self):
        return [p for p in self.diffusion.parameters() if p.requires_grad]

    def to(self, device):
        super().to(device)           # the diffusion model (inside the module)
        self.ema.to(device)
        self.ae.to(device)
        for name in ("fixed_noise", "probe_z0", "probe_t", "probe_eps"):
            setattr(self, name, getattr(self, name).to(device))

    def random_inputs(self, generator, n):
        """``view``: which cached view each example trains on: with point-cloud draws
        (``ldm.point_draws`` > 1) a uniformly random draw, else the mirrored view for a flip."""
        shape = (n, *self.latent_shape)
        flip = torch.rand(n, generator=generator) < 0.5
        if not self.cfg.data.hflip or self.dataset.views < 2:
            flip = torch.zeros(n, dtype=torch.bool)
        out = {"view": flip.long(), "posterior_noise": torch.randn(shape, generator=generator),
               "t": torch.randint(0, self.diffusion.num_steps, (n,), generator=generator),
               "eps": torch.randn(shape, generator=generator)}
        if self.cfg.ldm.point_draws > 1:
            out["view"] = torch.randint(0, self.dataset.views, (n,), generator=generator)
        return out

    def weights(self):
        return {"model": ckpt.state_dict_for_saving(self.diffusion),
                "ema": ckpt.state_dict_for_saving(self.ema)}

    def load_weights(self, weights):
        ckpt.load_into(self.diffusion, weights["model"], what="checkpoint model")
        ckpt.load_into(self.ema, weights["ema"], what="checkpoint EMA")

    def after_optimizer_step(self, step):
        self.ema.update(self.diffusion)

    def write_samples(self, step: int, folder: Path) -> list[Path]:
        z = diffusion_sample(self.ema.model, self.fixed_noise.shape, sampler=self.cfg.ldm.sampler,
                             steps=self.cfg.ldm.sample_steps, noise=self.fixed_noise)
        return self.domain.write_latent_preview(self.ae, z, folder / f"samples-step{step:07d}.png")

    def evaluate(self) -> dict[str, float]:
        """``ema_loss``: the EMA model's epsilon-MSE on a fixed probe (posterior means of up to 64
        training items, timesteps spread evenly over [0, T), fixed noise): unlike the logged
        training loss it is free of batch noise, so its curve shows real progress."""
        d = self.ema.model
        t, eps, z0 = self.probe_t, self.probe_eps, self.probe_z0
        total = 0.0
        for i in range(0, len(t), 16):
            part = slice(i, i + 16)
            total += float(d.p_loss(d.normalize(z0[part]), t[part], eps[part])) * len(t[part])
        return {"ema_loss": total / len(t)}


VAE_COPY_MARKER = "SOURCE"   # written by copy_vae: the folder is ddmi's copy, not a user's run


def check_vae_destination(run_dir: Path) -> None:
    """Refuse an LDM run folder whose ``vae/`` is something other than ddmi's own VAE copy (the
    user's VAE run, their files): stage 2 would have to replace it."""
    dest = Path(run_dir) / "vae"
    if (dest.exists() or dest.is_symlink()) and not (dest / VAE_COPY_MARKER).is_file():
        raise ConfigError(f"{dest} exists and is not a VAE copy made by ddmi: an LDM run keeps its frozen "
                          "VAE in RUN/vae, so choose another run_dir= for the LDM (nothing was changed)")


def copy_vae(vae_run: Path, dest: Path) -> None:
    """Copy the VAE's config and latest weights into an LDM run (which is then self-contained).

    ``dest`` must not exist yet, or be a copy this function made (it holds ``SOURCE``); anything
    else there (the user's own VAE run, their files) is refused, never replaced."""
    info = ckpt.read_run_info(vae_run)
    if info["stage"] != "vae":
        raise ConfigError(f"vae={vae_run} is a {info['stage']} run, not a VAE run")
    latest = ckpt.latest_checkpoint(vae_run)
    if latest is None:
        raise ConfigError(f"vae={vae_run} has no complete checkpoint yet")
    check_vae_destination(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(dest.parent, f".{dest.name}.copy-")
    try:
        shutil.copy2(vae_run / "config.yaml", tmp / "config.yaml")
        shutil.copy2(vae_run / "run.yaml", tmp / "run.yaml")
        shutil.copy2(latest / "model.safetensors", tmp / "model.safetensors")
        (tmp / VAE_COPY_MARKER).write_text(f"{vae_run.resolve()} {latest.name}\n")
        if dest.exists():   # an earlier copy of ours: move it aside, then delete it
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, old / dest.name)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------
# generation

