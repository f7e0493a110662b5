"""``ddmi demo``: the whole pipeline on built-in synthetic data, in minutes on a laptop CPU.

synthetic 32x32 images (``ddmi synth image --style simple``: one flat shape on a flat background,
data a tiny model learns in minutes) -> D2C-VAE (stage 1) -> latent diffusion (stage 2) -> samples rendered
at 32x32 and 128x128 (the same latents, 4x the training resolution) + reconstructions of
held-out images at both sizes. Everything goes through the same code as the ``ddmi`` commands
(data on disk, run folders, checkpoints), so re-running the demo resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from ddmi.cli import main
from ddmi.commands.options import log, torch_threads
from ddmi.errors import DDMIError

#: Steps, LDM batch size and number of training images for the full and the quick demo. The
#: model is the ``image-demo`` preset (image-tiny at half width); the steps are sized so that the
#: demo, install included, finishes in under 10 minutes on a 2-core AVX2-only CPU (about 3.5
#: minutes on a 2-core AVX-512 one; docs/benchmarks.md, "Demo budget").
PRESET = "image-demo"
FULL = {"vae_steps": 600, "ldm_steps": 800, "ldm_batch": 32, "images": 2000}
QUICK = {"vae_steps": 6, "ldm_steps": 6, "ldm_batch": 8, "images": 64}


def _run(argv: list[str]) -> None:
    status = main(argv)
    if status != 0:
        raise DDMIError(f"demo step `ddmi {' '.join(argv)}` failed (exit status {status})")


def run_demo(out: Path, *, quick: bool = False, log=print) -> int:
    plan = QUICK if quick else FULL
    started = time.monotonic()
    out = Path(out).resolve()  # run folders record absolute data paths: usable from anywhere
    data = out / "data"
    vae, ldm = out / "runs" / "vae", out / "runs" / "ldm"
    progress = [] if not quick else ["--no-progress"]

    if not (data / "train").is_dir():
        log(f"[1/5] writing {plan['images']} synthetic 32x32 training images (+64 test; one shape each) to {data}")
        _run(["synth", "image", str(data), "--num", str(plan["images"]), "--resolution", "32",
              "--test", "64", "--seed", "0", "--style", "simple"])
    else:
        log(f"[1/5] reusing the synthetic images in {data}")

    log(f"[2/5] training the D2C-VAE for {plan['vae_steps']} steps -> {vae}")
    _run(["train", "vae", PRESET, f"data.dir={data / 'train'}", f"data.test_dir={data / 'test'}",
          f"run_dir={vae}", f"train.steps={plan['vae_steps']}", *progress])

    log(f"[3/5] training the latent diffusion model for {plan['ldm_steps']} steps -> {ldm}")
    _run(["train", "ldm", PRESET, f"vae={vae}", f"run_dir={ldm}",
          f"train.steps={plan['ldm_steps']}", f"train.batch_size={plan['ldm_batch']}", *progress])

    log("[4/5] sampling 64 images, rendered at 32x32 and 128x128 from the same latents")
    samples = out / "samples"
    _run(["sample", str(ldm), "--num", "64", "--out", str(samples), "--resolution", "32",
          "--resolution", "128", "--overwrite"])
    _run(["sample", str(ldm), "--num", "8", "--out", str(samples), "--resolution", "64",
          "--interpolate", "--overwrite"])

    log("[5/5] reconstructing 8 held-out images at 32x32 and 128x128")
    test_images = sorted((data / "test").iterdir())[:8]
    for r in (32, 128):
        _run(["reconstruct", str(vae), *map(str, test_images), "--out", str(out / f"reconstructions_{r}"),
              "--resolution", str(r), "--overwrite"])

    log("\nlook at these:")
    for path in (samples / "grid_32.png", samples / "grid_128.png", samples / "interpolation_64.png",
                 out / "reconstructions_32" / "reconstructions.png",
                 out / "reconstructions_128" / "reconstructions.png"):
        log(f"  {path}")
    log(f"training images: {data / 'train'}; run folders: {vae}, {ldm}")
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    log(f"the demo took {minutes} min {seconds} s")
    return 0


def run(args) -> int:
    torch_threads()
    return run_demo(Path(args.out), quick=args.quick, log=log)
