"""``ddmi eval``: measure a run folder (it generates, then measures) or a folder of files.

Run folders (image domain):

* ``fid``, ``kid``  (LDM runs): ``--num`` EMA samples rendered at ``--resolution`` (default: the
  training resolution; the scale injection follows it) against the training folder's images
  centre-cropped and resized to the same resolution (the official protocol, spec section 9).
* ``rfid``, ``psnr``, ``ssim`` (VAE or LDM runs): the test folder (else the training folder)
  encoded at the training resolution, decoded from the posterior **mean** at ``--resolution``,
  against the originals resized to that resolution. Images are quantised to uint8 first, exactly
  as files would be.

Shape, video and NeRF run folders: see :func:`evaluate_shapes_run`,
:func:`ddmi.domains.video.outputs.evaluate_video_run` and :func:`ddmi.domains.nerf.outputs.evaluate_nerf_run`.

Any folder: ``--ref DIR`` is required; the metric defaults follow the files (images: FID + KID;
``.npy``/``.npz`` point clouds: MMD/COV/1-NNA with Chamfer).

The figures are printed as a table and written as JSON: ``RUN/eval/<name>.json`` for a run,
``--json FILE`` (or ``PATH/ddmi-eval.json``) for a folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddmi import checkpoint as ckpt
from ddmi.devices import Shard, resolve_device
from ddmi.domains.image.pixels import resize
from ddmi.metrics.fid import to_uint8
from ddmi.errors import ConfigError, DataError

RUN_METRICS = {"image": ("fid", "kid", "rfid", "psnr", "ssim"),
               "occupancy": ("mmd-cd", "cov-cd", "1nna-cd", "iou"),
               "video": ("fvd", "rfvd", "psnr", "ssim"),
               "nerf": ("fid", "kid", "psnr", "ssim")}
DEFAULT_RUN_METRICS = {("image", "ldm"): ("fid", "kid"), ("image", "vae"): ("rfid", "psnr", "ssim"),
                       ("occupancy", "ldm"): ("mmd-cd", "cov-cd", "1nna-cd"), ("occupancy", "vae"): ("iou",),
                       ("video", "ldm"): ("fvd",), ("video", "vae"): ("psnr", "ssim"),
                       ("nerf", "ldm"): ("fid", "kid"), ("nerf", "vae"): ("psnr", "ssim")}
GENERATION_METRICS = {"fid", "kid", "fvd", "mmd-cd", "cov-cd", "1nna-cd"}


def seeded_subset(n: int, num: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``num`` of ``n`` items drawn with ``seed`` (all of them when ``num`` is
    None or at least ``n``)."""
    if num is None or num >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, num, replace=False))


def _images_uint8(dataset, *, num: int | None, resolution: int, seed: int, batch_size: int):
    """uint8 batches (B, 3, R, R) of a seeded subset of an image dataset, resized to R."""
    n = len(dataset)
    if n == 0:
        raise DataError(f"no images in {dataset.root}")
    idx = seeded_subset(n, num, seed)
    for start in range(0, len(idx), batch_size):
        x = torch.stack([dataset[int(i)] for i in idx[start:start + batch_size]])
        yield to_uint8(resize(x, resolution)), idx[start:start + batch_size]


def _reference_features(cfg, folder: str, resolution: int, num, seed, extractor, cache_dir: Path, log):
    """Inception features of ``folder``'s images at ``resolution``; cached in the run folder."""
    from ddmi.data.images import ImageFolderDataset
    from ddmi.metrics.fid import features_from_batches
    ds = ImageFolderDataset(folder, resolution=resolution, skip_bad=cfg.data.skip_bad)
    sig = f"{Path(folder).resolve()}|{len(ds)}|{resolution}|{num}|{seed}"
    key = hashlib.sha256(sig.encode()).hexdigest()[:16]  # the file also stores the signature
    path = cache_dir / f"ref-features-{resolution}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            if str(f["signature"]) == sig:
                return f["features"]
    log(f"computing reference features of {folder} at {resolution}x{resolution}")
    feats = features_from_batches((b for b, _ in _images_uint8(ds, num=num, resolution=resolution, seed=seed,
                                                                batch_size=50)), extractor)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=feats, signature=np.array(sig))
    tmp.replace(path)
    return feats


def generate_batches(run_dir: Path, ae, cfg, *, num: int, sampler: str | None, steps: int | None,
                     batch_size: int, seed: int, shard=None):
    """This process's share of ``num`` latents sampled with the run's EMA denoiser (the seeds of
    ``ddmi sample --seed``), on the autoencoder's device: ``(batches, sampler, steps)``, where
    ``batches`` yields ``(start, z)`` one batch at a time (every batch without a ``shard``, else
    batches ``rank, rank + W, ...``; see :class:`ddmi.devices.Shard`)."""
    from ddmi.devices import model_device
    from ddmi.ldm import load_diffusion
    from ddmi.stage2 import latent_batches, noise_for, resolve_sampler
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
    """The figures of a run folder (module docstring), computed on ``device`` (default: ``cuda``
    when available, else ``cpu``). Under ``accelerate launch`` (or with a ``shard``) the samples
    of the generation metrics are drawn, rendered and featurised in shares by every process, and
    the main process computes the figures: only its result is complete."""
    from ddmi.api import load_autoencoder
    from ddmi.data.images import ImageFolderDataset, save_image
    from ddmi.metrics.fid import features_from_batches, fid_from_features
    from ddmi.metrics.frechet import kid
    from ddmi.metrics.image_quality import psnr, ssim

    info = ckpt.read_run_info(run_dir)
    cfg = ckpt.load_run_config(run_dir)
    if cfg.domain not in RUN_METRICS:
        raise ConfigError(f"`ddmi eval` of {cfg.domain} run folders is not available yet")
    metrics = list(metrics or DEFAULT_RUN_METRICS[(cfg.domain, info["stage"])])
    allowed = RUN_METRICS[cfg.domain]
    unknown = [m for m in metrics if m not in allowed]
    if unknown:
        raise ConfigError(f"metric {unknown[0]!r} does not apply to a {cfg.domain} run folder; "
                          f"choose from {', '.join(allowed)}")
    if info["stage"] != "ldm" and GENERATION_METRICS & set(metrics):
        raise ConfigError(f"{run_dir} is a VAE run: {', '.join(sorted(GENERATION_METRICS & set(metrics)))} "
                          "need an LDM run (samples)")
    shard = shard or Shard(device)
    kw = dict(metrics=metrics, num=num, sampler=sampler, steps=steps, batch_size=batch_size, ref=ref, seed=seed,
              log=log, shard=shard)
    if cfg.domain == "occupancy":
        return evaluate_shapes_run(run_dir, cfg, resolution=resolution, **kw)
    if cfg.domain == "video":
        from ddmi.domains.video.outputs import evaluate_video_run
        return evaluate_video_run(run_dir, cfg, i3d=i3d, **kw)
    if cfg.domain == "nerf":
        from ddmi.domains.nerf.outputs import evaluate_nerf_run
        return evaluate_nerf_run(run_dir, cfg, resolution=resolution, **kw)
    ae = load_autoencoder(run_dir, device=shard.device)
    res = resolution or ae.resolution
    eval_dir = run_dir / "eval"
    results: dict = {"run": str(run_dir), "resolution": res}
    extractor = None
    if {"fid", "kid", "rfid"} & set(metrics):
        from ddmi.metrics.inception import InceptionFeatures
        extractor = InceptionFeatures(batch_size=50, device=shard.device)

    if {"fid", "kid"} & set(metrics):
        num_gen = num or 1000
        batches, sampler, steps = generate_batches(run_dir, ae, cfg, num=num_gen, sampler=sampler, steps=steps,
                                                   batch_size=batch_size, seed=seed, shard=shard)
        out = eval_dir / f"samples-{sampler}{steps or ''}-{res}"
        feats = []   # features per batch: the images themselves are not kept (10k at 256^2 = 2 GB)
        with torch.inference_mode():
            for i, z in batches:
                imgs = to_uint8(ae.render(z, res))                  # on the device, as the extractor
                for j, img in enumerate(imgs.cpu()):
                    save_image(img.permute(1, 2, 0).numpy(), out / f"{i + j:05d}.png")
                feats.append((i, features_from_batches([imgs], extractor)))
        gen = np.concatenate(shard.gather_by_start(feats))
        if shard.is_main:
            ref_dir = ref or cfg.data.dir
            ref_feats = _reference_features(cfg, ref_dir, res, None, seed, extractor, eval_dir, log)
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
        batches = _images_uint8(ds, num=num, resolution=res, seed=seed, batch_size=batch_size)
        with torch.inference_mode():
            for real, _ in tqdm(batches, desc="reconstructing", disable=None):
                real = real.to(shard.device)
                x = real.float() / 127.5 - 1.0
                rec = to_uint8(ae.render(ae.encode(x).mode(), res))
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


def evaluate_shapes_run(run_dir: Path, cfg, *, metrics, num, resolution, sampler, steps, batch_size, ref,
                        seed: int = 0, log=print, device=None, shard: Shard | None = None) -> dict:
    """Shape runs. ``mmd-cd``/``cov-cd``/``1nna-cd`` (LDM): ``--num`` (default 100) generated meshes
    at ``--resolution`` (default 128), 2048 surface samples each, against 2048-point surface samples
    of the reference shapes (the test split, else the training split), unit-sphere normalised
    (spec 7). ``iou`` (VAE or LDM): reconstruction IoU of the reference shapes' occupancies from
    their encoded point clouds (posterior mean), at the occupancy threshold.

    On ``device`` / ``shard`` as :func:`evaluate_run`: the meshes of the generated samples are
    extracted in shares, the rest runs on the main process."""
    from ddmi.api import load_autoencoder
    from ddmi.data.shapes import ShapesDataset, find_models
    from ddmi.domains.occupancy.meshes import extract_meshes, mesh_point_clouds, shape_metrics
    from ddmi.domains.occupancy.model import occupancy_iou

    shard = shard or Shard(device)
    ae = load_autoencoder(run_dir, device=shard.device)
    sc = cfg.shapes
    root = ref or cfg.data.dir
    classes = None if sc.classes is None else list(sc.classes)
    split = "test"
    try:
        find_models(root, "test", classes)
    except DataError:
        split = "train"
    ds = ShapesDataset(root, split=split, classes=classes, num_points=sc.num_points, point_noise=sc.point_noise,
                       num_queries=1, seed=seed)
    n_ref = len(ds) if num is None else min(num, len(ds))
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(ds), n_ref, replace=False))
    results: dict = {"run": str(run_dir), "reference": f"{root} ({split}, {n_ref} shapes)"}

    dev = shard.device
    if shard.is_main and "iou" in metrics:
        ious = []
        with torch.inference_mode():
            for i in picked:
                item = ds[int(i)][None].to(dev)
                z = ae.encode(item[:, :sc.num_points, :3]).mode()
                points, occ = ds.occupancy(int(i))
                logits = ae.decode(z).query(ae.normalize(torch.from_numpy(points).float().to(dev)))[..., 0]
                ious.append(float(occupancy_iou(logits, torch.from_numpy(occ).float()[None].to(dev),
                                                ae.threshold_logit)))
        results["iou"] = float(np.mean(ious))

    if GENERATION_METRICS & set(metrics):
        res = resolution or 128
        num_gen = num or 100
        batches, sampler, steps = generate_batches(run_dir, ae, cfg, num=num_gen, sampler=sampler, steps=steps,
                                                   batch_size=batch_size, seed=seed, shard=shard)
        mine = []
        with torch.inference_mode():
            for i, z in batches:
                mine.append((i, extract_meshes(ae.decode(z), res, threshold=ae.threshold,
                                               half_extent=ae.half_extent)))
        meshes = [m for batch in shard.gather_by_start(mine) for m in batch]
        if not shard.is_main:
            return results
        gen = mesh_point_clouds(meshes, 2048, seed=seed)
        ref_clouds = torch.from_numpy(np.stack([ds.surface(int(i))[rng.integers(0, len(ds.surface(int(i))), 2048)]
                                                for i in picked])).float()
        pc = shape_metrics(gen, ref_clouds, device=dev)
        for key, name in (("mmd", "mmd-cd"), ("cov", "cov-cd"), ("nna", "1nna-cd")):
            if name in metrics:
                results[name] = pc[key]
        results.update(num_gen=num_gen, empty_meshes=sum(len(f) == 0 for _, f in meshes), resolution=res,
                       sampler=sampler, steps=steps)
    return results


def _folder_kind(folder: Path) -> str:
    from ddmi.data.images import list_images
    if any(p.suffix.lower() in (".npy", ".npz") for p in folder.rglob("*")):
        return "points"
    list_images(folder)  # raises a clear DataError when there is nothing to measure
    return "images"


def _print_table(results: dict, log) -> None:
    width = max(len(k) for k in results)
    for k, v in results.items():
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
        name = "-".join(sorted({m for ms in RUN_METRICS.values() for m in ms if m in results})) or "eval"
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
        results.update(evaluate_folders(path, args.ref, metrics=metrics, num=args.num,
                                        batch_size=args.batch_size, i3d=args.i3d, device=shard.device))
        json_path = Path(args.json) if args.json else path / "ddmi-eval.json"
    else:
        raise DataError(f"{path} is neither a run folder nor a folder of files")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    _print_table(results, log)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    log(f"wrote {json_path}")
    return 0
