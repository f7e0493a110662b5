"""The occupancy (3-D shape) domain: fields -> dense grids -> meshes -> files, and 3-D metrics.

A shape field (``OccupancyAutoencoder.decode``) returns occupancy *logits* at normalised
coordinates ``u`` in ``[-1, 1]^3`` (:mod:`ddmi.vae.triplane_coords`); the world frame is ``p = u *
half_extent`` (the padded unit cube, ``half_extent = 0.55``). Meshes are extracted at any grid
resolution ``R``: the field is evaluated at the ``R^3`` cell centres of the box, slab by slab (at
most ``slab_points`` coordinates exist at a time), and marching cubes runs at the logit of the
occupancy threshold (0.2 -> ``ln(0.2/0.8)``, as in the paper's evaluation).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ddmi.data.images import tile
from ddmi.data.npz import load_npy
from ddmi.errors import ConfigError, DataError
from ddmi.fields import Field, pixel_centers
from ddmi.files import output_stems
from ddmi.progress import progress_bar, share
from ddmi.render import mesh as meshio

Mesh = tuple[np.ndarray, np.ndarray]   # (vertices (V, 3) float32 world frame, faces (F, 3) int64)


def field_volume(field: Field, resolution: int, *, slab_points: int = 1 << 18) -> np.ndarray:
    """Logits of every field of the batch on the ``R^3`` cell-centre grid of ``[-1, 1]^3``.

    Returns ``(B, R, R, R)`` float32 indexed ``[b, ix, iy, iz]``.
    """
    r = int(resolution)
    if r < 2:
        raise ConfigError(f"mesh resolution must be >= 2, got {r}")
    device = field.planes[0].device
    c = pixel_centers(r, device=device)
    yz = torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1).reshape(-1, 2)   # (R*R, 2): y, z
    out = np.empty((field.batch_size, r, r, r), np.float32)
    step = max(1, slab_points // (r * r))
    with torch.inference_mode():
        for x0 in range(0, r, step):
            xs = c[x0:x0 + step]
            coords = torch.cat([xs.repeat_interleave(r * r)[:, None], yz.repeat(len(xs), 1)], dim=1)
            logits = field.query(coords)[..., 0]                                  # (B, k*R*R)
            out[:, x0:x0 + len(xs)] = logits.reshape(field.batch_size, len(xs), r, r).float().cpu().numpy()
    return out


def extract_meshes(field: Field, resolution: int, *, threshold: float = 0.2, half_extent: float = 0.55,
                   slab_points: int = 1 << 18, progress=None) -> list[Mesh]:
    """One watertight mesh per field of the batch, in the world frame (one field at a time, so
    memory holds a single ``R^3`` volume). ``progress``: a bar (:func:`ddmi.progress.progress_bar`)
    advanced by one per mesh."""
    level = math.log(threshold / (1.0 - threshold))
    meshes = []
    for i in range(field.batch_size):
        vol = field_volume(field[i], resolution, slab_points=slab_points)[0]
        meshes.append(meshio.marching_cubes(vol, level, lo=-half_extent, hi=half_extent))
        if progress is not None:
            progress.update(1)
    return meshes


def write_mesh_files(meshes: list[Mesh], out: Path, stems: list[str], *, preview_size: int = 192,
                     half_extent: float = 0.55) -> tuple[list[Path], list[np.ndarray]]:
    """``stem.ply``, ``stem.obj`` and ``stem.png`` (three shaded views) per mesh: ``(paths, grid
    tiles)``, a tile being one view per mesh (see :func:`write_grid`)."""
    written, tiles = [], []
    for (v, f), stem in zip(meshes, stems):
        written.append(meshio.write_ply(out / f"{stem}.ply", v, f))
        written.append(meshio.write_obj(out / f"{stem}.obj", v, f))
        sheet = meshio.preview(v, f, size=preview_size, extent=half_extent)
        written.append(meshio.write_png(out / f"{stem}.png", sheet))
        tiles.append(sheet[:, :preview_size + 4])
    return written, tiles


def write_grid(tiles: list[np.ndarray], path: Path) -> Path:
    """One contact sheet of the tiles of :func:`write_mesh_files` (at most 4 per row)."""
    return meshio.write_png(path, tile(tiles, ncol=min(len(tiles), 4), pad_value=255))


def write_meshes(meshes: list[Mesh], out: Path, stems: list[str], *, preview_size: int = 192,
                 half_extent: float = 0.55, grid_name: str | None = "grid.png") -> list[Path]:
    """:func:`write_mesh_files`, plus a grid of one view per mesh (``grid_name``)."""
    written, tiles = write_mesh_files(meshes, out, stems, preview_size=preview_size, half_extent=half_extent)
    if grid_name:
        written.append(write_grid(tiles, out / grid_name))
    return written


def preview_sheet(meshes: list[Mesh], *, size: int = 128, half_extent: float = 0.55, ncol: int = 8) -> np.ndarray:
    tiles = [meshio.render_mesh(v, f, size=size, extent=half_extent) for v, f in meshes]
    return tile(tiles, ncol=min(ncol, len(tiles)), pad_value=255)


# ------------------------------------------------------------------------------------------
# metrics


def mesh_point_clouds(meshes: list[Mesh], num_points: int = 2048, *, seed: int = 0) -> torch.Tensor:
    """``num_points`` surface samples of every mesh: ``(N, num_points, 3)`` (zeros for empty ones)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([meshio.sample_mesh_surface(v, f, num_points, rng)[0] for v, f in meshes]))


def shape_metrics(generated: torch.Tensor, reference: torch.Tensor, **kw) -> dict[str, float]:
    """MMD-CD, COV-CD and 1-NNA-CD (docs/official-code.md §7) of generated vs reference clouds ``(N, P, 3)``, each
    cloud normalised to the unit sphere first (bounding-box centre, max radius 1)."""
    from ddmi.metrics.pointcloud import mmd_cov_1nna, normalize_to_unit_sphere
    return mmd_cov_1nna(normalize_to_unit_sphere(generated.float()), normalize_to_unit_sphere(reference.float()), **kw)


# ------------------------------------------------------------------------------------------
# commands


def _stems(args, count: int) -> dict[int, list[str]]:
    prefix = "interpolation" if args.interpolate else "sample"
    return {r: [f"{prefix}_{i:05d}_{r}" for i in range(count)] for r in args.resolution or [128]}


def sample_targets(args, ae, count: int) -> list[Path]:
    out, stems = Path(args.out), _stems(args, count)
    return ([out / f"{s}.{ext}" for r in stems for s in stems[r] for ext in ("ply", "obj", "png")]
            + [out / f"grid_{r}.png" for r in stems])


def write_samples(args, ae, batches, count: int, shard, log) -> str:
    """``ddmi sample`` for a shapes run: meshes (PLY + OBJ) and PNG previews per sample (this
    process's batches), a grid per grid resolution (main process)."""
    out, stems = Path(args.out), _stems(args, count)
    resolutions = list(stems)
    tiles, empty = {r: [] for r in resolutions}, {r: 0 for r in resolutions}
    where = ", ".join(f"{r}^3" for r in resolutions)
    with progress_bar(share(count, shard.world) * len(resolutions), f"meshing at {where}", "mesh",
                      enabled=shard.is_main) as bar:
        for i, z in batches:
            for r in resolutions:
                meshes = extract_meshes(ae.decode(z), r, threshold=ae.threshold, half_extent=ae.half_extent,
                                        progress=bar)
                _, t = write_mesh_files(meshes, out, stems[r][i:i + len(z)], half_extent=ae.half_extent)
                tiles[r].append((i, t))
                empty[r] += sum(len(f) == 0 for _, f in meshes)
    for r in resolutions:
        grid = [t for batch in shard.gather_by_start(tiles[r]) for t in batch]
        n_empty = sum(shard.gather([empty[r]]))
        if shard.is_main:
            write_grid(grid, out / f"grid_{r}.png")
        if n_empty:
            log(f"warning: {n_empty} of {count} samples at {r}^3 have an empty surface")
    return f"wrote {count} meshes (PLY + OBJ + PNG) at {', '.join(f'{r}^3' for r in resolutions)} to {out}"


MESH_POINTS = 100_000       # surface points drawn from a mesh input (ONet's pointcloud.npz holds 100k)
POINT_SUFFIXES = (".npz", ".npy", ".ply", ".obj", ".xyz", ".txt")


def load_point_cloud(path: Path) -> np.ndarray:
    """Points ``(N, 3)`` of a ``.npz`` (array ``points``), ``.npy``, text file, or a mesh that
    ddmi writes (``.ply``, ``.obj``: :data:`MESH_POINTS` points sampled uniformly on its surface)."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            from ddmi.data.shapes import read_pointcloud_npz
            return read_pointcloud_npz(path)
        if path.suffix == ".npy":
            pts = load_npy(path)
        elif path.suffix in (".ply", ".obj"):
            verts, faces = (meshio.read_ply if path.suffix == ".ply" else meshio.read_obj)(path)
            pts = meshio.sample_mesh_surface(verts, faces, MESH_POINTS, np.random.default_rng(0))[0] \
                if len(faces) else verts
        else:
            pts = np.loadtxt(path, ndmin=2)[:, :3]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read a point cloud ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    pts = np.asarray(pts, np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3 or not len(pts) or not np.isfinite(pts).all():
        raise DataError(f"{path}: expected finite points of shape (N, 3), got {pts.shape}")
    return pts


def reconstruct_targets(args, ae) -> list[Path]:
    """Every file ``ddmi reconstruct`` writes for a shapes run (checked before any compute)."""
    out, res = Path(args.out), args.resolution or 128
    return [out / f"{s}_rec{res}.{e}" for s in output_stems(args.inputs) for e in ("ply", "obj", "png")] \
        + [out / "reconstructions.png"]


def reconstruct_shapes_command(ae, args, log=print) -> int:
    """``ddmi reconstruct`` for a shapes run: point clouds -> meshes (+ PNG previews), on the
    autoencoder's device."""
    from ddmi.devices import model_device
    out = Path(args.out)
    res = args.resolution or 128
    rng = np.random.default_rng(0)
    stems = [f"{s}_rec{res}" for s in output_stems(args.inputs)]
    meshes = []
    with progress_bar(len(args.inputs), f"reconstructing at {res}^3", "mesh") as bar:
        for path in args.inputs:
            pts = load_point_cloud(Path(path))
            if getattr(args, "normalize", False):
                lo, hi = pts.min(0), pts.max(0)
                pts = (pts - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-12)
            pts = pts[rng.integers(0, len(pts), ae.num_points)]
            with torch.inference_mode():
                z = ae.reconstruction_latent(ae.encode(torch.from_numpy(pts)[None].to(model_device(ae))).mode())
                meshes += extract_meshes(ae.decode(z), res, threshold=ae.threshold, half_extent=ae.half_extent,
                                         progress=bar)
    write_meshes(meshes, out, stems, half_extent=ae.half_extent, grid_name="reconstructions.png")
    log(f"wrote {len(meshes)} reconstructed meshes at {res}^3 to {out} (PLY + OBJ + PNG each)")
    return 0
