"""The ``ddmi`` command: synth, train, reconstruct, sample, eval, demo, info.

Errors the user can fix are printed as one line (``error: ...``) with exit status 2; pass
``--debug`` (before the command) to see the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddmi.errors import ConfigError, DDMIError

# ------------------------------------------------------------------------------------------
# helpers


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _torch_threads() -> None:
    import torch
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))


def _check_options(args, *names: str) -> None:
    """Reject non-positive counts/sizes and unknown samplers before any work starts."""
    from ddmi.config import SAMPLER_NAMES
    for name in names:
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    sampler = getattr(args, "sampler", None)
    if sampler is not None and sampler not in SAMPLER_NAMES:
        raise ConfigError(f"unknown sampler '{sampler}'; choose from {', '.join(SAMPLER_NAMES)}")
    if getattr(args, "eta", 0.0) < 0:
        raise ConfigError(f"--eta must be >= 0, got {args.eta}")


RESUMABLE_DIFFS = ("train.steps", "ldm_train.steps", "train.log_every", "train.sample_every",
                   "train.save_every", "ldm_train.log_every", "ldm_train.sample_every",
                   "ldm_train.save_every", "data.num_workers", "run_dir", "vae_run",
                   *(f"{section}.{key}" for section in ("train", "ldm_train")
                     for key in ("tf32", "compile", "channels_last")))


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diff(va, vb, key + ".")
        elif va != vb:
            keys.append(key)
    return keys


def _prepare_run_dir(cfg, stage: str, run_dir: Path, is_main: bool, *, existing: bool):
    """Create the run folder, or check that an existing one belongs to this config (resume).

    ``existing``: whether the folder held a run before any process wrote to it (decided by every
    process before the main one creates the files, so none mistakes a half-written new folder
    for a broken old one)."""
    from omegaconf import OmegaConf

    from ddmi import checkpoint as ckpt
    if existing:
        info = ckpt.read_run_info(run_dir)
        if info["stage"] != stage:
            raise ConfigError(f"{run_dir} is a {info['stage']} run, not a {stage} run")
        saved = ckpt.load_run_config(run_dir)
        diffs = [k for k in _config_diff(OmegaConf.to_container(saved), OmegaConf.to_container(cfg))
                 if k not in RESUMABLE_DIFFS]
        if diffs:
            raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(diffs[:6])}); "
                              "use another run_dir= or the same settings to resume")
        if is_main:
            ckpt.atomic_write_text(run_dir / "config.yaml", ckpt.to_yaml(cfg))
    elif is_main:
        ckpt.init_run_dir(run_dir, cfg, stage)


def _device(args):
    """``--device`` checked before any work starts (a one-line error for a bad name, an absent
    GPU, or ``meta``); ``None`` when not given (then: the launcher's device under ``accelerate
    launch``, else ``cuda`` when available, else ``cpu``)."""
    from ddmi.devices import resolve_device
    name = getattr(args, "device", None)
    return None if name is None else resolve_device(name, allow_meta=False)


def _accelerator(tc, *, unused_parameters: bool = False):
    """``unused_parameters``: some parameters get no gradient in some steps (GAN phases)."""
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs
    cuda = torch.cuda.is_available()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if unused_parameters else []
    # mixed precision is the trainer's (autocast + its own loss scaler), not accelerate's
    return Accelerator(mixed_precision="no", cpu=not cuda, kwargs_handlers=handlers)


# ------------------------------------------------------------------------------------------
# commands


def cmd_info(args) -> int:
    from ddmi.config import list_presets, load_config, to_yaml
    from ddmi.models import parameter_counts
    if args.list or not args.config:
        for name in list_presets():
            print(name)
        return 0
    cfg = load_config(args.config, args.overrides)
    if not args.quiet:
        print(to_yaml(cfg))
    for name, count in parameter_counts(cfg).items():
        print(f"{name}: {count}")
    return 0


def cmd_synth(args) -> int:
    from ddmi.data import synthetic
    if args.kind == "image":
        paths = synthetic.synth_images(args.out_dir, num=args.num, resolution=args.resolution,
                                       seed=args.seed, overwrite=args.overwrite, split_test=args.test,
                                       style=args.style)
    elif args.kind == "shapes":
        points = 30_000 if args.points is None else args.points
        paths = synthetic.synth_shapes(args.out_dir, num=args.num, seed=args.seed, overwrite=args.overwrite,
                                       split_test=args.test, num_points=points, num_surface=points)
    elif args.kind == "nerf":
        from ddmi.data.synthetic_nerf import synth_nerf
        paths = synth_nerf(args.out_dir, num=args.num, seed=args.seed, overwrite=args.overwrite,
                           split_test=args.test, resolution=args.resolution, views=args.views,
                           num_points=2048 if args.points is None else args.points)
    elif args.kind == "video":
        from ddmi.data.synthetic_videos import synth_videos
        paths = synth_videos(args.out_dir, num=args.num, frames=args.frames, resolution=args.resolution,
                             seed=args.seed, overwrite=args.overwrite, split_val=args.test or None)
    else:  # pragma: no cover - argparse restricts the choices
        raise ConfigError(f"unknown synth kind {args.kind}")
    _log(f"wrote {len(paths)} {args.kind} files under {args.out_dir}")
    return 0


def cmd_train(args) -> int:
    import torch

    from ddmi.config import load_config, parse_overrides
    _torch_threads()
    if args.stage == "ldm":
        from ddmi.stage2 import ldm_overrides
        overrides = ldm_overrides(args.overrides)
    else:
        overrides = parse_overrides(args.overrides)
    cfg = load_config(args.config, overrides)
    stage_key = "train" if args.stage == "vae" else "ldm_train"
    run_dir = Path(cfg.run_dir or f"runs/{cfg.name}-{args.stage}")
    if args.stage == "ldm":
        from ddmi.stage2 import check_vae_destination, stage2_config
        check_vae_destination(run_dir)
        vae_dir = run_dir / "vae" if (run_dir / "vae" / "config.yaml").is_file() else None
        if vae_dir is None and cfg.vae_run is None:
            raise ConfigError("no VAE: pass vae=VAE_RUN_DIR (a `ddmi train vae` run folder)")
        cfg = stage2_config(cfg, vae_dir or Path(cfg.vae_run),
                            data_dir_overridden="dir" in overrides.get("data", {}))
    acc = _accelerator(cfg[stage_key], unused_parameters=args.stage == "vae" and cfg.gan.enabled)
    existing = (run_dir / "config.yaml").is_file()
    acc.wait_for_everyone()            # every process has looked before the main one writes
    _prepare_run_dir(cfg, args.stage, run_dir, acc.is_main_process, existing=existing)
    acc.wait_for_everyone()
    torch.manual_seed(cfg.seed)
    if args.stage == "vae":
        from ddmi.stage1 import make_vae_task
        task = make_vae_task(cfg, log=_log if acc.is_main_process else (lambda m: None))
    else:
        from ddmi.stage2 import LDMTask
        task = LDMTask(cfg, run_dir, accelerator=acc, log=_log)
    from ddmi.train import train
    precision = cfg[stage_key].mixed_precision
    if acc.device.type != "cuda" and precision != "no":
        if acc.is_main_process:
            _log(f"{stage_key}.mixed_precision={precision} applies on GPUs only: training in fp32 on the CPU")
        precision = "no"
    result = train(task, cfg[stage_key], run_dir, seed=cfg.seed, accelerator=acc, log=_log,
                   progress=not args.no_progress, precision=precision)
    if acc.is_main_process:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.last_logs.items())
        _log(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}: {metrics}")
        _log(f"run folder: {run_dir}")
    return 130 if result.interrupted else 0


def cmd_reconstruct(args) -> int:
    import torch

    from ddmi.api import load_autoencoder
    from ddmi.data.images import load_image, save_grid, save_image
    from ddmi.domains.image.pixels import resize
    from ddmi.devices import default_device
    _check_options(args, "resolution", "views")
    device = _device(args) or default_device()
    _torch_threads()
    ae = load_autoencoder(args.run_dir, device=device)
    if ae.domain == "occupancy":
        from ddmi.domains.occupancy.meshes import reconstruct_shapes_command
        return reconstruct_shapes_command(ae, args, log=_log)
    if ae.domain == "nerf":
        from ddmi.domains.nerf.outputs import reconstruct_nerf_command
        return reconstruct_nerf_command(ae, args, log=_log)
    if ae.domain == "video":
        from ddmi.domains.video.outputs import reconstruct_videos_command
        _check_options(args, "frames")
        return reconstruct_videos_command(ae, args, log=_log)
    if ae.domain != "image":
        raise ConfigError(f"reconstruct for the {ae.domain} domain is not available yet")
    out = Path(args.out)
    r = ae.resolution
    res = args.resolution or r
    rows = []
    for path in args.inputs:
        img = torch.from_numpy(load_image(path)).permute(2, 0, 1).float() / 127.5 - 1.0
        x = resize(img[None], r).to(device)
        with torch.inference_mode():
            z = ae.encode(x).mode()
            rec = ae.render(z, res).cpu()
        target = out / f"{Path(path).stem}_rec{res}.png"
        if target.exists() and not args.overwrite:
            raise DDMIError(f"{target} exists (pass --overwrite to replace it)")
        save_image(rec[0], target)
        rows.append((resize(img[None], res)[0], rec[0]))
    save_grid(torch.stack([t for pair in rows for t in pair]), out / "reconstructions.png", nrow=2)
    _log(f"wrote {len(rows)} reconstructions at {res}x{res} to {out} (+ reconstructions.png: input | output)")
    return 0


def cmd_sample(args) -> int:
    from ddmi.stage2 import sample_command
    _check_options(args, "num", "resolution", "steps", "batch_size", "frames")
    args.device = _device(args)
    _torch_threads()
    return sample_command(args, log=_log)


def cmd_eval(args) -> int:
    from ddmi.evaluate import eval_command
    _check_options(args, "num", "resolution", "steps", "batch_size")
    args.device = _device(args)
    _torch_threads()
    return eval_command(args, log=_log)


def cmd_demo(args) -> int:
    from ddmi.demo import run_demo
    _torch_threads()
    return run_demo(Path(args.out), quick=args.quick, log=_log)


# ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddmi", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="show a preset's resolved config and parameter counts")
    s.add_argument("config", nargs="?", help="preset name or YAML path")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.add_argument("--list", action="store_true", help="list the presets")
    s.add_argument("--quiet", "-q", action="store_true", help="only the parameter counts")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("synth", help="write a synthetic dataset")
    s.add_argument("kind", choices=["image", "shapes", "nerf", "video"])
    s.add_argument("out_dir")
    s.add_argument("--num", type=int, default=1000)
    s.add_argument("--resolution", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--test", type=int, default=0,
                   help="also write this many test items (video: val videos, default num // 8, at least 1)")
    s.add_argument("--style", choices=["scenes", "simple"], default="scenes",
                   help="image: 'scenes' (1-3 textured shapes with shadows on a gradient) or 'simple' "
                   "(one flat shape on a flat background; the demo's data)")
    s.add_argument("--frames", type=int, default=16, help="video: frames per video")
    s.add_argument("--points", type=int, default=None,
                   help="shapes: query points and surface points per shape (default 30k; ONet's files hold "
                   "100k; training draws 2048 + 3000 per step); nerf: coloured points per object (default 2048)")
    s.add_argument("--views", type=int, default=50, help="nerf: posed views per object (rendered at --resolution)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("train", help="train stage 1 (vae) or stage 2 (ldm); re-run to resume")
    s.add_argument("stage", choices=["vae", "ldm"])
    s.add_argument("config", help="preset name or YAML path")
    s.add_argument("overrides", nargs="*", help="key=value overrides (ldm: vae=VAE_RUN_DIR)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("reconstruct", help="encode images (point clouds for shapes, srn-cars .npz objects "
                       "for NeRF, video files or frame folders for video) and render them at any resolution "
                       "(meshes: grid resolution; videos: also any --frames)")
    s.add_argument("run_dir")
    s.add_argument("inputs", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--resolution", type=int, default=None)
    s.add_argument("--views", type=int, default=8,
                   help="nerf: how many of each object's views to render (evenly spaced), with PSNR")
    s.add_argument("--frames", type=int, action="append", default=None,
                   help="video: frame count to render (continuous time; default the training clip length)")
    s.add_argument("--normalize", action="store_true",
                   help="shapes: centre each point cloud and scale its longest side to 1 first")
    s.add_argument("--device", default=None,
                   help="torch device to run on, e.g. cuda, cuda:1, cpu (default: cuda when available, "
                   "else cpu)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("sample", help="generate samples from an LDM run")
    s.add_argument("run_dir")
    s.add_argument("--num", type=int, default=16)
    s.add_argument("--out", required=True)
    s.add_argument("--resolution", type=int, action="append", default=None,
                   help="render size, or mesh grid resolution for shapes (default 128); repeat for several")
    s.add_argument("--frames", type=int, action="append", default=None,
                   help="video: frame count to render (continuous time: any count, e.g. 2x the "
                   "training clip length); repeat for several")
    s.add_argument("--sampler", default=None)
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--eta", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--interpolate", action="store_true",
                   help="write a strip of --num samples between the noises of seeds --seed and --seed+1")
    s.add_argument("--no-ema", action="store_true", help="use the online weights instead of the EMA")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--device", default=None,
                   help="torch device to run on, e.g. cuda, cuda:1, cpu (default: cuda when available, "
                   "else cpu; under `accelerate launch`, each process's own device)")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("eval", help="measure a run folder or a folder of generated files")
    s.add_argument("path", help="a run folder (samples, then measures) or a folder of files (needs --ref)")
    s.add_argument("--metric", action="append", default=None,
                   help="fid, kid, rfid, psnr, ssim, fvd, mmd-cd, cov-cd, 1nna-cd (repeat; default: by domain)")
    s.add_argument("--num", type=int, default=None, help="samples to generate / items to use (LDM default 1000)")
    s.add_argument("--ref", default=None, help="reference folder (default: the run's data)")
    s.add_argument("--i3d", default=None, help="local I3D weights for FVD")
    s.add_argument("--batch-size", type=int, default=50)
    s.add_argument("--resolution", type=int, default=None)
    s.add_argument("--sampler", default=None)
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--json", default=None, help="where to write the figures (default: in the run folder)")
    s.add_argument("--device", default=None,
                   help="torch device to run on, e.g. cuda, cuda:1, cpu (default: cuda when available, "
                   "else cpu; under `accelerate launch`, each process's own device)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("demo", help="synthetic data -> VAE -> LDM -> samples, in minutes on a CPU")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may follow options such as --no-progress
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except DDMIError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
