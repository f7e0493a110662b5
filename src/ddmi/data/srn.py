"""The srn-cars (Points2NeRF) NeRF layout: reading, writing, the train/val split, training items.

Layout (docs/official-code.md §6)::

    ROOT/cars/sampled/<name>.npz      one object per file
    ROOT/cars/{train,val}.lst         optional: file stems, one per line (``ddmi synth nerf`` writes them)

Each ``.npz`` holds

* ``images``    ``(V, H, W, 3)`` in [0, 1] (float16 as in the release, or float32; uint8 is read as
  ``/255``), RGBA composited on a **white** background;
* ``cam_poses`` ``(V, 4, 4)`` camera-to-world matrices, OpenGL convention (:mod:`ddmi.render.volume`);
* ``data``      ``(P, 6)`` the coloured point cloud: xyz in the cameras' world frame, rgb in [0, 1].

Intrinsics are not stored: horizontal field of view 0.6911112 rad, principal point at the image
centre (``focal = 0.5 W / tan(0.5 fov)``).

**Split.** With ``train.lst`` / ``val.lst`` those are used; without them the files are sorted by
name and the last ``val_fraction`` (at least one file when there are two or more) are held out
for validation (the official loader trains on the first 80 % and has no held-out set).

**Training items** pack one object into a single ``(num_points + num_rays, 9)`` float32 tensor
(:func:`split_nerf_item`): rows ``[:num_points]`` are the encoder's coloured points (columns 0-5:
xyz, rgb in [0, 1]; 6-8 zero), rows ``[num_points:]`` are supervision rays (origin 0-2, direction
3-5, ground-truth colour 6-8). The rays of one item come from ``ray_views`` random views of the
object (the official code uses one view), pixels drawn without replacement. Item ``i`` at global
training position ``pos`` draws from a generator seeded with ``(seed, i, pos)`` (resume-exact, as
:mod:`ddmi.data.shapes`); a plain index gives one fixed draw.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ddmi.data.cache import BoundedCache
from ddmi.data.npz import load_npz
from ddmi.errors import DataError
from ddmi.files import atomic_write
from ddmi.render.volume import SRN_FOV, focal_from_fov

PathLike = Union[str, os.PathLike]
SPLITS = ("train", "val")
CACHE_BYTES = 1 << 30            # images kept in memory per dataset (the rest is re-read)

__all__ = ["read_scene", "write_scene", "find_scenes", "NeRFDataset", "split_nerf_item"]


def read_scene(path: PathLike) -> dict[str, np.ndarray]:
    """One srn-cars ``.npz`` -> ``images (V, H, W, 3)`` float16/32 in [0, 1], ``poses (V, 4, 4)``
    float32, ``points (P, 6)`` float32. Raises :class:`DataError` naming the file."""
    path = Path(path)
    d = load_npz(path, ("images", "cam_poses", "data"))
    images, poses, points = d["images"], d["cam_poses"], d["data"]
    if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
        raise DataError(f"{path}: 'images' must have shape (V, H, W, 3), got {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{path}: 'images' must be float in [0, 1] (or uint8), got {images.dtype}")
    if poses.shape != (images.shape[0], 4, 4):
        raise DataError(f"{path}: 'cam_poses' must have shape ({images.shape[0]}, 4, 4) for "
                        f"{images.shape[0]} images, got {poses.shape}")
    if points.ndim != 2 or points.shape[1] != 6 or points.shape[0] == 0:
        raise DataError(f"{path}: 'data' must be a coloured point cloud of shape (P, 6), got {points.shape}")
    for name, a in (("cam_poses", poses), ("data", points)):
        # strings of digits, booleans and complex numbers would all cast to float32 without a word
        if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise DataError(f"{path}: '{name}' must hold real numbers, got dtype {a.dtype}")
    with np.errstate(over="ignore"):      # float64 beyond float32's range becomes inf: caught below
        poses, points = poses.astype(np.float32), points.astype(np.float32)
    for name, a in (("cam_poses", poses), ("data", points)):
        if not np.isfinite(a).all():
            raise DataError(f"{path}: '{name}' holds non-finite values (NaN or Inf)")
    _check_poses(path, poses)
    rgb = points[:, 3:]
    if rgb.min() < -1e-3 or rgb.max() > 1 + 1e-3:
        raise DataError(f"{path}: the colours of 'data' (columns 3-5) must be in [0, 1], got values in "
                        f"[{rgb.min():.3g}, {rgb.max():.3g}]")
    lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
    if not np.isfinite(images).all() or lo < -1e-3 or hi > 1 + 1e-3:
        raise DataError(f"{path}: 'images' must be finite and in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return {"images": images, "poses": poses, "points": points}


def _check_poses(path: Path, poses: np.ndarray, tol: float = 1e-2) -> None:
    """Camera-to-world matrices: bottom row ``(0, 0, 0, 1)`` and an orthonormal rotation block (a
    zero or scaled matrix would give rays of zero or wrong length without any error)."""
    bottom = np.abs(poses[:, 3] - np.array([0, 0, 0, 1], np.float32)).max(axis=1)
    rot = poses[:, :3, :3]
    ortho = np.abs(rot.transpose(0, 2, 1) @ rot - np.eye(3, dtype=np.float32)).max(axis=(1, 2))
    reflected = np.linalg.det(rot.astype(np.float64)) < 0      # orthonormal, but a mirror image
    bad = np.flatnonzero((bottom > tol) | (ortho > tol) | reflected)
    if len(bad):
        v = int(bad[0])
        raise DataError(f"{path}: 'cam_poses' must be camera-to-world matrices (a rotation: orthonormal, "
                        f"determinant +1, not a reflection; bottom row "
                        f"0 0 0 1); {len(bad)} of {len(poses)} are not, e.g. view {v}: "
                        f"{np.array2string(poses[v], precision=3, separator=',').replace(chr(10), '')}")


def write_scene(path: PathLike, images: np.ndarray, poses: np.ndarray, points: np.ndarray) -> Path:
    """Write one object in the srn-cars format (float16 images, as the release), atomically."""
    return atomic_write(Path(path), lambda f: np.savez_compressed(
        f, images=np.asarray(images, np.float16), cam_poses=np.asarray(poses, np.float32),
        data=np.asarray(points, np.float32)))


def find_scenes(root: PathLike, split: str = "train", *, category: str = "cars",
                val_fraction: float = 0.1) -> list[Path]:
    """The ``.npz`` files of ``split`` under ``ROOT/<category>/sampled`` (module docstring)."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    root = Path(root).expanduser()
    folder = root / category / "sampled"
    if not folder.is_dir():
        raise DataError(f"{root}: no folder {category}/sampled (expected ROOT/{category}/sampled/*.npz)")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise DataError(f"{folder}: no .npz files")
    lists = {s: root / category / f"{s}.lst" for s in SPLITS}
    if any(p.is_file() for p in lists.values()):
        by_stem = {f.stem: f for f in files}
        lst = lists[split]
        names = [n.strip() for n in lst.read_text().splitlines() if n.strip()] if lst.is_file() else []
        unknown = [n for n in names if n not in by_stem]
        if unknown:
            raise DataError(f"{lst}: {len(unknown)} listed object(s) have no file in {folder}, e.g. {unknown[0]}")
        out = [by_stem[n] for n in names]
    else:
        n_val = 0 if len(files) < 2 else max(1, int(round(val_fraction * len(files))))
        out = files[len(files) - n_val:] if split == "val" else files[:len(files) - n_val]
    if not out:
        raise DataError(f"{root}: no {split} objects")
    return out


def split_nerf_item(batch: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed ``(B, num_points + R, 9)`` -> ``points (B, num_points, 6)``, ray ``origins``,
    ``dirs`` and target ``rgb`` ``(B, R, 3)``."""
    rays = batch[:, num_points:]
    return batch[:, :num_points, :6], rays[..., 0:3], rays[..., 3:6], rays[..., 6:9]


class NeRFDataset(Dataset):
    """srn-cars objects as packed training items (module docstring).

    ``views``: restrict the supervising views (indices into each object's views), e.g. to hold
    some views out; ``num_rays=0`` gives point-cloud-only items (stage-2 latent cache).
    """

    positional = True

    def __init__(self, root: PathLike, *, split: str = "train", category: str = "cars", num_points: int = 2048,
                 num_rays: int = 5000, ray_views: int = 1, point_noise: float = 0.0, points_scale: float = 1.0,
                 fov: float = SRN_FOV, val_fraction: float = 0.1, views: list[int] | None = None,
                 seed: int = 0, files: list[Path] | None = None):
        self.files = list(files) if files is not None else find_scenes(root, split, category=category,
                                                                          val_fraction=val_fraction)
        self.num_points, self.num_rays, self.ray_views = num_points, num_rays, max(1, ray_views)
        self.point_noise, self.points_scale, self.fov = point_noise, points_scale, fov
        self.views, self.seed = views, seed
        self._cache = BoundedCache(CACHE_BYTES)

    def __len__(self) -> int:
        return len(self.files)

    def scene(self, i: int) -> dict[str, np.ndarray]:
        """The arrays of object ``i`` (points already scaled by ``points_scale``)."""
        return self._cache.get(i, lambda: self._read_scene(i), lambda s: s["images"].nbytes)

    def _read_scene(self, i: int) -> dict[str, np.ndarray]:
        s = read_scene(self.files[i])
        s["points"][:, :3] *= self.points_scale
        if self.views is not None:
            bad = [v for v in self.views if not -len(s["poses"]) <= v < len(s["poses"])]
            if bad:
                raise DataError(f"{self.files[i]}: has {len(s['poses'])} views, view {bad[0]} requested")
        return s

    def __getitem__(self, key) -> torch.Tensor:
        i, position = (key, -1) if isinstance(key, (int, np.integer)) else key
        i = int(i)
        s = self.scene(i)
        rng = np.random.default_rng([self.seed, i, int(position) + 1])
        pts = s["points"]
        pick = rng.choice(len(pts), self.num_points, replace=len(pts) < self.num_points)
        out = np.zeros((self.num_points + self.num_rays, 9), np.float32)
        out[:self.num_points, :6] = pts[pick]
        if self.point_noise > 0:
            out[:self.num_points, :3] += self.point_noise * rng.standard_normal((self.num_points, 3))
        if self.num_rays:
            views = np.arange(len(s["poses"])) if self.views is None else np.asarray(self.views)
            chosen = rng.choice(views, min(self.ray_views, len(views)), replace=False)
            v, h, w, _ = s["images"].shape
            flat = rng.choice(len(chosen) * h * w, self.num_rays, replace=self.num_rays > len(chosen) * h * w)
            view = chosen[flat // (h * w)]
            row, col = (flat % (h * w)) // w, flat % w
            from ddmi.render.volume import pixel_rays
            o, d = pixel_rays(torch.from_numpy(s["poses"][view]), torch.from_numpy(row).float(),
                              torch.from_numpy(col).float(), h, w, focal_from_fov(w, self.fov))
            rays = out[self.num_points:]
            rays[:, 0:3], rays[:, 3:6] = o.numpy(), d.numpy()
            rays[:, 6:9] = s["images"][view, row, col]
        return torch.from_numpy(out)
