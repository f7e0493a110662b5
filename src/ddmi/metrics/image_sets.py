"""Image sets for evaluation: seeded subsets, uint8 batches, cached reference features."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ddmi.data.images import resize, uint8_tensor
from ddmi.data.npz import load_npz
from ddmi.errors import DataError
from ddmi.files import atomic_write


def seeded_subset(n: int, num: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``num`` of ``n`` items drawn with ``seed`` (all of them when ``num`` is
    None or at least ``n``)."""
    if num is None or num >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, num, replace=False))


def images_uint8(dataset, *, num: int | None, resolution: int, seed: int, batch_size: int):
    """uint8 batches (B, 3, R, R) of a seeded subset of an image dataset, resized to R."""
    n = len(dataset)
    if n == 0:
        raise DataError(f"no images in {dataset.root}")
    idx = seeded_subset(n, num, seed)
    for start in range(0, len(idx), batch_size):
        x = torch.stack([dataset[int(i)] for i in idx[start:start + batch_size]])
        yield uint8_tensor(resize(x, resolution)), idx[start:start + batch_size]


def reference_features(cfg, folder: str, resolution: int, num, seed, extractor, cache_dir: Path, log):
    """Inception features of ``folder``'s images at ``resolution``; cached in the run folder."""
    from ddmi.data.images import ImageFolderDataset
    from ddmi.metrics.fid import features_from_batches
    ds = ImageFolderDataset(folder, resolution=resolution, skip_bad=cfg.data.skip_bad)
    sig = f"{Path(folder).resolve()}|{len(ds)}|{resolution}|{num}|{seed}"
    key = hashlib.sha256(sig.encode()).hexdigest()[:16]  # the file also stores the signature
    path = cache_dir / f"ref-features-{resolution}-{key}.npz"
    if path.is_file():
        try:
            cached = load_npz(path, ("features", "signature"))
            if str(cached["signature"]) == sig:
                return cached["features"]
        except DataError as exc:     # a damaged cache (interrupted, disk full) is recomputed
            log(f"ignoring the feature cache {path.name}: {exc}")
    log(f"computing reference features of {folder} at {resolution}x{resolution}")
    feats = features_from_batches((b for b, _ in images_uint8(ds, num=num, resolution=resolution, seed=seed,
                                                                batch_size=50)), extractor)
    atomic_write(path, lambda f: np.savez(f, features=feats, signature=np.array(sig)))
    return feats
