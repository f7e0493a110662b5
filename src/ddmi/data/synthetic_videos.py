"""Synthetic videos: drifting clouds over a sky gradient and moving textured shapes.

Each clip is defined in continuous space and time, so the same draws give the same motion at any
resolution and frame count: a vertical sky gradient; soft clouds (sums of Gaussian puffs) that
drift with one wind velocity and wrap around horizontally; and one or two shapes (ellipse,
rectangle, triangle; flat, striped or checkered) that translate along a straight line and
rotate slowly, with anti-aliased edges. The motion over a clip is a sizeable fraction of the
frame, so there is something for the time planes to learn.

Written in the frame-folder layout of :mod:`ddmi.data.videos` with the rules of
:mod:`ddmi.data.synthetic` (deterministic per item, atomic files, no silent overwrite)::

    OUT/train/video_00000/frame00000.png ...
    OUT/val/video_00000/frame00000.png ...
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ddmi.data.images import save_image
from ddmi.data.synthetic import (PathLike, _check_int, _draw_shape, _edge_coverage, _hsv, _item_rng,
                        _prepare_out_dir, _remove_stale, _rotate, _shape_sdf, _stripes)

__all__ = ["render_synthetic_video", "synth_videos"]


def render_synthetic_video(rng: np.random.Generator, frames: int, resolution: int) -> np.ndarray:
    """One clip: ``(frames, resolution, resolution, 3)`` uint8 (module docstring)."""
    frames = _check_int("frames", frames, 1)
    res = _check_int("resolution", resolution, 1)
    pixel = 1.0 / res
    c = (np.arange(res) + 0.5) * pixel
    x, y = np.meshgrid(c, c, indexing="xy")                       # [0, 1], y down
    times = (np.arange(frames) + 0.5) / frames                    # frame centres in [0, 1]

    hue = rng.uniform(0.52, 0.68)                                 # blue-ish skies, some dusk
    top = _hsv(hue, rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.8))
    bottom = _hsv(hue + rng.uniform(-0.5, 0.1) * (rng.random() < 0.3), rng.uniform(0.1, 0.4),
                  rng.uniform(0.8, 1.0))
    sky = top + (bottom - top) * (y ** 1.2)[..., None]

    wind = rng.uniform(0.25, 0.6) * rng.choice([-1, 1])           # frame widths per clip
    rise = rng.uniform(-0.1, 0.1)
    n_puffs = int(rng.integers(6, 12))
    puffs = np.stack([rng.uniform(0, 1, n_puffs), rng.uniform(0.05, 0.75, n_puffs),
                      rng.uniform(0.05, 0.14, n_puffs), rng.uniform(0.5, 1.0, n_puffs)], 1)
    cloud_col = _hsv(hue, rng.uniform(0.0, 0.15), rng.uniform(0.9, 1.0))

    shapes = []
    for _ in range(int(rng.integers(1, 3))):
        kind = ("ellipse", "rectangle", "triangle")[rng.integers(3)]
        size = rng.uniform(0.1, 0.18)
        p0 = rng.uniform(0.25, 0.75, 2)
        vel = rng.uniform(0.25, 0.5) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        base = _hsv(hue + rng.uniform(0.25, 0.75), rng.uniform(0.6, 0.95), rng.uniform(0.7, 1.0))
        shapes.append(dict(kind=kind, size=size, p0=p0 - vel / 2, vel=vel, params=_draw_shape(kind, size, rng),
                           angle=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-1.2, 1.2), base=base,
                           second=base * 0.4, period=size * rng.uniform(0.5, 0.8),
                           pattern=rng.choice(["flat", "stripes", "checker"], p=[0.3, 0.45, 0.25])))

    out = np.empty((frames, res, res, 3), np.uint8)
    for k, t in enumerate(times):
        cover = np.zeros_like(x)
        for px, py, r, a in puffs:
            cx = (px + wind * t) % 1.0
            cy = py + rise * t
            dx = np.minimum(np.abs(x - cx), 1.0 - np.abs(x - cx))     # wraps horizontally
            cover += a * np.exp(-(dx ** 2 + (y - cy) ** 2) / (2 * r * r))
        cover = np.clip(cover, 0, 1) ** 1.5
        img = sky + (cloud_col - sky) * (0.85 * cover)[..., None]
        for s in shapes:
            cx, cy = s["p0"] + s["vel"] * t
            angle = s["angle"] + s["spin"] * t
            lx, ly = _rotate(x - cx, y - cy, angle)
            sdf = _shape_sdf(s["kind"], s["params"], lx, ly)
            if s["pattern"] == "flat":
                fill = np.broadcast_to(s["base"], img.shape)
            else:
                pat = _stripes(lx, s["period"], pixel)
                if s["pattern"] == "checker":
                    pv = _stripes(ly, s["period"], pixel)
                    pat = pat * pv + (1 - pat) * (1 - pv)
                contrast = np.clip((s["period"] / pixel - 3.0) / 3.0, 0.0, 1.0)
                pat = 0.5 + (pat - 0.5) * contrast
                fill = s["second"] + (s["base"] - s["second"]) * pat[..., None]
            alpha = _edge_coverage(sdf, pixel)[..., None]
            img = img * (1 - alpha) + fill * alpha
        out[k] = np.clip(np.floor(img * 255.0 + 0.5), 0, 255).astype(np.uint8)
    return out


def synth_videos(out_dir: PathLike, *, num: int, frames: int = 16, resolution: int = 64, seed: int = 0,
                 overwrite: bool = False, split_val: int | None = None) -> list[Path]:
    """Write ``num`` training videos and ``split_val`` validation ones (default ``max(1, num // 8)``)
    as frame folders (module docstring). Returns the written frame paths, training ones first.

    With ``overwrite=True`` a non-empty ``out_dir`` is accepted and ``video_*`` folders of an
    earlier run are rewritten (stale numbered frames removed); other files are left alone."""
    num = _check_int("num", num, 1)
    frames = _check_int("frames", frames, 1)
    resolution = _check_int("resolution", resolution, 1)
    seed = _check_int("seed", seed, 0)
    split_val = max(1, num // 8) if split_val is None else _check_int("split_val", split_val, 0)
    out = _prepare_out_dir(out_dir, overwrite)
    numbered = re.compile(r"frame\d+\.png")
    written: list[Path] = []
    for split, stream, count in (("train", "train", num), ("val", "test", split_val)):
        for i in range(count):
            folder = out / split / f"video_{i:05d}"
            names = [f"frame{k:05d}.png" for k in range(frames)]
            if overwrite:
                _remove_stale(folder, numbered, set(names))
            clip = render_synthetic_video(_item_rng(seed, stream, i), frames, resolution)
            written += [save_image(f, folder / n) for f, n in zip(clip, names)]
    return written
