"""Synthetic datasets, one pair of functions per domain.

Each domain has a pure renderer driven by a :class:`numpy.random.Generator`
(``render_synthetic_<domain>(rng, ...)``) and a writer ``synth_<domain>(out_dir, *, num, seed,
overwrite=False, ...)`` that lays the files out in the same on-disk format as the real dataset
of that domain, so the whole pipeline (data loading included) runs on them unchanged.

Shared rules for every writer (implemented once, below):

* **deterministic**: item ``i`` of split ``s`` is rendered from its own generator seeded with
  ``(seed, s, i)``, so the same seed gives byte-identical files, and item ``i`` does not depend
  on ``num`` (growing a dataset keeps its first items);
* **safe**: a non-empty ``out_dir`` is refused unless ``overwrite=True``;
* **atomic**: every file is written to a temporary name in its folder, then renamed.

Domains: images (:func:`synth_images`), 3-D shapes (:func:`synth_shapes`, in
:mod:`ddmi.data.synthetic_shapes`). Video and NeRF generators are to be added here following the
same pattern.
"""

from __future__ import annotations

import colorsys
import os
import re
from pathlib import Path
from typing import Union

import numpy as np

from ddmi.data.images import save_image
from ddmi.errors import ConfigError, DataError

__all__ = ["render_synthetic_image", "synth_images", "synth_shapes"]

PathLike = Union[str, os.PathLike]

# Stream ids mixed into the per-item seeds, so that splits never share items.
_SPLIT_STREAMS = {"train": 0, "test": 1}


# ------------------------------------------------------------------------------------------
# Shared helpers for every domain
# ------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of item ``index`` of ``split``: independent of the dataset size."""
    return np.random.default_rng([int(seed), _SPLIT_STREAMS[split], int(index)])


def _prepare_out_dir(out_dir: PathLike, overwrite: bool) -> Path:
    """Create ``out_dir``, refusing a non-empty one unless ``overwrite``."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} exists and is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"output folder {out} already contains files; choose an empty folder or pass "
            f"overwrite=True (--overwrite) to replace them"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _remove_stale(folder: Path, pattern: re.Pattern, keep: set[str]) -> None:
    """Delete files of an earlier run in ``folder``: names matching ``pattern``, not in ``keep``."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_file() and pattern.fullmatch(entry.name) and entry.name not in keep:
                entry.unlink()


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float64)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame rotated by ``angle`` (the shape's local frame)."""
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _sdf_ellipse(px: np.ndarray, py: np.ndarray, a: float, b: float) -> np.ndarray:
    """Signed distance to an axis-aligned ellipse (exact for circles, first-order otherwise)."""
    if abs(a - b) < 1e-9:
        return np.hypot(px, py) - a
    k0 = np.hypot(px / a, py / b)
    k1 = np.hypot(px / (a * a), py / (b * b))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _sdf_box(px: np.ndarray, py: np.ndarray, hw: float, hh: float) -> np.ndarray:
    """Exact signed distance to an axis-aligned box of half-sizes ``(hw, hh)``."""
    qx, qy = np.abs(px) - hw, np.abs(py) - hh
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside


def _sdf_triangle(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Exact signed distance to a triangle (Inigo Quilez's formulation), vectorised."""
    (x0, y0), (x1, y1), (x2, y2) = verts
    edges = [
        ((x0, y0), (x1 - x0, y1 - y0)),
        ((x1, y1), (x2 - x1, y2 - y1)),
        ((x2, y2), (x0 - x2, y0 - y2)),
    ]
    e0x, e0y = edges[0][1]
    e2x, e2y = edges[2][1]
    orient = np.sign(e0x * e2y - e0y * e2x)
    dist2 = None
    side = None
    for (vx, vy), (ex, ey) in edges:
        wx, wy = px - vx, py - vy
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        dx, dy = wx - ex * t, wy - ey * t
        d2 = dx * dx + dy * dy
        sd = orient * (wx * ey - wy * ex)
        dist2 = d2 if dist2 is None else np.minimum(dist2, d2)
        side = sd if side is None else np.minimum(side, sd)
    return -np.sqrt(dist2) * np.sign(side)


def _edge_coverage(signed: np.ndarray, pixel: float) -> np.ndarray:
    """Fraction of a pixel (box filter of width ``pixel``) on the negative side of an edge."""
    return np.clip(0.5 - signed / pixel, 0.0, 1.0)


def _stripes(u: np.ndarray, period: float, pixel: float) -> np.ndarray:
    """Anti-aliased square wave along ``u``: 1 on half of each period, 0 on the other half."""
    tri = np.abs(np.mod(u / period, 1.0) - 0.5)  # 0 at the band centre .. 0.5 at its middle
    return _edge_coverage((0.25 - tri) * period, pixel)


def _draw_shape(kind: str, size: float, rng: np.random.Generator) -> dict:
    """Random proportions of a shape of the given kind and overall radius ``size``."""
    if kind == "ellipse":
        aspect = 1.0 if rng.random() < 0.5 else rng.uniform(0.55, 0.9)
        return {"a": size, "b": size * aspect}
    if kind == "rectangle":
        aspect = 1.0 if rng.random() < 0.4 else rng.uniform(0.45, 0.85)
        half = size * 0.85
        return {"hw": half, "hh": half * aspect}
    # triangle: a jittered equilateral triangle, centred on its centroid
    angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
    radii = size * 1.15 * rng.uniform(0.85, 1.1, 3)
    verts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return {"verts": verts - verts.mean(axis=0)}


def _shape_sdf(kind: str, params: dict, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Signed distance (in image units) to a shape, at local-frame coordinates ``(lx, ly)``."""
    if kind == "ellipse":
        return _sdf_ellipse(lx, ly, params["a"], params["b"])
    if kind == "rectangle":
        return _sdf_box(lx, ly, params["hw"], params["hh"])
    return _sdf_triangle(lx, ly, params["verts"])


#: Styles of :func:`render_synthetic_image`.
IMAGE_STYLES = ("scenes", "simple")


def _check_style(style: str) -> None:
    if style not in IMAGE_STYLES:
        raise ConfigError(f"unknown synthetic image style {style!r}; choose one of {', '.join(IMAGE_STYLES)}")


def render_synthetic_image(rng: np.random.Generator, resolution: int, style: str = "scenes") -> np.ndarray:
    """Render one synthetic image.

    ``style="scenes"`` (default): 1-3 anti-aliased shapes on a gradient background, described
    below. ``style="simple"``: one flat-coloured ellipse, rectangle or triangle on a flat
    background of a contrasting hue (:func:`_render_simple_image`); this is the demo's data,
    chosen so that a tiny model learns it within a few minutes of CPU time.

    The scene is defined in continuous coordinates, so the same draws give the same picture at
    any ``resolution``: a two-colour linear gradient background; then ellipses/circles,
    (rotated) rectangles/squares and triangles with a soft drop shadow, each filled flat, with a
    shading gradient, with stripes or with a checker pattern. Edges are anti-aliased analytically
    (pixel coverage from signed distance functions); textures finer than about two pixels fade
    to their mean colour instead of aliasing.

    Returns:
        ``(resolution, resolution, 3)`` ``uint8`` RGB array.
    """
    res = _check_int("resolution", resolution, 1)
    _check_style(style)
    pixel = 1.0 / res
    coords = (np.arange(res, dtype=np.float64) + 0.5) * pixel  # pixel centres in [0, 1]
    x, y = np.meshgrid(coords, coords, indexing="xy")  # x: width, y: height (down)
    if style == "simple":
        return _to_uint8(_render_simple_image(rng, x, y, pixel))

    # Background: two related colours, light or dark theme, along a random direction.
    hue = rng.random()
    if rng.random() < 0.6:
        v0, v1 = rng.uniform(0.78, 0.97), rng.uniform(0.5, 0.72)
    else:
        v0, v1 = rng.uniform(0.12, 0.28), rng.uniform(0.3, 0.48)
    c0 = _hsv(hue, rng.uniform(0.1, 0.4), v0)
    c1 = _hsv(hue + rng.uniform(-0.12, 0.12), rng.uniform(0.15, 0.5), v1)
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = np.cos(theta), np.sin(theta)
    extent = abs(dx) + abs(dy)
    t = ((x - 0.5) * dx + (y - 0.5) * dy) / extent + 0.5
    t = t * t * (3 - 2 * t)  # smoothstep
    img = c0 + (c1 - c0) * t[..., None]

    # Shapes, drawn back to front with a common light direction for the shadows.
    n_shapes = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    shadow_angle = rng.uniform(0.15, 0.6) * np.pi
    shadow_dx, shadow_dy = np.cos(shadow_angle), np.sin(shadow_angle)
    for _ in range(n_shapes):
        kind = ("ellipse", "rectangle", "triangle")[rng.integers(3)]
        size = rng.uniform(0.14, 0.3) * (1.0 if n_shapes == 1 else 0.8)
        cx, cy = rng.uniform(0.22, 0.78, 2)
        angle = rng.uniform(0, 2 * np.pi)
        lx, ly = _rotate(x - cx, y - cy, angle)
        params = _draw_shape(kind, size, rng)
        sdf = _shape_sdf(kind, params, lx, ly)

        # Soft shadow: the same shape, offset and blurred, darkening what lies beneath.
        offset = size * 0.12
        slx, sly = _rotate(x - cx - offset * shadow_dx, y - cy - offset * shadow_dy, angle)
        shadow_sdf = _shape_sdf(kind, params, slx, sly)
        blur = max(size * 0.15, pixel)
        shadow = np.clip(0.5 - shadow_sdf / blur, 0.0, 1.0) * 0.35
        img = img * (1.0 - shadow[..., None])

        # Fill.
        shape_hue = hue + rng.uniform(0.2, 0.8)
        base = _hsv(shape_hue, rng.uniform(0.5, 0.9), rng.uniform(0.7, 1.0))
        fill_kind = rng.choice(["flat", "shade", "stripes", "checker"], p=[0.35, 0.3, 0.2, 0.15])
        if fill_kind == "flat":
            fill = np.broadcast_to(base, img.shape)
        elif fill_kind == "shade":
            light = 0.6 * base + 0.4
            dark = base * 0.45
            sa = rng.uniform(0, 2 * np.pi)
            u = (lx * np.cos(sa) + ly * np.sin(sa)) / (2 * size) + 0.5
            u = np.clip(u, 0.0, 1.0)[..., None]
            fill = light + (dark - light) * u
        else:
            second = base * 0.45 if rng.random() < 0.5 else 0.45 * base + 0.55
            period = size * rng.uniform(0.4, 0.7)
            sa = rng.uniform(0, np.pi) if fill_kind == "stripes" else 0.0
            u, v = _rotate(lx, ly, sa)
            pattern = _stripes(u, period, pixel)
            if fill_kind == "checker":
                pv = _stripes(v, period, pixel)
                pattern = pattern * pv + (1.0 - pattern) * (1.0 - pv)
            # Fade patterns finer than ~2 pixels per band towards their mean (no aliasing).
            contrast = np.clip((period / pixel - 3.0) / 3.0, 0.0, 1.0)
            pattern = 0.5 + (pattern - 0.5) * contrast
            fill = second + (base - second) * pattern[..., None]

        alpha = _edge_coverage(sdf, pixel)[..., None]
        img = img * (1.0 - alpha) + fill * alpha

    return _to_uint8(img)


def _render_simple_image(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, pixel: float) -> np.ndarray:
    """One flat shape on a flat background, at pixel centres ``(x, y)``: ``(H, W, 3)`` in [0, 1].

    The background is light or dark, of any hue, moderately saturated; the shape's hue is at
    least a quarter turn away and its brightness contrasts with the background.
    """
    hue = rng.random()
    dark = rng.random() < 0.4
    background = _hsv(hue, rng.uniform(0.25, 0.6), rng.uniform(0.15, 0.3) if dark else rng.uniform(0.75, 0.95))
    kind = ("ellipse", "rectangle", "triangle")[rng.integers(3)]
    size = rng.uniform(0.2, 0.32)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    lx, ly = _rotate(x - cx, y - cy, rng.uniform(0, 2 * np.pi))
    sdf = _shape_sdf(kind, _draw_shape(kind, size, rng), lx, ly)
    fill = _hsv(hue + rng.uniform(0.25, 0.75), rng.uniform(0.6, 0.95),
                rng.uniform(0.75, 1.0) if dark else rng.uniform(0.3, 0.6))
    alpha = _edge_coverage(sdf, pixel)[..., None]
    return background * (1.0 - alpha) + fill * alpha


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(img * 255.0 + 0.5), 0, 255).astype(np.uint8)


def synth_images(
    out_dir: PathLike,
    *,
    num: int,
    resolution: int,
    seed: int,
    overwrite: bool = False,
    split_test: int = 0,
    style: str = "scenes",
) -> list[Path]:
    """Write a synthetic image dataset in the ImageFolder layout (``style``: see
    :func:`render_synthetic_image`).

    Files: ``out_dir/train/00000.png ...`` (``num`` images) and, if ``split_test > 0``,
    ``out_dir/test/00000.png ...`` (``split_test`` more, never equal to training items).
    Nothing else is written. With ``overwrite=True`` a non-empty ``out_dir`` is accepted and
    numbered PNGs left in ``train/`` and ``test/`` by an earlier run are removed; other files
    are left alone.

    Returns:
        The written paths, training images first.

    Raises:
        DataError: ``out_dir`` is not empty (and ``overwrite`` is false) or is a file.
        ConfigError: ``num``, ``resolution``, ``seed`` or ``split_test`` is invalid.
    """
    num = _check_int("num", num, 1)
    resolution = _check_int("resolution", resolution, 1)
    seed = _check_int("seed", seed, 0)
    split_test = _check_int("split_test", split_test, 0)
    _check_style(style)
    out = _prepare_out_dir(out_dir, overwrite)

    width = max(5, len(str(max(num, split_test) - 1)))
    numbered = re.compile(r"\d+\.png")
    written: list[Path] = []
    for split, count in (("train", num), ("test", split_test)):
        folder = out / split
        names = [f"{i:0{width}d}.png" for i in range(count)]
        if overwrite:
            _remove_stale(folder, numbered, set(names))
        for i, name in enumerate(names):
            image = render_synthetic_image(_item_rng(seed, split, i), resolution, style)
            written.append(save_image(image, folder / name))
    return written
