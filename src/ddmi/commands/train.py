"""``ddmi train vae|ldm CONFIG key=value...``: create or resume a run folder and train it."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from omegaconf import OmegaConf

from ddmi import checkpoint as ckpt
from ddmi.commands.options import log, torch_threads
from ddmi.config import load_config, parse_overrides
from ddmi.errors import ConfigError
from ddmi.files import LOCK_NAME, FolderLock
from ddmi.training.ldm_task import (VAE_COPY_MARKER, LDMTask, check_vae_destination, ldm_overrides, stage2_config,
                                    unfinished_vae_warning)
from ddmi.training.tasks import make_vae_task
from ddmi.training.trainer import train

RESUMABLE_DIFFS = ("train.steps", "ldm_train.steps", "train.log_every", "train.sample_every",
                   "train.save_every", "ldm_train.log_every", "ldm_train.sample_every",
                   "ldm_train.save_every", "data.num_workers", "run_dir", "vae_run",
                   *(f"{section}.{key}" for section in ("train", "ldm_train")
                     for key in ("tf32", "compile", "channels_last")))
# what the remedies of a diverged run change: allowed on resume, and recorded in logs/history.jsonl
REMEDY_DIFFS = (*(f"{section}.{key}" for section in ("train", "ldm_train")
                  for key in ("lr", "min_lr", "warmup_steps", "grad_clip", "max_nonfinite", "divergence_factor")),
                "loss.sn_weight", "loss.sn_init", "loss.kl_max", "loss.lpips_weight",
                "gan.disc_weight", "gan.feature_weight", "gan.generator_factor")


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, key + ".")
        elif va != vb:
            keys.append(key)
    return keys


def _lookup(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_new_run_folder(run_dir: Path) -> None:
    """A new run goes into a missing or empty folder: never into a user's non-empty folder."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is a file, not a folder")
    ours = {LOCK_NAME}
    if (run_dir / "vae" / VAE_COPY_MARKER).is_file():
        ours.add("vae")
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in ours)
    if foreign:
        raise ConfigError(f"run_dir={run_dir} is not empty and holds no ddmi run (it has {', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder")


def prepare_run_dir(cfg, stage: str, run_dir: Path, is_main: bool, *, existing: bool, log=log):
    """Create the run folder, or check that an existing one belongs to this config (resume).

    ``existing``: whether the folder held a run before any process wrote to it (decided by every
    process before the main one creates the files, so none mistakes a half-written new folder
    for a broken old one). A new folder is checked by the main process alone (the others may
    look after it wrote there); when it refuses, the launcher stops the others. A folder whose
    first start failed (``started: false`` in run.yaml: a typo in ``data.dir``, a full disk)
    takes the new config. On resume, the keys of :data:`RESUMABLE_DIFFS` and
    :data:`REMEDY_DIFFS` may change; changes are appended to ``logs/history.jsonl``."""
    if not existing:
        if is_main:    # only the writer checks: a slower process would see the main one's new files
            check_new_run_folder(run_dir)
            ckpt.init_run_dir(run_dir, cfg, stage)
        return
    if not ckpt.run_started(run_dir) and ckpt.latest_checkpoint(run_dir) is None:
        if is_main:
            log(f"{run_dir}: its first start failed before training; starting it again with this config")
            ckpt.init_run_dir(run_dir, cfg, stage)
        return
    info = ckpt.read_run_info(run_dir)
    if info["stage"] != stage:
        raise ConfigError(f"{run_dir} is a {info['stage']} run, not a {stage} run")
    saved = OmegaConf.to_container(ckpt.load_run_config(run_dir))
    new = OmegaConf.to_container(cfg)
    diffs = config_diff(saved, new)
    refused = [k for k in diffs if k not in RESUMABLE_DIFFS and k not in REMEDY_DIFFS]
    if refused:
        raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(refused[:6])}); "
                          "use another run_dir= or the same settings to resume (keys that may change on "
                          "resume: train.steps, train.lr, train.grad_clip, the loss weights, ...)")
    if is_main:
        changed = {k: [_lookup(saved, k), _lookup(new, k)] for k in diffs if k not in ("run_dir", "vae_run")}
        if changed:
            latest = ckpt.latest_checkpoint(run_dir)
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_from": latest.name if latest else None,
                     "changed": changed}
            (run_dir / "logs").mkdir(exist_ok=True)
            with open(run_dir / "logs" / "history.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            log(f"resuming with changed settings: {', '.join(f'{k} {a} -> {b}' for k, (a, b) in changed.items())}")
        ckpt.atomic_write_text(run_dir / "config.yaml", ckpt.to_yaml(cfg))


def accelerator(tc, *, unused_parameters: bool = False):
    """``unused_parameters``: some parameters get no gradient in some steps (GAN phases)."""
    cuda = torch.cuda.is_available()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if unused_parameters else []
    # mixed precision is the trainer's (autocast + its own loss scaler), not accelerate's
    return Accelerator(mixed_precision="no", cpu=not cuda, kwargs_handlers=handlers)


def run(args) -> int:
    torch_threads()
    if args.stage == "ldm":
        overrides = ldm_overrides(args.overrides)
    else:
        overrides = parse_overrides(args.overrides)
    cfg = load_config(args.config, overrides)
    stage_key = "train" if args.stage == "vae" else "ldm_train"
    run_dir = Path(cfg.run_dir or f"runs/{cfg.name}-{args.stage}")
    if args.stage == "ldm":
        check_vae_destination(run_dir)
        vae_dir = run_dir / "vae" if (run_dir / "vae" / "config.yaml").is_file() else None
        if vae_dir is None and cfg.vae_run is None:
            raise ConfigError("no VAE: pass vae=VAE_RUN_DIR (a `ddmi train vae` run folder)")
        cfg = stage2_config(cfg, vae_dir or Path(cfg.vae_run),
                            data_dir_overridden="dir" in overrides.get("data", {}))
        if vae_dir is None and (warning := unfinished_vae_warning(Path(cfg.vae_run))):
            log(warning)
    acc = accelerator(cfg[stage_key], unused_parameters=args.stage == "vae" and cfg.gan.enabled)
    with FolderLock(run_dir) if acc.is_main_process else contextlib.nullcontext():
        return _train(args, cfg, stage_key, run_dir, acc)


def _train(args, cfg, stage_key: str, run_dir: Path, acc) -> int:
    existing = (run_dir / "run.yaml").is_file()
    acc.wait_for_everyone()            # every process has looked before the main one writes
    prepare_run_dir(cfg, args.stage, run_dir, acc.is_main_process, existing=existing)
    acc.wait_for_everyone()
    torch.manual_seed(cfg.seed)
    if args.stage == "vae":
        task = make_vae_task(cfg, log=log if acc.is_main_process else (lambda m: None))
    else:
        task = LDMTask(cfg, run_dir, accelerator=acc, log=log)
    if acc.is_main_process:
        ckpt.mark_started(run_dir)     # from here on, the folder is a run (its config is fixed)
        log(f"training {args.stage} on {len(task.dataset)} items ({cfg.data.dir}), "
            f"{cfg[stage_key].steps} steps of {cfg[stage_key].batch_size} x {acc.num_processes} process(es)"
            f" x {cfg[stage_key].grad_accum} accumulation")
    precision = cfg[stage_key].mixed_precision
    if acc.device.type != "cuda" and precision != "no":
        if acc.is_main_process:
            log(f"{stage_key}.mixed_precision={precision} applies on GPUs only: training in fp32 on the CPU")
        precision = "no"
    result = train(task, cfg[stage_key], run_dir, seed=cfg.seed, accelerator=acc, log=log,
                   progress=not args.no_progress, precision=precision)
    if acc.is_main_process:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.last_logs.items())
        log(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}: {metrics}")
        log(f"run folder: {run_dir}")
    return 130 if result.interrupted else 0
