"""``ddmi sample``: latents from an LDM run's (EMA) denoiser, written by the run's domain."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ddmi import checkpoint as ckpt
from ddmi.commands.options import (check_domain_options, check_options, check_out_folder, device_option,
                                   log as log_line, torch_threads)
from ddmi import domains
from ddmi.devices import Shard
from ddmi.errors import ConfigError
from ddmi.files import atomic_write_text, check_free
from ddmi.generate import latent_batches, sampling_plan
from ddmi.runs import load_autoencoder, load_diffusion


def sample_command(args, log=print) -> int:
    """``ddmi sample``: on ``args.device`` (see :mod:`ddmi.devices`); under ``accelerate launch``
    each process draws its share of the batches and writes their files, the main process the
    grids."""
    run_dir = Path(args.run_dir)
    info = ckpt.read_run_info(run_dir)
    if info["stage"] != "ldm":
        raise ConfigError(f"{run_dir} is a {info['stage']} run; `ddmi sample` needs an LDM run "
                          "(`ddmi train ldm CONFIG vae=...`)")
    shard = Shard(getattr(args, "device", None))
    if not shard.is_main:
        log = (lambda m: None)   # noqa: E731 - one report, from the main process
    cfg = ckpt.load_run_config(run_dir)
    ae = load_autoencoder(run_dir, device=shard.device)
    diffusion = load_diffusion(run_dir, ae.latent_shape, ema=not args.no_ema, device=shard.device)
    domain = domains.get(cfg.domain)
    check_domain_options(args, domain, "sample")
    sampler, steps, noises = sampling_plan(args, cfg, ae.latent_shape)
    latest = ckpt.latest_checkpoint(run_dir)
    log(f"sampling from {run_dir} at step {int(latest.name.split('-')[1])} ({latest.name}, "
        f"{'online' if args.no_ema else 'EMA'} weights) on {shard.device}")
    check_free(domain.sample_targets(args, ae, len(noises)), args.overwrite)
    shard.wait()                  # every process has checked before any writes
    with torch.inference_mode():
        batches = latent_batches(diffusion, noises, sampler=sampler, steps=steps, eta=args.eta,
                                 batch_size=args.batch_size, starts=shard.starts(len(noises), args.batch_size),
                                 progress=shard.is_main)
        summary = domain.write_samples(args, ae, batches, len(noises), shard, log)
    if shard.is_main:
        write_manifest(Path(args.out), run_dir, ckpt.latest_checkpoint(run_dir), cfg.domain,
                       domain.sample_groups(args, ae, len(noises)), sampler=sampler, steps=steps, seed=args.seed)
    log(f"{summary} ({sampler}, {steps or 'default'} steps{shard.describe()})")
    return 0


MANIFEST = "ddmi-samples.json"


def write_manifest(out: Path, run_dir: Path, checkpoint: Path, domain: str, groups: dict, **how) -> None:
    """``OUT/ddmi-samples.json``: which run and checkpoint made the samples, how, and the
    measurable files by group (``ddmi eval OUT --ref REF`` measures each group on its own)."""
    out = out.resolve()
    manifest = {"run": str(run_dir.resolve()), "checkpoint": checkpoint.name, "domain": domain, **how,
                "groups": {g: [str(Path(p).resolve().relative_to(out)) for p in files] for g, files in groups.items()}}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def run(args) -> int:
    check_options(args, "num", "resolution", "steps", "batch_size", "frames")
    check_out_folder(args.out)
    args.device = device_option(args)
    torch_threads()
    return sample_command(args, log=log_line)
