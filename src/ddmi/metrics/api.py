"""One entry point for ``ddmi eval``: metrics between a folder of outputs and a reference folder."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ddmi.data.npz import load_points
from ddmi.errors import ConfigError, DataError

__all__ = ["available_metrics", "evaluate_folders"]

_METRICS = {
    "fid": "Frechet Inception distance, image folders (needs: pip install 'ddmi[fid]')",
    "kid": "kernel Inception distance, mean (+ kid_std), image folders (needs: pip install 'ddmi[fid]')",
    "psnr": "PSNR in dB, images paired by relative path (reconstruction vs original)",
    "ssim": "SSIM, images paired by relative path (reconstruction vs original)",
    "fvd": "Frechet video distance, folders of 16-frame clips (needs: --i3d i3d_pretrained_400.pt)",
    "mmd-cd": "minimum matching distance (Chamfer), point-cloud folders of .npy/.npz (P, 3)",
    "cov-cd": "coverage (Chamfer), point-cloud folders of .npy/.npz (P, 3)",
    "1nna-cd": "1-nearest-neighbour accuracy (Chamfer), point-cloud folders of .npy/.npz (P, 3)",
}
_POINT_EXTENSIONS = (".npy", ".npz")


def available_metrics() -> dict[str, str]:
    """Metric names accepted by :func:`evaluate_folders`, with a one-line description each."""
    return dict(_METRICS)


def _paired_images(gen_dir: Path, ref_dir: Path, num: int | None):
    from ddmi.metrics.fid import image_files

    def by_stem(root):
        return {p.relative_to(root).with_suffix("").as_posix(): p for p in image_files(root)}

    gen, ref = by_stem(gen_dir), by_stem(ref_dir)
    common = sorted(gen.keys() & ref.keys())
    if not common:
        raise DataError(f"no image in {gen_dir} has a counterpart with the same relative name in {ref_dir}")
    if num is not None:
        common = common[:num]
    return [(gen[k], ref[k]) for k in common]


def _psnr_ssim(gen_dir, ref_dir, num, want_psnr, want_ssim):
    from ddmi.metrics.fid import image_tensor
    from ddmi.metrics.image_quality import psnr, ssim

    psnrs, ssims = [], []
    for g, r in _paired_images(gen_dir, ref_dir, num):
        a, b = image_tensor(g), image_tensor(r)
        if a.shape != b.shape:
            raise DataError(f"{g} is {tuple(a.shape[1:])} but its reference {r} is {tuple(b.shape[1:])}")
        a = a[None].float() / 127.5 - 1
        b = b[None].float() / 127.5 - 1
        if want_psnr:
            psnrs.append(float(psnr(a, b)))
        if want_ssim:
            ssims.append(float(ssim(a, b)))
    out = {}
    if want_psnr:
        out["psnr"] = float(np.mean(psnrs))  # mean of per-image PSNR (inf if any pair is identical)
    if want_ssim:
        out["ssim"] = float(np.mean(ssims))
    return out


def unavailable_metrics(metrics: Iterable[str], *, i3d=None) -> dict[str, str]:
    """The metrics of ``metrics`` that cannot be computed here, with the reason (a missing
    package or weights file), checked without loading any network."""
    from ddmi.errors import MissingDependencyError
    missing: dict[str, str] = {}
    names = set(metrics)
    if {"fid", "kid", "rfid"} & names:
        from ddmi.metrics.inception import inception_weights_path
        try:
            inception_weights_path()
        except MissingDependencyError as exc:
            missing.update({m: str(exc) for m in ("fid", "kid", "rfid") if m in names})
    if {"fvd", "rfvd"} & names and (i3d is None or not Path(i3d).expanduser().is_file()):
        from ddmi.metrics.fvd import _I3D_HINT
        reason = _I3D_HINT if i3d is None else f"{_I3D_HINT} (no file at {i3d})"
        missing.update({m: reason for m in ("fvd", "rfvd") if m in names})
    return missing


FEW_FOR_FID = 2048       # Inception's feature size: fewer samples give a rank-deficient covariance


def load_point_clouds(folder: str | os.PathLike, *, num: int | None = None, seed: int = 0) -> torch.Tensor:
    """Point clouds (N, P, 3) from ``.npy`` files or ``.npz`` files (key ``points``) in a folder."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"point-cloud folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _POINT_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"no point clouds (.npy, .npz) found in folder {root}")
    if num is not None:
        if num > len(files):
            raise DataError(f"folder {root} has {len(files)} point clouds, fewer than the {num} requested")
        keep = np.sort(np.random.default_rng(seed).choice(len(files), num, replace=False))
        files = [files[i] for i in keep]
    clouds = []
    for f in files:
        pts = np.asarray(load_points(f), dtype=np.float32)     # bounded; a DataError naming f
        if pts.ndim != 2 or pts.shape[1] != 3 or (clouds and pts.shape != clouds[0].shape):
            raise DataError(f"point cloud {f} has shape {pts.shape}; expected (P, 3) with the same P in every file")
        clouds.append(pts)
    return torch.from_numpy(np.stack(clouds))


def evaluate_folders(
    gen_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    *,
    metrics: Iterable[str] = ("fid", "kid"),
    num: int | None = None,
    batch_size: int = 50,
    progress: bool = True,
    seed: int = 0,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    i3d: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Compute the named metrics between ``gen_dir`` and ``ref_dir``; returns {name: value}.

    ``num`` caps the number of items used from each folder (a seeded random subset for
    FID/KID/FVD/point clouds, the first ``num`` pairs for PSNR/SSIM). Besides the metric values,
    the result holds ``num_gen`` / ``num_ref`` for the distribution metrics and ``kid_std``.
    Reference-folder Inception features are cached (see :func:`ddmi.metrics.fid.folder_features`).
    The networks and the images they measure live on ``device`` (default: ``cuda`` when
    available, else ``cpu``).
    """
    from ddmi.devices import resolve_device
    device = resolve_device(device)
    names = [m.lower() for m in ([metrics] if isinstance(metrics, str) else metrics)]
    unknown = [m for m in names if m not in _METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; choose from {', '.join(_METRICS)}")
    if not names:
        raise ConfigError(f"no metric given; choose from {', '.join(_METRICS)}")
    gen_dir, ref_dir = Path(gen_dir).expanduser(), Path(ref_dir).expanduser()
    results: dict[str, float] = {}

    if {"fid", "kid"} & set(names):
        from ddmi.metrics.fid import fid_from_features, folder_features
        from ddmi.metrics.frechet import kid
        from ddmi.metrics.inception import InceptionFeatures

        extractor = InceptionFeatures(batch_size=batch_size, device=device)
        kw = dict(num=num, seed=seed, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        gen = folder_features(gen_dir, extractor, cache=False, **kw)
        ref = folder_features(ref_dir, extractor, cache=cache, **kw)
        if "fid" in names:
            results["fid"] = fid_from_features(gen, ref)
        if "kid" in names:
            results["kid"], results["kid_std"] = kid(gen, ref, seed=seed)
        results["num_gen"], results["num_ref"] = len(gen), len(ref)
        if "fid" in names and min(len(gen), len(ref)) < FEW_FOR_FID:
            warnings.warn(f"FID of {len(gen)} generated and {len(ref)} reference images: below {FEW_FOR_FID} it is "
                          "biased upward and not comparable to published figures (the paper uses 50k samples); "
                          "KID is less biased on small sets", RuntimeWarning, stacklevel=2)

    if {"psnr", "ssim"} & set(names):
        results.update(_psnr_ssim(gen_dir, ref_dir, num, "psnr" in names, "ssim" in names))

    if "fvd" in names:
        from ddmi.metrics.fvd import folder_video_embeddings, fvd_from_features, load_i3d

        net = load_i3d(i3d, device=device)
        kw = dict(num=num, seed=seed, progress=progress)
        gen = folder_video_embeddings(gen_dir, net, **kw)
        ref = folder_video_embeddings(ref_dir, net, **kw)
        results["fvd"] = fvd_from_features(gen, ref)
        results["num_gen_clips"], results["num_ref_clips"] = len(gen), len(ref)

    if {"mmd-cd", "cov-cd", "1nna-cd"} & set(names):
        from ddmi.metrics.pointcloud import mmd_cov_1nna, normalize_to_unit_sphere

        sample = normalize_to_unit_sphere(load_point_clouds(gen_dir, num=num, seed=seed))
        ref = normalize_to_unit_sphere(load_point_clouds(ref_dir, num=num, seed=seed))
        pc = mmd_cov_1nna(sample, ref, device=device)
        for key, name in (("mmd", "mmd-cd"), ("cov", "cov-cd"), ("nna", "1nna-cd")):
            if name in names:
                results[name] = pc[key]
        results["num_gen_clouds"], results["num_ref_clouds"] = len(sample), len(ref)

    return results
