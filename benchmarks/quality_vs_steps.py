"""Sample quality versus sampler steps for a trained LDM run (FID against its training images).

    python -m benchmarks.quality_vs_steps RUN_DIR [--num 1000] [--plan ddim:50,dpmpp2m:5,...]

Every sampler starts from the same noises (seeded per sample), so the rows differ only by the
solver. Prints a markdown table: sampler, steps (= network evaluations, DPM-Solver++(2M) and DDIM
use one per step), FID, KID, and the sampling time per image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

DEFAULT_PLAN = "ddpm:1000,ddim:50,ddim:20,ddim:10,dpmpp2m:20,dpmpp2m:10,dpmpp2m:5"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--plan", default=DEFAULT_PLAN)
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args(argv)

    from ddmi import checkpoint as ckpt
    from ddmi.data.images import uint8_tensor
    from ddmi.generate import generate_latents, noise_for
    from ddmi.metrics.fid import features_from_batches, fid_from_features
    from ddmi.metrics.frechet import kid
    from ddmi.metrics.image_sets import reference_features
    from ddmi.metrics.inception import InceptionFeatures
    from ddmi.runs import load_autoencoder, load_diffusion

    torch.set_num_threads(2)
    run = Path(args.run_dir)
    cfg = ckpt.load_run_config(run)
    ae = load_autoencoder(run)
    diffusion = load_diffusion(run, ae.latent_shape, ema=True)
    extractor = InceptionFeatures(batch_size=50)
    ref = reference_features(cfg, cfg.data.dir, ae.resolution, None, 0, extractor, run / "eval", print)
    noises = torch.stack([noise_for(0, i, ae.latent_shape) for i in range(args.num)])
    print(f"run {run}, {args.num} samples per row, reference: {len(ref)} training images at "
          f"{ae.resolution}x{ae.resolution}\n")
    print("| sampler | steps | FID | KID x 1e3 | ms per image (sampling) |")
    print("|---|---|---|---|---|")
    for item in args.plan.split(","):
        sampler, steps = item.split(":")
        steps = int(steps)
        with torch.inference_mode():
            t0 = time.perf_counter()
            z = generate_latents(diffusion, ae.latent_shape, noises, sampler=sampler, steps=steps,
                                 batch_size=args.batch_size, progress=False)
            dt = time.perf_counter() - t0
            imgs = [uint8_tensor(ae.render(z[i:i + args.batch_size])) for i in range(0, len(z), args.batch_size)]
        feats = features_from_batches(imgs, extractor)
        k, _ = kid(feats, ref)
        print(f"| {sampler} | {steps} | {fid_from_features(feats, ref):.2f} | {1e3 * k:.2f} | "
              f"{1e3 * dt / args.num:.1f} |", flush=True)


if __name__ == "__main__":
    main()
