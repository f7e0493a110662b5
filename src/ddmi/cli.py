"""The ``ddmi`` command: synth, train, reconstruct, sample, eval, demo, info, import-official.

Errors the user can fix are printed as one line (``error: ...``) with exit status 2; pass
``--debug`` (before the command) to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ddmi.domains.base import Domain
from ddmi.errors import DDMIError

COMMANDS = {"info": "ddmi.commands.info", "synth": "ddmi.commands.synth", "train": "ddmi.commands.train",
            "reconstruct": "ddmi.commands.reconstruct", "sample": "ddmi.commands.sample",
            "eval": "ddmi.commands.evaluate", "demo": "ddmi.commands.demo",
            "import-official": "ddmi.commands.import_official"}


def _run(args) -> int:
    """Each verb lives in ``ddmi.commands.<verb>`` as ``run(args)``, imported only when used."""
    return importlib.import_module(COMMANDS[args.command]).run(args)


def domain_options(command: str) -> dict[str, dict]:
    """The union of the domains' options of ``command`` (:attr:`Domain.command_options`), each
    help text prefixed with the domains that read it."""
    from ddmi import domains
    merged: dict[str, dict] = {}
    for name in domains.names():
        domain = domains.get(name)
        label = getattr(domain, "synth_name", None) or name if command == "synth" else name
        for option, spec in domain.command_options.get(command, {}).items():
            if option in merged:
                merged[option]["help"] += f"; {label}: {spec['help']}"
            else:
                merged[option] = {**spec, "help": f"{label}: {spec['help']}"}
    return merged


def add_domain_options(parser: argparse.ArgumentParser, command: str) -> None:
    for option, spec in domain_options(command).items():
        parser.add_argument(f"--{option}", **({} if spec.get("action") == "store_true" else {"default": None}), **spec)


def build_parser() -> argparse.ArgumentParser:
    from ddmi import domains
    from ddmi.diffusion import SAMPLERS          # the samplers are listed once, there
    from ddmi.preset_files import preset_table
    samplers = list(SAMPLERS)
    synth_kinds = [getattr(domains.get(n), "synth_name", None) or n for n in domains.names()
                   if type(domains.get(n)).synthesize is not Domain.synthesize]
    p = argparse.ArgumentParser(prog="ddmi", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="show a preset's resolved config and parameter counts",
                       epilog="presets:\n" + preset_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("config", nargs="?", help="preset name or YAML path (see the list below)")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.add_argument("--list", action="store_true", help="list the presets with one-line descriptions")
    s.add_argument("--quiet", "-q", action="store_true", help="only the parameter counts")
    s.set_defaults(func=_run)

    s = sub.add_parser("synth", help="write a synthetic dataset")
    s.add_argument("kind", choices=synth_kinds, help="which domain's data")
    s.add_argument("out_dir", help="folder to write (OUT/train, OUT/test or val, per the domain's layout)")
    s.add_argument("--num", type=int, default=1000, help="training items to write (default: %(default)s)")
    s.add_argument("--resolution", type=int, default=64,
                   help="image / frame / view size in pixels (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the dataset (default: %(default)s)")
    s.add_argument("--test", type=int, default=0,
                   help="also write this many test items (video: val videos, default num // 8, at least 1)")
    add_domain_options(s, "synth")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic dataset in OUT_DIR")
    s.set_defaults(func=_run)

    s = sub.add_parser("train", help="train stage 1 (vae) or stage 2 (ldm); re-run to resume",
                       epilog="presets:\n" + preset_table() + "\n\nexample: ddmi train vae image-tiny "
                       "data.dir=data/shapes/train run_dir=runs/vae",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("stage", choices=["vae", "ldm"], help="vae: the D2C-VAE (stage 1); ldm: the latent diffusion model")
    s.add_argument("config", help="preset name (see below) or YAML path")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.dir=DIR run_dir=DIR train.steps=N "
                   "(ldm: vae=VAE_RUN_DIR); `ddmi info PRESET` shows every key")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    s.set_defaults(func=_run)

    s = sub.add_parser("reconstruct", help="encode images (point clouds for shapes, srn-cars .npz objects "
                       "for NeRF, video files or frame folders for video) and render them at any resolution "
                       "(meshes: grid resolution; videos: also any --frames)")
    s.add_argument("run_dir", help="a VAE or LDM run folder")
    s.add_argument("inputs", nargs="+", help="files to encode (images; .npy/.npz/.ply/.obj point clouds or meshes; "
                   "srn-cars .npz; videos or frame folders)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--resolution", type=int, default=None,
                   help="render size (meshes: grid resolution; default: the training resolution)")
    add_domain_options(s, "reconstruct")
    s.add_argument("--device", default=None,
                   help="torch device to run on, e.g. cuda, cuda:1, cpu (default: cuda when available, "
                   "else cpu)")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.set_defaults(func=_run)

    s = sub.add_parser("sample", help="generate samples from an LDM run")
    s.add_argument("run_dir", help="an LDM run folder (`ddmi train ldm` or `ddmi import-official`)")
    s.add_argument("--num", type=int, default=16, help="samples to generate (default: %(default)s)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--resolution", type=int, action="append", default=None,
                   help="render size, or mesh grid resolution for shapes (default 128); repeat for several")
    add_domain_options(s, "sample")
    s.add_argument("--sampler", default=None, metavar="SAMPLER",
                   help=f"{', '.join(samplers)} (default: the run's ldm.sampler)")
    s.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the run's ldm.sample_steps for its sampler)")
    s.add_argument("--eta", type=float, default=0.0,
                   help="DDIM stochasticity, 0 = deterministic (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0,
                   help="noise seed; sample i of a seed is always the same (default: %(default)s)")
    s.add_argument("--batch-size", type=int, default=16, help="latents sampled at once (default: %(default)s)")
    s.add_argument("--interpolate", action="store_true",
                   help="write a strip of --num samples between the noises of seeds --seed and --seed+1")
    s.add_argument("--no-ema", action="store_true", help="use the online weights instead of the EMA")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--device", default=None,
                   help="torch device to run on, e.g. cuda, cuda:1, cpu (default: cuda when available, "
                   "else cpu; under `accelerate launch`, each process's own device)")
    s.set_defaults(func=_run)

    s = sub.add_parser("eval", help="measure a run folder or a folder of generated files")
    s.add_argument("path", help="a run folder (samples, then measures) or a folder of files (needs --ref)")
    s.add_argument("--metric", action="append", default=None,
                   help="fid, kid, rfid, psnr, ssim, iou, fvd, rfvd, mmd-cd, cov-cd, 1nna-cd (repeat; default: "
                   "by domain and stage, see docs/metrics.md)")
    s.add_argument("--num", type=int, default=None, help="samples to generate / items to use (LDM default 1000)")
    s.add_argument("--ref", default=None, help="reference folder (default: the run's data)")
    s.add_argument("--i3d", default=None, help="local I3D weights file for FVD (docs/metrics.md says where "
                   "they come from; nothing is downloaded)")
    s.add_argument("--batch-size", type=int, default=50, help="items per batch (default: %(default)s)")
    s.add_argument("--resolution", type=int, default=None, help="generation / rendering size (default: by domain)")
    s.add_argument("--sampler", default=None, metavar="SAMPLER",
                   help=f"{', '.join(samplers)} (default: the run's ldm.sampler)")
    s.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
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
    s.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    s.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    s.set_defaults(func=_run)
    return p


def one_line(exc: BaseException) -> str:
    """The line printed for an expected failure: a ddmi error (also when a DataLoader worker
    re-raised it, with the worker's traceback in its message) or an OS error (a full disk, a
    missing file, no permission), with what to do."""
    import errno
    if isinstance(exc, OSError) and not isinstance(exc, DDMIError):
        where = f"{exc.filename}: " if exc.filename else ""
        what = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            return (f"{where}no space left on device; free some space and re-run the same command "
                    "(a training run resumes from its last complete checkpoint)")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{where}permission denied; choose a folder you can write to"
        return f"{where}{what}"
    text = str(exc).strip()
    if "DataLoader worker process" in text and "Original Traceback" in text:
        last = text.splitlines()[-1]             # "ddmi.errors.DataError: the message"
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return text.splitlines()[0] if text else type(exc).__name__


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
    except (DDMIError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
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
        try:
            dist.barrier()
        except RuntimeError:   # a peer that passed the barrier first may close its socket early:
            pass               # the work is done, so a teardown race does not fail the command
        finally:
            dist.destroy_process_group()


def run_main() -> int:
    """The process entry point (``ddmi`` and ``python -m ddmi``)."""
    try:
        return main()
    finally:
        close_distributed()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_main())
