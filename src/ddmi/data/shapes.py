"""Occupancy Networks (ONet / ConvONet) ShapeNet layout: reading, sampling, writing.

Layout (docs/official-code.md §7)::

    ROOT/metadata.yaml                       optional: {synset: {id: ..., name: ...}}
    ROOT/<synset>/{train,val,test}.lst       model names, one per line
    ROOT/<synset>/<model>/points.npz         points (P, 3), occupancies np.packbits(P bools)
    ROOT/<synset>/<model>/pointcloud.npz     points (M, 3), normals (M, 3) (surface samples)

Arrays may be float16 (as in the ONet release) or float32; they are used as float32. Points are in
the ONet unit-cube frame (``|p| <= 0.5``, queries in the padded box ``(1 + padding) * [-0.5, 0.5]^3``).

One training item is packed into a single ``(num_points + num_queries, 4)`` float32 tensor:
rows ``[:num_points]`` are the noisy surface points the encoder sees (column 3 is 0), rows
``[num_points:]`` are the query points with their occupancy (0/1) in column 3
(:func:`split_item`). Items are sampled as in the spec: ``num_points`` (3000) surface points drawn
uniformly with replacement plus ``N(0, point_noise^2)`` noise, ``num_queries`` (2048) query
points drawn uniformly with replacement, jittered by ``1e-4 N(0, 1)`` to break ties.

Randomness: item ``i`` drawn at global position ``pos`` of the training order uses a generator
seeded with ``(seed, i, pos)``, so training is exactly reproducible and resumable whatever the
number of worker processes (see ``ddmi.training.trainer.StepBatchSampler(positional=True)``); indexing with a
plain ``i`` gives one fixed draw per item (for caches and previews).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from ddmi.data.cache import DEFAULT_BYTES, BoundedCache
from ddmi.data.npz import load_npz
from ddmi.errors import DataError
from ddmi.files import atomic_write

PathLike = Union[str, os.PathLike]
SPLITS = ("train", "val", "test")

__all__ = ["ShapesDataset", "read_points_npz", "read_pointcloud_npz", "write_points_npz",
           "write_pointcloud_npz", "split_item", "find_models"]


# ------------------------------------------------------------------------------------------
# files


def _check_xyz(path: Path, name: str, a: np.ndarray) -> np.ndarray:
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] == 0:
        raise DataError(f"{path}: '{name}' must have shape (N, 3) with N > 0, got {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{path}: '{name}' must be floating point, got {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise DataError(f"{path}: '{name}' holds non-finite values")
    return a


def read_points_npz(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``points.npz`` -> ``(points (P, 3) float32, occupancies (P,) bool)``.

    ``occupancies`` may be bit-packed (``np.packbits``, uint8 of length ``ceil(P / 8)``, the ONet
    format) or plain (bool / 0-1 numbers of length ``P``).
    """
    path = Path(path)
    d = load_npz(path, ("points", "occupancies"))
    points = _check_xyz(path, "points", d["points"])
    occ, n = d["occupancies"].reshape(-1), len(points)
    if not (occ.dtype == bool or np.issubdtype(occ.dtype, np.number)):
        raise DataError(f"{path}: 'occupancies' must be numbers or booleans, got {occ.dtype}")
    if occ.dtype == np.uint8 and len(occ) == (n + 7) // 8 and n > 1:
        occ = np.unpackbits(occ)[:n].astype(bool)
    elif len(occ) == n:
        occ = occ.astype(bool)
    else:
        raise DataError(f"{path}: 'occupancies' has {len(occ)} entries for {n} points "
                        f"(expected {n}, or {(n + 7) // 8} bytes bit-packed with np.packbits)")
    return points, occ


def read_pointcloud_npz(path: PathLike) -> np.ndarray:
    """``pointcloud.npz`` -> surface ``points (M, 3) float32`` (``normals`` is checked if present)."""
    path = Path(path)
    d = load_npz(path, ("points",), optional=("normals",))
    points = _check_xyz(path, "points", d["points"])
    if "normals" in d and d["normals"].shape != points.shape:
        raise DataError(f"{path}: 'normals' has shape {d['normals'].shape}, 'points' {points.shape}")
    return points


def _atomic_savez(path: Path, **arrays) -> Path:
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def write_points_npz(path: PathLike, points: np.ndarray, occupancies: np.ndarray) -> Path:
    """Write ``points.npz`` in the ONet format (float16 points, bit-packed occupancies), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic_savez(path, points=np.asarray(points, np.float16),
                         occupancies=np.packbits(np.asarray(occupancies, bool)),
                         loc=np.zeros(3, np.float32), scale=np.float32(1.0))


def write_pointcloud_npz(path: PathLike, points: np.ndarray, normals: np.ndarray) -> Path:
    """Write ``pointcloud.npz`` (float16 points and normals), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic_savez(path, points=np.asarray(points, np.float16), normals=np.asarray(normals, np.float16),
                         loc=np.zeros(3, np.float32), scale=np.float32(1.0))


# ------------------------------------------------------------------------------------------
# the dataset


def find_models(root: PathLike, split: str = "train", classes: list[str] | None = None) -> list[tuple[str, str]]:
    """``(synset, model)`` pairs of ``split``, synsets sorted, models in their ``.lst`` order.

    ``classes`` (synset folder names) restricts the synsets; ``None`` uses every folder of ``root``.
    A synset without any ``.lst`` file contributes every model folder it holds (sorted) to
    every split; one with other lists but no ``split.lst`` contributes nothing to ``split``.
    """
    root = Path(root).expanduser()
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if not root.is_dir():
        raise DataError(f"shape dataset folder {root} does not exist")
    meta = root / "metadata.yaml"
    if meta.is_file():
        try:
            yaml.safe_load(meta.read_text())
        except yaml.YAMLError as exc:
            raise DataError(f"{meta}: cannot parse ({exc})".splitlines()[0]) from None
    synsets = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is not None:
        unknown = [c for c in classes if c not in synsets]
        if unknown:
            raise DataError(f"{root}: class folder(s) {', '.join(unknown)} not found")
        synsets = list(classes)
    pairs: list[tuple[str, str]] = []
    for syn in synsets:
        lst = root / syn / f"{split}.lst"
        if lst.is_file():
            names = [line.strip() for line in lst.read_text().splitlines() if line.strip()]
        elif not any((root / syn).glob("*.lst")):   # no split lists at all: every model folder
            names = sorted(p.name for p in (root / syn).iterdir() if (p / "points.npz").exists())
        else:
            names = []
        pairs += [(syn, name) for name in names]
    if not pairs:
        raise DataError(f"{root}: no {split} shapes found (expected <synset>/{split}.lst or "
                        "<synset>/<model>/points.npz)")
    return pairs


def split_item(batch: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed ``(B, num_points + Q, 4)`` -> ``(points (B, num_points, 3), queries (B, Q, 3),
    occupancies (B, Q))``."""
    return batch[:, :num_points, :3], batch[:, num_points:, :3], batch[:, num_points:, 3]


OUTSIDE_BOX = 1.0     # |coordinate| beyond which a shape is taken as not normalised (ONet: 0.5)


class ShapesDataset(Dataset):
    """ONet-layout shapes as packed training items (module docstring).

    ``dataset[i]`` -> ``(num_points + num_queries, 4)`` float32, one fixed draw per item;
    ``dataset[(i, position)]`` -> the draw of item ``i`` at global training position ``position``.
    ``dataset.surface(i)`` / ``dataset.occupancy(i)`` give the full arrays of item ``i``.
    """

    positional = True

    def __init__(self, root: PathLike, *, split: str = "train", classes: list[str] | None = None,
                 num_points: int = 3000, point_noise: float = 0.005, num_queries: int = 2048,
                 seed: int = 0, cache_bytes: int = DEFAULT_BYTES):
        self.root = Path(root).expanduser()
        self.models = find_models(self.root, split, classes)
        self.num_points, self.point_noise, self.num_queries = num_points, point_noise, num_queries
        self.seed = seed
        self._cache = BoundedCache(cache_bytes)   # per process: ~2.5 MB per ONet shape
        self._warned = False

    def __len__(self) -> int:
        return len(self.models)

    def folder(self, i: int) -> Path:
        syn, name = self.models[i]
        return self.root / syn / name

    def _arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._cache.get(i, lambda: self._read(i), lambda arrays: sum(a.nbytes for a in arrays))

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        folder = self.folder(i)
        surface = read_pointcloud_npz(folder / "pointcloud.npz")
        points, occ = read_points_npz(folder / "points.npz")
        reach = float(np.abs(surface).max()) if len(surface) else 0.0
        if reach > OUTSIDE_BOX and not self._warned:
            self._warned = True
            warnings.warn(f"{folder / 'pointcloud.npz'}: its points reach {reach:.3g}, far outside the unit cube "
                          "[-0.5, 0.5]^3 that ONet shapes (and the field's box) occupy: normalise the shapes first "
                          "(most of the field would be empty)", RuntimeWarning, stacklevel=2)
        return surface, points, occ

    def surface(self, i: int) -> np.ndarray:
        return self._arrays(i)[0]

    def occupancy(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._arrays(i)[1:]

    def __getitem__(self, key) -> torch.Tensor:
        i, position = (key, -1) if isinstance(key, (int, np.integer)) else key
        i = int(i)
        surface, points, occ = self._arrays(i)
        rng = np.random.default_rng([self.seed, i, int(position) + 1])
        inp = surface[rng.integers(0, len(surface), self.num_points)]
        inp = inp + self.point_noise * rng.standard_normal(inp.shape).astype(np.float32)
        qi = rng.integers(0, len(points), self.num_queries)
        q = points[qi] + 1e-4 * rng.standard_normal((self.num_queries, 3)).astype(np.float32)
        out = np.zeros((self.num_points + self.num_queries, 4), np.float32)
        out[:self.num_points, :3] = inp
        out[self.num_points:, :3] = q
        out[self.num_points:, 3] = occ[qi]
        return torch.from_numpy(out)
