"""FID / KID between image folders or in-memory image batches.

An *extractor* is any callable mapping uint8 (B, 3, H, W) tensors to an (B, D) feature array
(normally :class:`ddmi.metrics.inception.InceptionFeatures`). Features of a folder can be cached
on disk when the extractor has a ``cache_key`` attribute: the cache file name is a hash of the
extractor key, the folder's resolved path, every image's relative path, size and mtime, and the
subset (``num``, ``seed``), so adding, removing or touching any image recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ddmi.data.images import IMAGE_EXTENSIONS, list_images, load_image
from ddmi.data.npz import load_npz
from ddmi.errors import DataError
from ddmi.files import atomic_write
from ddmi.metrics.frechet import frechet_distance_of_features, kid

__all__ = [
    "IMAGE_EXTENSIONS",
    "default_cache_dir",
    "features_from_batches",
    "fid_from_features",
    "fid_from_folders",
    "folder_features",
    "kid_from_folders",
    "image_files",
    "image_tensor",
]

_CACHE_FORMAT = 2  # 2: images decoded by the training loader (EXIF, alpha on white)

Extractor = Callable[[torch.Tensor], np.ndarray]


def default_cache_dir() -> Path:
    """``$DDMI_CACHE_DIR/fid`` if set, else ``$XDG_CACHE_HOME/ddmi/fid``, else ``~/.cache/ddmi/fid``."""
    if os.environ.get("DDMI_CACHE_DIR"):
        return Path(os.environ["DDMI_CACHE_DIR"]).expanduser() / "fid"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ddmi" / "fid"


def image_files(folder: str | os.PathLike, *, num: int | None = None, seed: int = 0) -> list[Path]:
    """The image files of ``folder`` a metric uses: found and ordered exactly as training finds
    them (:func:`ddmi.data.images.list_images`: recursive, sorted by relative path, hidden files
    skipped), or, with ``num``, a seeded random subset of ``num`` of them (in sorted order), so
    that a class-sorted folder (AFHQ: cats, then dogs) is not truncated to one class."""
    root = Path(folder).expanduser()
    files = list_images(root)
    if num is not None:
        if num < 1:
            raise ValueError(f"num must be positive, got {num}")
        if num > len(files):
            raise DataError(f"folder {root} has {len(files)} images, fewer than the {num} requested")
        if num < len(files):
            keep = np.sort(np.random.default_rng(seed).choice(len(files), num, replace=False))
            files = [files[i] for i in keep]
    return files


def image_tensor(path: str | os.PathLike) -> torch.Tensor:
    """An image file as RGB uint8 ``(3, H, W)``, decoded exactly as for training
    (:func:`ddmi.data.images.load_image`); DataError naming the file if unreadable."""
    return torch.from_numpy(load_image(path)).permute(2, 0, 1)


def _extract_mixed_sizes(images: list[torch.Tensor], extractor: Extractor) -> np.ndarray:
    """Run the extractor on a list of (3, H, W) images, stacking consecutive same-size runs."""
    out, start = [], 0
    while start < len(images):
        end = start + 1
        while end < len(images) and images[end].shape == images[start].shape:
            end += 1
        out.append(np.asarray(extractor(torch.stack(images[start:end]))))
        start = end
    return np.concatenate(out, axis=0)


def _cache_path(files: list[Path], root: Path, extractor: Extractor, cache_dir: Path, num, seed) -> Path:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"format": _CACHE_FORMAT, "extractor": extractor.cache_key, "root": str(root.resolve()),
             "num": num, "seed": seed}
        ).encode()
    )
    for p in files:
        st = p.stat()
        h.update(f"\n{p.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return cache_dir / f"{h.hexdigest()[:32]}.npz"


def folder_features(
    folder: str | os.PathLike,
    extractor: Extractor,
    *,
    num: int | None = None,
    seed: int = 0,
    batch_size: int = 50,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Features (N, D) float64 of every image under ``folder`` (see :func:`image_files`).

    With ``cache`` and an extractor that has a ``cache_key``, features are stored as float32 in
    ``cache_dir`` (default :func:`default_cache_dir`), about 8 KB per image for Inception.
    """
    root = Path(folder).expanduser()
    files = image_files(root, num=num, seed=seed)
    use_cache = cache and getattr(extractor, "cache_key", None) is not None
    path = None
    if use_cache:
        path = _cache_path(files, root, extractor, Path(cache_dir) if cache_dir else default_cache_dir(), num, seed)
        if path.is_file():
            try:
                feats = load_npz(path, ("features",))["features"]
                if feats.shape[0] == len(files):
                    return feats.astype(np.float64)
            except DataError:
                pass  # unreadable cache: recompute and overwrite

    batches = range(0, len(files), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"features {root.name or root}", unit="batch", file=sys.stderr)
    chunks = []
    for start in batches:
        images = [image_tensor(p) for p in files[start : start + batch_size]]
        chunks.append(_extract_mixed_sizes(images, extractor))
    feats = np.concatenate(chunks, axis=0).astype(np.float64)

    if use_cache:
        _atomic_savez(path, features=feats.astype(np.float32))
    return feats


def _atomic_savez(path: Path, **arrays) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as exc:  # a read-only cache location must not break evaluation
        print(f"ddmi: warning: could not write feature cache {path}: {exc}", file=sys.stderr)


def features_from_batches(batches: Iterable[torch.Tensor], extractor: Extractor) -> np.ndarray:
    """Features (N, D) float64 of in-memory uint8 (B, 3, H, W) batches (e.g. from a sampler).

    Convert model outputs in [-1, 1] with :func:`ddmi.data.images.uint8_tensor` first, so that generated images are
    quantised exactly as if they had been written to PNG and read back.
    """
    chunks = []
    for batch in batches:
        if not isinstance(batch, torch.Tensor) or batch.dtype != torch.uint8:
            raise ValueError("features_from_batches expects uint8 tensors; convert with ddmi.data.images.uint8_tensor")
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected batches of shape (B, 3, H, W), got {tuple(batch.shape)}")
        if batch.shape[0]:
            chunks.append(np.asarray(extractor(batch), dtype=np.float64))
    if not chunks:
        raise DataError("no images were given to compute features from")
    return np.concatenate(chunks, axis=0)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray, *, method: str = "auto") -> float:
    """FID between two feature matrices (``method``: see :func:`ddmi.metrics.frechet.frechet_distance_of_features`)."""
    return frechet_distance_of_features(feats1, feats2, method=method)


def _default_extractor(extractor, batch_size, device=None):
    if extractor is not None:
        return extractor
    from ddmi.metrics.inception import InceptionFeatures

    return InceptionFeatures(batch_size=batch_size, device=device)


def _both_folder_features(gen_dir, ref_dir, extractor, num, seed, batch_size, cache, cache_dir, progress):
    kw = dict(num=num, seed=seed, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    # Generated folders change every run: only the reference folder is cached.
    gen = folder_features(gen_dir, extractor, cache=False, **kw)
    ref = folder_features(ref_dir, extractor, cache=cache, **kw)
    return gen, ref


def fid_from_folders(
    gen_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    *,
    num: int | None = None,
    seed: int = 0,
    extractor: Extractor | None = None,
    batch_size: int = 50,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> float:
    """FID between the images of two folders (Inception-v3 on ``device`` unless ``extractor`` is given)."""
    extractor = _default_extractor(extractor, batch_size, device)
    gen, ref = _both_folder_features(gen_dir, ref_dir, extractor, num, seed, batch_size, cache, cache_dir, progress)
    return fid_from_features(gen, ref)


def kid_from_folders(
    gen_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    *,
    num: int | None = None,
    seed: int = 0,
    extractor: Extractor | None = None,
    batch_size: int = 50,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    num_subsets: int = 100,
    subset_size: int = 1000,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """KID (mean, std over subsets) between the images of two folders."""
    extractor = _default_extractor(extractor, batch_size, device)
    gen, ref = _both_folder_features(gen_dir, ref_dir, extractor, num, seed, batch_size, cache, cache_dir, progress)
    return kid(gen, ref, num_subsets=num_subsets, subset_size=subset_size, seed=seed)


def iter_uint8_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Split an uint8 (N, 3, H, W) tensor into batches (helper for tests and scripts)."""
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]
