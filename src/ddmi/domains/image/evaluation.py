"""``ddmi eval`` of image run folders.

* ``fid``, ``kid``  (LDM runs): ``--num`` EMA samples rendered at ``--resolution`` (default: the
  training resolution; the scale injection follows it) against the training folder's images
  centre-cropped and resized to the same resolution (the official protocol).
* ``rfid``, ``psnr``, ``ssim`` (VAE or LDM runs): the test folder (else the training folder)
  encoded at the training resolution, decoded from the posterior **mean** at ``--resolution``,
  against the originals resized to that resolution. Images are quantised to uint8 first, exactly
  as files would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddmi.data.images import ImageFolderDataset, save_image
from ddmi.data.images import uint8_tensor
from ddmi.metrics.fid import features_from_batches, fid_from_features
from ddmi.metrics.frechet import kid
from ddmi.metrics.image_quality import psnr, ssim
from ddmi.metrics.image_sets import images_uint8, reference_features


def evaluate_run(run_dir: Path, cfg, stage: str, ae, generate, *, metrics, num, resolution, batch_size, ref,
                 seed: int, shard, log, **_) -> dict:
    """The figures of an image run (module docstring); ``generate(num) -> (batches, sampler,
    steps)`` draws this process's share of the samples."""
    res = resolution or ae.resolution
    eval_dir = run_dir / "eval"
    results: dict = {"run": str(run_dir), "resolution": res}
    extractor = None
    if {"fid", "kid", "rfid"} & set(metrics):
        from ddmi.metrics.inception import InceptionFeatures
        extractor = InceptionFeatures(batch_size=50, device=shard.device)

    if {"fid", "kid"} & set(metrics):
        num_gen = num or 1000
        batches, sampler, steps = generate(num_gen)
        out = eval_dir / f"samples-{sampler}{steps or ''}-{res}"
        feats = []   # features per batch: the images themselves are not kept (10k at 256^2 = 2 GB)
        with torch.inference_mode():
            for i, z in batches:
                imgs = uint8_tensor(ae.render(z, res))                  # on the device, as the extractor
                for j, img in enumerate(imgs.cpu()):
                    save_image(img.permute(1, 2, 0).numpy(), out / f"{i + j:05d}.png")
                feats.append((i, features_from_batches([imgs], extractor)))
        gen = np.concatenate(shard.gather_by_start(feats))
        if shard.is_main:
            ref_dir = ref or cfg.data.dir
            ref_feats = reference_features(cfg, ref_dir, res, None, seed, extractor, eval_dir, log)
            if "fid" in metrics:
                results["fid"] = fid_from_features(gen, ref_feats)
            if "kid" in metrics:
                results["kid"], results["kid_std"] = kid(gen, ref_feats, seed=seed)
            results.update(num_gen=num_gen, num_ref=len(ref_feats), sampler=sampler, steps=steps,
                           samples=str(out), ref=str(ref_dir))

    if shard.is_main and {"rfid", "psnr", "ssim"} & set(metrics):   # reconstructions: the main process
        folder = ref or cfg.data.test_dir or cfg.data.dir
        ds = ImageFolderDataset(folder, resolution=res, skip_bad=cfg.data.skip_bad)
        rec_feats, real_feats, psnrs, ssims = [], [], [], []
        batches = images_uint8(ds, num=num, resolution=res, seed=seed, batch_size=batch_size)
        with torch.inference_mode():
            for real, _ in tqdm(batches, desc="reconstructing", disable=None):
                real = real.to(shard.device)
                x = real.float() / 127.5 - 1.0
                rec = uint8_tensor(ae.render(ae.encode(x).mode(), res))
                recf = rec.float() / 127.5 - 1.0
                psnrs.append(psnr(recf, x))
                ssims.append(ssim(recf, x))
                if extractor is not None:
                    rec_feats.append(features_from_batches([rec], extractor))
                    real_feats.append(features_from_batches([real], extractor))
        if "psnr" in metrics:
            results["psnr"] = float(torch.cat(psnrs).mean())
        if "ssim" in metrics:
            results["ssim"] = float(torch.cat(ssims).mean())
        if "rfid" in metrics:
            results["rfid"] = fid_from_features(np.concatenate(rec_feats), np.concatenate(real_feats))
        results.update(num_recon=sum(len(p) for p in psnrs), recon_folder=str(folder))
    return results
