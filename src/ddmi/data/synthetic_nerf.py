"""Procedural coloured cars rendered in the srn-cars layout (``ddmi synth nerf``).

Each object is a car-like union of coloured primitives (:class:`ddmi.data.synthetic_shapes.Primitive`):
a body box, a cabin box, four cylinder wheels and two headlights, with random proportions and a
random body colour; y is up, the car's length runs along x. It is centred and scaled so that its
longest side is ``2 * extent`` (1.7 by default, like the x2.2 ShapeNet cars of Points2NeRF).

Views are rendered **exactly** by ray casting the primitives (nearest entry of any primitive:
cameras are outside every part), with the cameras, pixel centres and intrinsics of
:mod:`ddmi.render.volume`, 2 x 2 supersampling, on white. Radiance is view-independent: the part's
colour times Lambertian shading ``0.35 + 0.65 max(0, n . l)`` under a fixed world light, and the
coloured point cloud (``data``) carries the same radiance at surface points sampled uniformly by
area on the outer surface of the union. So a radiance field that fits the views exists exactly.

Cameras: ``views`` poses at random azimuth and elevation in [5, 50] degrees, at distance
``radius`` (3.2, as srn-cars) from the origin, looking at it (OpenGL camera-to-world).
Determinism, atomic writes and the no-overwrite rule are those of :mod:`ddmi.data.synthetic`.
"""

from __future__ import annotations

import colorsys
import math
import re
from pathlib import Path

import numpy as np
import torch

from ddmi.render.volume import SRN_FOV, camera_rays, focal_from_fov, orbit_pose
from ddmi.data.srn import write_scene
from ddmi.data.synthetic_shapes import BOX, Primitive, _box, _cyl, normalize_parts, sample_surface

LIGHT = np.array([0.45, 0.8, 0.4]) / np.linalg.norm([0.45, 0.8, 0.4])


def make_car(rng: np.random.Generator, extent: float = 0.85) -> tuple[list[Primitive], np.ndarray]:
    """A car's primitives (normalised: longest side ``2 * extent``) and their RGB colours ``(K, 3)``."""
    half_l, half_w, r = rng.uniform(0.9, 1.05), rng.uniform(0.38, 0.46), rng.uniform(0.14, 0.19)
    hb = rng.uniform(0.12, 0.19)
    body_y = 0.6 * r + hb
    hc, cab_l = rng.uniform(0.1, 0.16), half_l * rng.uniform(0.42, 0.6)
    parts = [_box((0, body_y, 0), (half_l, hb, half_w)),
             _box((half_l * rng.uniform(-0.3, 0.05), body_y + hb + hc, 0), (cab_l, hc, half_w * rng.uniform(0.78, 0.9)))]
    wheel_x, wheel_hl = half_l * rng.uniform(0.58, 0.72), rng.uniform(0.05, 0.08)
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(_cyl((sx * wheel_x, r, sz * (half_w - 0.5 * wheel_hl)), r, wheel_hl, 2))
    for sz in (-1, 1):
        parts.append(_box((half_l, body_y + 0.4 * hb, sz * half_w * 0.65), (0.02, 0.035, 0.06)))
    body = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.55, 0.95)))
    glass = np.array([0.55, 0.66, 0.78]) * rng.uniform(0.6, 1.0)
    colours = np.stack([body, glass] + [np.array([0.13, 0.13, 0.14])] * 4 + [np.array([1.0, 0.92, 0.55])] * 2)
    parts = [p.transformed(np.zeros(3), 2 * extent) for p in normalize_parts(parts)]
    return parts, colours


def _hit(part: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry depth (inf when missed) and outward normal of rays ``o + t d`` into one primitive."""
    n = len(o)
    normal = np.zeros((n, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        if part.kind == BOX:
            lo, hi = part.center - part.size, part.center + part.size
            t1, t2 = (lo - o) / d, (hi - o) / d
            tnear, tfar = np.minimum(t1, t2), np.maximum(t1, t2)
            tnear = np.where(np.isnan(tnear), -np.inf, tnear)
            tfar = np.where(np.isnan(tfar), np.inf, tfar)
            t_in, axis = tnear.max(1), tnear.argmax(1)
            ok = (tfar.min(1) >= t_in) & (t_in > 0)
            normal[np.arange(n), axis] = -np.sign(d[np.arange(n), axis])
            return np.where(ok, t_in, np.inf), normal
        a = part.axis
        a0, a1 = [k for k in range(3) if k != a]
        rad, hl = part.size[0], part.size[1]
        oc = o - part.center
        qa = d[:, a0] ** 2 + d[:, a1] ** 2
        qb = 2 * (oc[:, a0] * d[:, a0] + oc[:, a1] * d[:, a1])
        qc = oc[:, a0] ** 2 + oc[:, a1] ** 2 - rad ** 2
        disc = qb ** 2 - 4 * qa * qc
        t_side = (-qb - np.sqrt(np.maximum(disc, 0))) / (2 * qa)
        along = oc[:, a] + t_side * d[:, a]
        side_ok = (disc >= 0) & (qa > 0) & (np.abs(along) <= hl) & (t_side > 0)
        t_cap = (-np.sign(d[:, a]) * hl - oc[:, a]) / d[:, a]           # the cap facing the ray
        pc = oc + t_cap[:, None] * d
        cap_ok = (np.abs(d[:, a]) > 0) & (pc[:, a0] ** 2 + pc[:, a1] ** 2 <= rad ** 2) & (t_cap > 0)
        t_side = np.where(side_ok, t_side, np.inf)
        t_cap = np.where(cap_ok, t_cap, np.inf)
        use_side = t_side <= t_cap
        ps = oc + np.where(np.isfinite(t_side), t_side, 0)[:, None] * d
        normal[:, a0], normal[:, a1] = ps[:, a0] / rad, ps[:, a1] / rad
        normal[~use_side] = 0
        normal[~use_side, a] = -np.sign(d[~use_side, a])
        return np.minimum(t_side, t_cap), normal


def shade(colours: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """View-independent radiance: colour x (0.35 + 0.65 max(0, n . light))."""
    return np.clip(colours * (0.35 + 0.65 * np.clip(normals @ LIGHT, 0, None))[:, None], 0, 1)


def cast(parts: list[Primitive], colours: np.ndarray, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Colours ``(N, 3)`` of rays ``o, d (N, 3)``; white where no part is hit."""
    best, normal, which = np.full(len(o), np.inf), np.zeros((len(o), 3)), np.zeros(len(o), int)
    for k, part in enumerate(parts):
        t, nk = _hit(part, o, d)
        closer = t < best
        best[closer], normal[closer], which[closer] = t[closer], nk[closer], k
    rgb = shade(colours[which], normal)
    rgb[~np.isfinite(best)] = 1.0
    return rgb


def render_car_views(parts, colours, poses: torch.Tensor, resolution: int, *, fov: float = SRN_FOV,
                     supersample: int = 2) -> np.ndarray:
    """``(V, R, R, 3)`` float32 images in [0, 1] of the car from ``poses (V, 4, 4)``."""
    s = resolution * supersample
    o, d = camera_rays(poses.double(), s, s, focal_from_fov(s, fov))
    rgb = cast(parts, colours, o.reshape(-1, 3).numpy(), d.reshape(-1, 3).numpy())
    rgb = rgb.reshape(len(poses), resolution, supersample, resolution, supersample, 3).mean((2, 4))
    return rgb.astype(np.float32)


def coloured_points(parts, colours, rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 6)``: surface points of the union (uniform by area) with their radiance."""
    pts, normals = sample_surface(parts, rng, n)
    owner = np.full(n, -1)
    for k in reversed(range(len(parts))):           # the first part containing the point wins
        owner[parts[k].inside(pts, margin=-1e-6)] = k
    rgb = shade(colours[np.maximum(owner, 0)], normals)
    return np.concatenate([pts, rgb], axis=1).astype(np.float32)


def render_synthetic_car(rng: np.random.Generator, *, resolution: int = 64, views: int = 50,
                         num_points: int = 2048, radius: float = 3.2) -> dict[str, np.ndarray]:
    """One object's ``images``, ``poses`` and ``points`` (module docstring)."""
    parts, colours = make_car(rng)
    az = rng.uniform(0, 2 * math.pi, views)
    el = np.radians(rng.uniform(5, 50, views))
    poses = torch.stack([orbit_pose(float(a), float(e), radius) for a, e in zip(az, el)])
    return {"images": render_car_views(parts, colours, poses, resolution), "poses": poses.numpy(),
            "points": coloured_points(parts, colours, rng, num_points), "parts": parts, "colours": colours}


def synth_nerf(out_dir, *, num: int, seed: int, overwrite: bool = False, split_test: int = 0,
               resolution: int = 64, views: int = 50, num_points: int = 2048, radius: float = 3.2) -> list[Path]:
    """Write ``num`` training (+ ``split_test`` validation) cars in the srn-cars layout:
    ``out_dir/cars/sampled/synth<i>.npz`` (``synth_t<i>`` for validation), ``cars/train.lst``,
    ``cars/val.lst``. Returns the written ``.npz`` paths, training objects first."""
    from ddmi.files import atomic_write_text
    from ddmi.data.synthetic import _check_int, _item_rng, _prepare_out_dir, _remove_stale

    num = _check_int("num", num, 1)
    seed = _check_int("seed", seed, 0)
    split_test = _check_int("split_test", split_test, 0)
    resolution = _check_int("resolution", resolution, 4)
    views = _check_int("views", views, 1)
    num_points = _check_int("num_points", num_points, 1)
    out = _prepare_out_dir(out_dir, overwrite)
    folder = out / "cars" / "sampled"
    folder.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(max(num, split_test) - 1)))
    jobs = [("train", i, f"synth{i:0{width}d}") for i in range(num)]
    jobs += [("test", i, f"synth_t{i:0{width}d}") for i in range(split_test)]
    if overwrite:
        _remove_stale(folder, re.compile(r"synth(_t)?\d+\.npz"), {f"{name}.npz" for _, _, name in jobs})
    atomic_write_text(out / "cars" / "train.lst", "".join(f"{n}\n" for s, _, n in jobs if s == "train"))
    atomic_write_text(out / "cars" / "val.lst", "".join(f"{n}\n" for s, _, n in jobs if s == "test"))
    written = []
    for split, i, name in jobs:
        item = render_synthetic_car(_item_rng(seed, split, i), resolution=resolution, views=views,
                                    num_points=num_points, radius=radius)
        written.append(write_scene(folder / f"{name}.npz", item["images"], item["poses"], item["points"]))
    return written
