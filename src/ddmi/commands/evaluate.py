"""``ddmi eval``: measure a run folder (it generates, then measures) or a folder of files.

Run folders: the run's domain measures them (``Domain.evaluate_run``; the protocols are in each
domain's evaluation module and in ``docs/metrics.md``); this module checks the metrics against
the domain's list, loads the autoencoder on the device and hands the domain a function that
draws this process's share of the samples from the run's EMA denoiser.

Any folder: ``--ref DIR`` is required; the metric defaults follow the files (images: FID + KID;
``.npy``/``.npz`` point clouds: MMD/COV/1-NNA with Chamfer).

The figures are printed as a table and written as JSON: ``RUN/eval/<name>.json`` for a run,
``--json FILE`` (or ``PATH/ddmi-eval.json``) for a folder.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from ddmi import checkpoint as ckpt
from ddmi import domains
from ddmi.commands.options import check_options, device_option, log as log_line, torch_threads
from ddmi.devices import Shard, model_device, resolve_device
from ddmi.errors import ConfigError, DataError, MissingDependencyError
from ddmi.files import atomic_write_text
from ddmi.generate import latent_batches, noise_for, resolve_sampler
from ddmi.metrics.api import unavailable_metrics
from ddmi.runs import load_autoencoder, load_diffusion

# metrics that need samples (an LDM run), whichever domain names them
GENERATION_METRICS = {"fid", "kid", "fvd", "mmd-cd", "cov-cd", "1nna-cd"}


def generate_batches(run_dir: Path, ae, cfg, *, num: int, sampler: str | None, steps: int | None,
                     batch_size: int, seed: int, shard=None):
    """This process's share of ``num`` latents sampled with the run's EMA denoiser (the seeds of
    ``ddmi sample --seed``), on the autoencoder's device: ``(batches, sampler, steps)``, where
    ``batches`` yields ``(start, z)`` one batch at a time (every batch without a ``shard``, else
    batches ``rank, rank + W, ...``; see :class:`ddmi.devices.Shard`)."""
    sampler, steps = resolve_sampler(cfg, sampler, steps)
    diffusion = load_diffusion(run_dir, ae.latent_shape, ema=True, device=model_device(ae))
    noises = torch.stack([noise_for(seed, i, ae.latent_shape) for i in range(num)])   # CPU, then moved
    starts = None if shard is None else shard.starts(num, batch_size)
    batches = latent_batches(diffusion, noises, sampler=sampler, steps=steps, batch_size=batch_size,
                             starts=starts, progress=shard is None or shard.is_main)
    return batches, sampler, steps


def generate(run_dir: Path, ae, cfg, *, num: int, sampler: str | None, steps: int | None, batch_size: int,
             seed: int, device: str | torch.device | None = None) -> tuple[torch.Tensor, str, int | None]:
    """``num`` latents sampled with the run's EMA denoiser (the seeds of ``ddmi sample --seed``):
    ``(z, sampler, steps)`` (the sampler and step count actually used). The models run on
    ``device`` (default: the autoencoder's, which moves there); ``z`` stays on it."""
    if device is not None:
        ae = ae.to(resolve_device(device))
    batches, sampler, steps = generate_batches(run_dir, ae, cfg, num=num, sampler=sampler, steps=steps,
                                               batch_size=batch_size, seed=seed)
    with torch.inference_mode():
        z = torch.cat([z for _, z in batches])
    return z, sampler, steps


def evaluate_run(run_dir: Path, *, metrics, num: int | None, resolution: int | None, sampler: str | None,
                 steps: int | None, batch_size: int, ref: str | None, seed: int = 0, i3d=None,
                 log=print, device: str | torch.device | None = None, shard: Shard | None = None) -> dict:
    """The figures of a run folder, computed on ``device`` (default: ``cuda`` when available,
    else ``cpu``) by its domain. Under ``accelerate launch`` (or with a ``shard``) the samples of
    the generation metrics are drawn, rendered and featurised in shares by every process, and the
    main process computes the figures: only its result is complete."""
    info = ckpt.read_run_info(run_dir)
    cfg = ckpt.load_run_config(run_dir)
    domain = domains.get(cfg.domain)
    if not domain.run_metrics:
        raise ConfigError(f"`ddmi eval` of {cfg.domain} run folders is not available")
    metrics = list(metrics or domain.default_metrics[info["stage"]])
    unknown = [m for m in metrics if m not in domain.run_metrics]
    if unknown:
        raise ConfigError(f"metric {unknown[0]!r} does not apply to a {cfg.domain} run folder; "
                          f"choose from {', '.join(domain.run_metrics)}")
    if info["stage"] != "ldm" and GENERATION_METRICS & set(metrics):
        raise ConfigError(f"{run_dir} is a VAE run: {', '.join(sorted(GENERATION_METRICS & set(metrics)))} "
                          "need an LDM run (samples)")
    missing = unavailable_metrics(metrics, i3d=i3d)
    for name, reason in missing.items():
        log(f"warning: not computing {name}: {reason}")
    metrics = [m for m in metrics if m not in missing]
    if not metrics:
        raise MissingDependencyError(f"none of the metrics can be computed here: {next(iter(missing.values()))}")
    shard = shard or Shard(device)
    ae = load_autoencoder(run_dir, device=shard.device)

    def generate_share(n: int):
        return generate_batches(run_dir, ae, cfg, num=n, sampler=sampler, steps=steps, batch_size=batch_size,
                                seed=seed, shard=shard)

    results = domain.evaluate_run(run_dir, cfg, info["stage"], ae, generate_share, metrics=metrics, num=num,
                                  resolution=resolution, batch_size=batch_size, ref=ref, seed=seed, i3d=i3d,
                                  shard=shard, log=log)
    return {"domain": cfg.domain, **results, **({"not_computed": missing} if missing else {})}


def _folder_kind(folder: Path) -> str:
    from ddmi.data.images import list_images
    if any(p.suffix.lower() in (".npy", ".npz") for p in folder.rglob("*")):
        return "points"
    list_images(folder)  # raises a clear DataError when there is nothing to measure
    return "images"


def sample_groups(path: Path, scratch: Path) -> dict[str, Path]:
    """The folders to measure in ``path``: for a ``ddmi sample`` folder (``ddmi-samples.json``),
    one folder of links in ``scratch`` per group (resolution), holding only its samples (no grids
    or sheets); otherwise ``{"": path}``."""
    from ddmi.commands.sample import MANIFEST
    try:
        groups = json.loads((path / MANIFEST).read_text())["groups"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"": path}
    if not groups:
        return {"": path}
    out = {}
    for group, files in groups.items():
        folder = scratch / str(group)
        folder.mkdir()
        for rel in files:
            if (path / rel).is_file():
                (folder / Path(rel).name).symlink_to((path / rel).resolve())
        out[str(group)] = folder
    return out


def _print_table(results: dict, log) -> None:
    shown = {k: v for k, v in results.items() if k != "not_computed"}
    for name, reason in results.get("not_computed", {}).items():
        shown[name] = f"not computed ({reason.split(':')[0]})"
    width = max(len(k) for k in shown)
    for k, v in shown.items():
        value = f"{v:.4f}" if isinstance(v, float) else str(v)
        print(f"{k:<{width}}  {value}")


def eval_command(args, log=print) -> int:
    """``ddmi eval`` on ``args.device``; a run folder under ``accelerate launch`` is measured by
    every process (see :func:`evaluate_run`) and reported by the main one."""
    path = Path(args.path)
    t0 = time.perf_counter()
    metrics = [m.lower() for m in args.metric] if args.metric else None
    device = getattr(args, "device", None)
    shard = Shard(device)
    if not shard.is_main:
        log = (lambda m: None)   # noqa: E731 - one report, from the main process
    if (path / "run.yaml").is_file():
        results = evaluate_run(path, metrics=metrics, num=args.num, resolution=args.resolution,
                               sampler=args.sampler, steps=args.steps, batch_size=args.batch_size,
                               ref=args.ref, i3d=args.i3d, log=log, shard=shard)
        if not shard.is_main:
            return 0
        name = "-".join(sorted(m for m in domains.get(results["domain"]).run_metrics if m in results)) or "eval"
        suffix = f"-{results['resolution']}" if "resolution" in results else ""
        json_path = Path(args.json) if args.json else path / "eval" / f"{name}{suffix}.json"
    elif path.is_dir():
        if not shard.is_main:   # a folder of files is measured by the main process alone
            return 0
        if args.ref is None:
            raise ConfigError(f"{path} is not a run folder: pass --ref DIR (the reference files) to measure it")
        from ddmi.metrics.api import evaluate_folders
        if metrics is None:
            metrics = ["mmd-cd", "cov-cd", "1nna-cd"] if _folder_kind(path) == "points" else ["fid", "kid"]
        results = {"path": str(path), "ref": str(args.ref)}
        with tempfile.TemporaryDirectory(prefix="ddmi-eval-") as scratch:
            for group, folder in sample_groups(path, Path(scratch)).items():
                if group:
                    log(f"measuring the {group} group of {path} ({len(list(folder.iterdir()))} files)")
                figures = evaluate_folders(folder, args.ref, metrics=metrics, num=args.num,
                                           batch_size=args.batch_size, i3d=args.i3d, device=shard.device)
                results.update({f"{k}@{group}" if group else k: v for k, v in figures.items()})
        json_path = Path(args.json) if args.json else path / "ddmi-eval.json"
    else:
        raise DataError(f"{path} is neither a run folder nor a folder of files")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    _print_table(results, log)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    log(f"wrote {json_path}")
    return 0


def run(args) -> int:
    check_options(args, "num", "resolution", "steps", "batch_size")
    args.device = device_option(args)
    torch_threads()
    return eval_command(args, log=log_line)
