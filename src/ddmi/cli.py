"""The ``ddmi`` command: synth, train, reconstruct, sample, eval, demo, info, import-official.

Errors the user can fix are printed as one line (``error: ...``) with exit status 2; pass
``--debug`` (before the command) to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ddmi.errors import DDMIError

COMMANDS = {"info": "ddmi.commands.info", "synth": "ddmi.commands.synth", "train": "ddmi.commands.train",
            "reconstruct": "ddmi.commands.reconstruct", "sample": "ddmi.commands.sample",
            "eval": "ddmi.commands.evaluate", "demo": "ddmi.commands.demo",
            "import-official": "ddmi.commands.import_official"}


def _run(args) -> int:
    """Each verb lives in ``ddmi.commands.<verb>`` as ``run(args)``; it is imported only when
    used, so ``ddmi --help`` does not load torch."""
    return importlib.import_module(COMMANDS[args.command]).run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddmi", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="show a preset's resolved config and parameter counts")
    s.add_argument("config", nargs="?", help="preset name or YAML path")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.add_argument("--list", action="store_true", help="list the presets")
    s.add_argument("--quiet", "-q", action="store_true", help="only the parameter counts")
    s.set_defaults(func=_run)

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
    s.set_defaults(func=_run)

    s = sub.add_parser("train", help="train stage 1 (vae) or stage 2 (ldm); re-run to resume")
    s.add_argument("stage", choices=["vae", "ldm"])
    s.add_argument("config", help="preset name or YAML path")
    s.add_argument("overrides", nargs="*", help="key=value overrides (ldm: vae=VAE_RUN_DIR)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_run)

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
    s.set_defaults(func=_run)

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
    s.set_defaults(func=_run)

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
    s.set_defaults(func=_run)

    s = sub.add_parser("import-official", help="turn an official DDMI checkpoint (model-*.pt, ldm-*.pt) into a "
                       "ddmi run folder (docs/official-checkpoints.md); the file's code is never run")
    s.add_argument("checkpoint", help="the official stage-1 (model-*.pt) or stage-2 (ldm-*.pt) file")
    s.add_argument("overrides", nargs="*",
                   help="key=value settings of the run applied to the preset (e.g. data.dir=FOLDER, so "
                   "that re-running `ddmi train` on the folder fine-tunes it)")
    s.add_argument("--preset", required=True,
                   help="ddmi preset of the same domain and architecture (e.g. afhq, celebahq, shapenet, "
                   "srn_cars, skytimelapse; `ddmi info --list`), or a YAML path")
    s.add_argument("--out", required=True, help="the run folder to write (must not exist)")
    s.add_argument("--official-config", default=None, metavar="YAML",
                   help="the official YAML the checkpoint was trained with (default: the file's own 'args' "
                   "where it has them): settings the tensor shapes do not tell, such as attention heads")
    s.add_argument("--use-file-sizes", action="store_true",
                   help="where the file's architecture sizes differ from the preset's, take the file's "
                   "(default: stop with the list of differing sizes)")
    s.add_argument("--allow-mismatch", action="store_true",
                   help="import even when official keys have no place in ddmi, ddmi keys stay unfilled or "
                   "shapes differ (they are listed; what does not fit keeps ddmi's fresh initialisation)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an earlier import in --out (never any other folder)")
    s.set_defaults(func=_run)

    s = sub.add_parser("demo", help="synthetic data -> VAE -> LDM -> samples, in minutes on a CPU")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    s.set_defaults(func=_run)
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


def close_distributed() -> None:
    """Under ``accelerate launch``: wait for every process, then tear the process group down
    before the interpreter exits (left alive, gloo's threads can abort a finished process with
    "terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_main() -> int:
    """The process entry point (``ddmi`` and ``python -m ddmi``)."""
    try:
        return main()
    finally:
        close_distributed()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_main())
