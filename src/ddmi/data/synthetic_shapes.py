"""Procedural 3-D shapes in the ONet ShapeNet layout (``ddmi synth shapes``).

Every shape is a union of primitives (axis-aligned boxes and cylinders) assembled like a chair,
a table or an airplane with random proportions (y is up, as in ShapeNet). Because the geometry is
analytic, everything written is exact:

* occupancies come from the analytic inside-test of the union (:func:`occupancy`);
* surface points are sampled uniformly by area on the primitives' surfaces, keeping only the
  parts on the outer surface of the union (points strictly inside another primitive are
  rejected), each with the outward normal of its primitive.

Shapes are normalised like ONet's meshes: the bounding box of the union is centred at the origin
and its longest side scaled to 1, so ``|p| <= 0.5``; query points fill the padded box
``1.1 * [-0.5, 0.5]^3``: half uniformly, half near the surface (surface samples + ``N(0, 0.02^2)``;
ONet's own files use uniform points only, the near-surface half helps small models learn thin
parts). Files follow :mod:`ddmi.data.shapes` (float16 points, bit-packed occupancies).

Determinism, atomic writes and the no-overwrite rule are those of :mod:`ddmi.data.synthetic`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ddmi.data.shapes import write_pointcloud_npz, write_points_npz
from ddmi.data.synthetic import _check_int, _item_rng, _prepare_out_dir
from ddmi.files import atomic_write_text

# category name -> ShapeNet synset id (the ONet folder names)
CATEGORIES = {"airplane": "02691156", "chair": "03001627", "table": "04379243"}
BOX, CYLINDER = 0, 1
_EPS = 1e-6


@dataclass
class Primitive:
    """A box (``size`` = half extents) or a cylinder (``size = (radius, half_length, 0)`` along
    ``axis``) centred at ``center``."""

    kind: int
    center: np.ndarray
    size: np.ndarray
    axis: int = 1

    def inside(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """``p (N, 3)`` -> bool ``(N,)``: inside (or on the surface when ``margin == 0``); with
        ``margin > 0``, strictly inside by more than ``margin``."""
        d = p - self.center
        if self.kind == BOX:
            return np.all(np.abs(d) <= self.size - margin, axis=1)
        along = d[:, self.axis]
        others = [a for a in range(3) if a != self.axis]
        radial = np.sqrt(d[:, others[0]] ** 2 + d[:, others[1]] ** 2)
        return (np.abs(along) <= self.size[1] - margin) & (radial <= self.size[0] - margin)

    def area(self) -> float:
        if self.kind == BOX:
            x, y, z = 2 * self.size
            return 2 * (x * y + y * z + x * z)
        r, hl = self.size[0], self.size[1]
        return 2 * np.pi * r * 2 * hl + 2 * np.pi * r * r

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == BOX:
            ext = self.size
        else:
            ext = np.full(3, self.size[0])
            ext[self.axis] = self.size[1]
        return self.center - ext, self.center + ext

    def sample_surface(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points uniform by area on the surface, and their outward normals."""
        if self.kind == BOX:
            h = self.size
            face_areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]] * 2)
            face = rng.choice(6, size=n, p=face_areas / face_areas.sum())
            axis, sign = face % 3, np.where(face < 3, 1.0, -1.0)
            local = (rng.random((n, 3)) * 2 - 1) * h
            local[np.arange(n), axis] = sign * h[axis]
            normals = np.zeros((n, 3))
            normals[np.arange(n), axis] = sign
            return self.center + local, normals
        r, hl = self.size[0], self.size[1]
        a0, a1 = [a for a in range(3) if a != self.axis]
        side = 4 * np.pi * r * hl
        on_side = rng.random(n) < side / (side + 2 * np.pi * r * r)
        theta = rng.random(n) * 2 * np.pi
        rad = np.where(on_side, r, r * np.sqrt(rng.random(n)))
        along = np.where(on_side, (rng.random(n) * 2 - 1) * hl, np.where(rng.random(n) < 0.5, hl, -hl))
        local = np.zeros((n, 3))
        local[:, a0], local[:, a1], local[:, self.axis] = rad * np.cos(theta), rad * np.sin(theta), along
        normals = np.zeros((n, 3))
        normals[on_side, a0], normals[on_side, a1] = np.cos(theta[on_side]), np.sin(theta[on_side])
        normals[~on_side, self.axis] = np.sign(along[~on_side])
        return self.center + local, normals

    def transformed(self, shift: np.ndarray, scale: float) -> "Primitive":
        return Primitive(self.kind, (self.center - shift) * scale, self.size * scale, self.axis)


def _box(center, half) -> Primitive:
    return Primitive(BOX, np.asarray(center, float), np.asarray(half, float))


def _cyl(center, radius, half_length, axis) -> Primitive:
    return Primitive(CYLINDER, np.asarray(center, float), np.array([radius, half_length, 0.0]), axis)


def _legs(rng, half_w, half_d, top, inset, thick, round_legs) -> list[Primitive]:
    """Four legs from the floor (y = 0) up into a slab whose underside is at ``top``."""
    out = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            c = (sx * (half_w - inset), top / 2 + thick / 2, sz * (half_d - inset))
            hl = top / 2 + thick / 2
            out.append(_cyl(c, thick, hl, 1) if round_legs else _box(c, (thick, hl, thick)))
    return out


def make_chair(rng: np.random.Generator) -> list[Primitive]:
    w, d = rng.uniform(0.18, 0.3), rng.uniform(0.18, 0.28)
    seat_h, seat_t = rng.uniform(0.3, 0.5), rng.uniform(0.03, 0.055)
    leg = rng.uniform(0.022, 0.036)
    parts = [_box((0, seat_h + seat_t, 0), (w, seat_t, d))]
    parts += _legs(rng, w, d, seat_h + seat_t, leg + 0.01, leg, rng.random() < 0.4)
    back_h, back_t = rng.uniform(0.25, 0.55), rng.uniform(0.025, 0.045)
    parts.append(_box((0, seat_h + 2 * seat_t + back_h / 2 - 0.01, -d + back_t),
                      (w, back_h / 2 + 0.01, back_t)))
    if rng.random() < 0.4:  # armrests
        arm_h = rng.uniform(0.12, 0.2)
        for sx in (-1, 1):
            parts.append(_box((sx * (w - 0.02), seat_h + 2 * seat_t + arm_h, 0), (0.025, 0.02, d * 0.9)))
            parts.append(_box((sx * (w - 0.02), seat_h + 2 * seat_t + arm_h / 2, d * 0.7),
                              (0.02, arm_h / 2 + 0.01, 0.02)))
    return parts


def make_table(rng: np.random.Generator) -> list[Primitive]:
    h, t = rng.uniform(0.35, 0.6), rng.uniform(0.03, 0.06)
    if rng.random() < 0.35:  # round top on a pedestal
        r = rng.uniform(0.3, 0.5)
        return [_cyl((0, h + t, 0), r, t, 1), _cyl((0, (h + t) / 2, 0), rng.uniform(0.03, 0.06), (h + t) / 2, 1),
                _cyl((0, 0.015, 0), r * rng.uniform(0.4, 0.6), 0.015, 1)]
    w, d = rng.uniform(0.35, 0.6), rng.uniform(0.2, 0.4)
    leg = rng.uniform(0.03, 0.05)
    parts = [_box((0, h + t, 0), (w, t, d))]
    parts += _legs(rng, w, d, h + t, leg + rng.uniform(0.0, 0.05), leg, rng.random() < 0.3)
    if rng.random() < 0.4:  # a lower shelf
        parts.append(_box((0, h * rng.uniform(0.2, 0.4), 0), (w - 0.02, 0.018, d - 0.02)))
    return parts


def make_airplane(rng: np.random.Generator) -> list[Primitive]:
    length, r = rng.uniform(0.45, 0.6), rng.uniform(0.05, 0.08)
    parts = [_cyl((0, 0, 0), r, length, 2)]                                   # fuselage along z
    span, chord, wz = rng.uniform(0.45, 0.75), rng.uniform(0.08, 0.16), rng.uniform(-0.1, 0.1)
    parts.append(_box((0, rng.uniform(-0.5, 0.3) * r, wz), (span, 0.022, chord)))  # wings
    parts.append(_box((0, 0, -length + 0.06), (span * rng.uniform(0.25, 0.4), 0.018, 0.06)))  # stabiliser
    fin_h = rng.uniform(0.08, 0.16)
    parts.append(_box((0, fin_h / 2 + r * 0.5, -length + 0.07), (0.018, fin_h / 2 + r * 0.5, 0.07)))  # fin
    if rng.random() < 0.6:  # two engines under the wings
        ex = span * rng.uniform(0.3, 0.6)
        for sx in (-1, 1):
            parts.append(_cyl((sx * ex, -0.045, wz + 0.02), 0.03, rng.uniform(0.06, 0.1), 2))
    return parts


MAKERS = {"airplane": make_airplane, "chair": make_chair, "table": make_table}


def normalize_parts(parts: list[Primitive]) -> list[Primitive]:
    """Centre the union's bounding box at the origin and scale its longest side to 1."""
    lo = np.min([p.bounds()[0] for p in parts], axis=0)
    hi = np.max([p.bounds()[1] for p in parts], axis=0)
    return [p.transformed((lo + hi) / 2, 1.0 / float((hi - lo).max())) for p in parts]


def random_shape(rng: np.random.Generator, category: str) -> list[Primitive]:
    return normalize_parts(MAKERS[category](rng))


def occupancy(parts: list[Primitive], points: np.ndarray) -> np.ndarray:
    """Exact occupancy of the union of ``parts`` at ``points (N, 3)``: bool ``(N,)``."""
    occ = np.zeros(len(points), bool)
    for p in parts:
        occ |= p.inside(points)
    return occ


def sample_surface(parts: list[Primitive], rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform by area on the outer surface of the union, with outward normals."""
    areas = np.array([p.area() for p in parts])
    pts, nrm, have = [], [], 0
    while have < n:
        m = 2 * (n - have) + 64
        counts = rng.multinomial(m, areas / areas.sum())
        for i, (part, k) in enumerate(zip(parts, counts)):
            if k == 0:
                continue
            x, nx = part.sample_surface(rng, int(k))
            keep = np.ones(len(x), bool)
            for j, other in enumerate(parts):
                if j != i:
                    keep &= ~other.inside(x, margin=_EPS)
            pts.append(x[keep])
            nrm.append(nx[keep])
            have += int(keep.sum())
    pts, nrm = np.concatenate(pts), np.concatenate(nrm)
    pick = rng.permutation(len(pts))[:n]
    return pts[pick], nrm[pick]


def render_synthetic_shape(rng: np.random.Generator, category: str, *, num_points: int = 100_000,
                           num_surface: int = 100_000, padding: float = 0.1) -> dict[str, np.ndarray]:
    """One shape's arrays: ``points``/``occupancies`` (queries) and ``surface``/``normals``."""
    parts = random_shape(rng, category)
    surface, normals = sample_surface(parts, rng, num_surface)
    n_uniform = num_points - num_points // 2
    uniform = (rng.random((n_uniform, 3)) - 0.5) * (1 + padding)
    near, _ = sample_surface(parts, rng, num_points // 2)
    near = np.clip(near + 0.02 * rng.standard_normal(near.shape), -(1 + padding) / 2, (1 + padding) / 2)
    points = np.concatenate([uniform, near]).astype(np.float16).astype(np.float64)  # as stored
    return {"points": points, "occupancies": occupancy(parts, points), "surface": surface,
            "normals": normals, "parts": parts}


def synth_shapes(out_dir, *, num: int, seed: int, overwrite: bool = False, split_test: int = 0,
                 num_points: int = 100_000, num_surface: int = 100_000) -> list[Path]:
    """Write a synthetic shape dataset in the ONet layout.

    Item ``i`` of a split is a ``("airplane", "chair", "table")[i % 3]`` named ``synth<i>``
    (``synth_t<i>`` in the test split), in the synset folder of its category. Writes
    ``metadata.yaml``, per-synset ``train.lst`` / ``val.lst`` (empty) / ``test.lst`` and each
    model's ``points.npz`` + ``pointcloud.npz``.

    Returns:
        The written ``.npz`` paths, training shapes first.

    Raises:
        DataError: ``out_dir`` is not empty (and ``overwrite`` is false) or is a file.
        ConfigError: an argument is invalid.
    """

    num = _check_int("num", num, 1)
    seed = _check_int("seed", seed, 0)
    split_test = _check_int("split_test", split_test, 0)
    num_points = _check_int("num_points", num_points, 8)
    num_surface = _check_int("num_surface", num_surface, 1)
    out = _prepare_out_dir(out_dir, overwrite)
    names = list(CATEGORIES)
    lists: dict[str, dict[str, list[str]]] = {c: {"train": [], "val": [], "test": []} for c in names}
    width = max(5, len(str(max(num, split_test) - 1)))
    jobs = [("train", i, f"synth{i:0{width}d}") for i in range(num)]
    jobs += [("test", i, f"synth_t{i:0{width}d}") for i in range(split_test)]
    for split, i, model in jobs:
        lists[names[i % 3]][split].append(model)
    if overwrite:  # drop model folders of an earlier run that this one does not write
        pattern = re.compile(r"synth(_t)?\d+")
        for cat in names:
            folder = out / CATEGORIES[cat]
            keep = set(lists[cat]["train"] + lists[cat]["test"])
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.is_dir() and pattern.fullmatch(entry.name) and entry.name not in keep:
                        shutil.rmtree(entry)
    meta = {CATEGORIES[c]: {"id": CATEGORIES[c], "name": c} for c in names}
    atomic_write_text(out / "metadata.yaml", yaml.safe_dump(meta, sort_keys=True))
    for cat in names:
        folder = out / CATEGORIES[cat]
        folder.mkdir(exist_ok=True)
        for split in ("train", "val", "test"):
            atomic_write_text(folder / f"{split}.lst", "".join(f"{m}\n" for m in lists[cat][split]))
    written: list[Path] = []
    for split, i, model in jobs:
        cat = names[i % 3]
        item = render_synthetic_shape(_item_rng(seed, split, i), cat, num_points=num_points,
                                      num_surface=num_surface)
        folder = out / CATEGORIES[cat] / model
        written.append(write_points_npz(folder / "points.npz", item["points"], item["occupancies"]))
        written.append(write_pointcloud_npz(folder / "pointcloud.npz", item["surface"], item["normals"]))
    return written


def synthetic_shape_parts(seed: int, split: str, index: int) -> list[Primitive]:
    """The primitives of item ``index`` of ``split`` written by :func:`synth_shapes` with ``seed``
    (for exact ground truth at any resolution, e.g. IoU on a grid)."""
    return random_shape(_item_rng(seed, split, index), list(CATEGORIES)[index % 3])
