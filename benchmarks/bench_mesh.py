"""Mesh extraction from occupancy fields at 128^3 and 256^3 (``ddmi sample`` for shapes).

Two parts per resolution R, timed separately because they scale differently:

* **query**: ``field_volume`` of one decoded shapes-tiny field (random weights; the cost does not
  depend on them): ``R^3`` MLP evaluations in slabs of 2^18 points, into one float32 volume;
* **mesh**: ``marching_cubes`` (skimage, Lewiner) at the 0.2 threshold plus the PLY + OBJ writers,
  on the exact occupancy volume of a synthetic chair at the same resolution (a realistic surface;
  a random-weight field would give an arbitrary one).

Peak memory is the process's resident high-water mark over the measured calls (``+RSS``: on top
of what was resident before). Run: ``python -m benchmarks --only mesh`` (or
``python -m benchmarks.bench_mesh`` for a plain printout).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from .common import Context, Row, bench, case


def _field():
    from ddmi.config import load_config
    from ddmi.models import build_autoencoder
    torch.manual_seed(0)
    ae = build_autoencoder(load_config("shapes-tiny")).eval()
    with torch.inference_mode():
        field = ae.decode(torch.randn(1, *ae.latent_shape))
    return ae, field


def _chair_volume(r: int) -> np.ndarray:
    from ddmi.data.synthetic_shapes import occupancy, random_shape
    parts = random_shape(np.random.default_rng(1), "chair")
    c = (np.arange(r) + 0.5) / r * 1.1 - 0.55
    out = np.empty((r, r, r), np.float32)
    yz = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    for i, x in enumerate(c):   # slab by slab: no R^3 x 3 coordinate array
        pts = np.concatenate([np.full((len(yz), 1), x), yz], 1)
        out[i] = np.where(occupancy(parts, pts), 10.0, -10.0).reshape(r, r)
    return out


def _rows(r: int, ctx: Context, repeats: int) -> list[Row]:
    from ddmi.domains.occupancy.meshes import field_volume
    from ddmi.render.mesh import marching_cubes, write_obj, write_ply
    ae, field = _field()
    w, n = ctx.reps(0, repeats)
    tq = bench(lambda: field_volume(field, r), warmup=w, repeats=n)
    pts_per_s = r**3 / tq.median
    q = tq.row(f"mesh-{r}-query", f"field query on a {r}^3 grid (shapes-tiny MLP)", "s",
               f"{pts_per_s / 1e6:.2f} M points/s; volume {r**3 * 4 / 2**20:.0f} MiB; {w} warm-up + {n}")
    vol = _chair_volume(r)
    level = math.log(0.2 / 0.8)
    tmp = Path(tempfile.mkdtemp())
    stats = {}

    def mesh():
        v, f = marching_cubes(vol, level, lo=-0.55, hi=0.55)
        write_ply(tmp / "m.ply", v, f)
        write_obj(tmp / "m.obj", v, f)
        stats["faces"] = len(f)

    tm = bench(mesh, warmup=w, repeats=n)
    m = tm.row(f"mesh-{r}-mc", f"marching cubes + PLY/OBJ at {r}^3 (synthetic chair)", "s",
               f"{stats['faces']:,} faces; {w} warm-up + {n}")
    return [q, m]


@case("mesh-128")
def mesh_128(ctx: Context) -> list[Row]:
    """Field query + marching cubes + writers at 128^3."""
    return _rows(128, ctx, repeats=3)


@case("mesh-256", slow=True)
def mesh_256(ctx: Context) -> list[Row]:
    """Field query + marching cubes + writers at 256^3 (the paper's evaluation grid)."""
    return _rows(256, ctx, repeats=1)


@case("mesh-512", slow=True)
def mesh_512(ctx: Context) -> list[Row]:
    """Field query + marching cubes + writers at 512^3: memory is the 512 MiB volume plus a
    slab of the query (``slab_points``), whatever the resolution."""
    return _rows(512, ctx, repeats=1)


if __name__ == "__main__":  # pragma: no cover - plain printout without the suite's subprocesses
    from .common import setup_torch
    setup_torch(2)
    for r in (128, 256):
        for row in _rows(r, Context(), repeats=1):
            print(f"{row.case:16s} {row.median:8.2f} s  peak RSS {row.peak_rss_mib:7.0f} MiB "
                  f"(+{row.delta_rss_mib:.0f})  {row.extra}")
