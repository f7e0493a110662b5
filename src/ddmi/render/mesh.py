"""Meshes: marching cubes on a sampled grid, PLY / OBJ writers, and a CPU preview renderer.

Grid convention: a volume ``(R, R, R)`` indexed ``[ix, iy, iz]`` holds values at the *cell
centres* of the cube ``[lo, hi]^3`` split into ``R`` cells per axis (the pixel-centre convention
of :mod:`ddmi.fields` in 3-D). :func:`marching_cubes` pads the volume with a very low value, so a
shape touching the box still gives a closed (watertight) surface, and maps the vertices back to
world coordinates. Faces are oriented counter-clockwise seen from outside (outward normals, for
volumes whose values are high inside).

The preview renderer needs no GUI or OpenGL: it samples points uniformly on the triangles (area
weighted), projects them orthographically, keeps the nearest per pixel (a z-buffer of splats)
and shades them with their face normal (Lambert + ambient).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ddmi.data.images import tile
from ddmi.errors import MissingDependencyError
from ddmi.files import atomic_write_bytes


def marching_cubes(volume: np.ndarray, level: float, *, lo: float = -0.5, hi: float = 0.5
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface ``volume == level`` -> ``(vertices (V, 3) float32, faces (F, 3) int64)``.

    Returns empty arrays when the level is not crossed (an empty or a full box). Uses
    ``skimage.measure.marching_cubes`` (Lewiner).
    """
    try:
        from skimage.measure import marching_cubes as _mc
    except ImportError:
        raise MissingDependencyError("mesh extraction needs scikit-image: pip install scikit-image") from None
    volume = np.asarray(volume, dtype=np.float32)
    r = volume.shape[0]
    if volume.ndim != 3 or volume.shape != (r, r, r):
        raise ValueError(f"expected a cubic volume, got shape {volume.shape}")
    pad = float(min(level, np.nanmin(volume)) - 1e6)
    padded = np.pad(np.nan_to_num(volume, nan=pad), 1, mode="constant", constant_values=pad)
    if not (padded.max() > level):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    verts, faces, _, _ = _mc(padded, level=level, gradient_direction="ascent", allow_degenerate=False)
    cell = (hi - lo) / r
    verts = lo + (verts - 0.5) * cell
    return verts.astype(np.float32), faces.astype(np.int64)


# ------------------------------------------------------------------------------------------
# mesh measures


def mesh_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a closed, outward-oriented triangle mesh (divergence theorem)."""
    a, b, c = (verts[faces[:, k]].astype(np.float64) for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def is_watertight(faces: np.ndarray) -> bool:
    """Every edge is shared by exactly two faces, with opposite directions (closed, consistently
    oriented 2-manifold edges)."""
    if len(faces) == 0:
        return False
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    uniq, counts = np.unique(directed, axis=0, return_counts=True)
    if (counts != 1).any():
        return False
    undirected = np.sort(directed, axis=1)
    _, ucounts = np.unique(undirected, axis=0, return_counts=True)
    return bool((ucounts == 2).all())


def sample_mesh_surface(verts: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform by area on the triangles and the unit normals of their faces."""
    if len(faces) == 0:
        return np.zeros((n, 3), np.float32), np.zeros((n, 3), np.float32)
    a, b, c = (verts[faces[:, k]].astype(np.float64) for k in range(3))
    cross = np.cross(b - a, c - a)
    area = np.linalg.norm(cross, axis=1)
    normals = cross / np.maximum(area, 1e-20)[:, None]
    f = rng.choice(len(faces), size=n, p=area / area.sum()) if area.sum() > 0 else rng.integers(0, len(faces), n)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    pts = a[f] + u[:, None] * (b[f] - a[f]) + v[:, None] * (c[f] - a[f])
    return pts.astype(np.float32), normals[f].astype(np.float32)


# ------------------------------------------------------------------------------------------
# writers (atomic)


def write_ply(path, verts: np.ndarray, faces: np.ndarray) -> Path:
    """Binary little-endian PLY: float32 vertices, int32 triangle faces."""
    header = (f"ply\nformat binary_little_endian 1.0\ncomment written by ddmi\n"
              f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    face_rec = np.zeros(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_rec["n"], face_rec["idx"] = 3, faces
    body = np.asarray(verts, "<f4").tobytes() + face_rec.tobytes()
    return atomic_write_bytes(path, header.encode() + body)


def write_obj(path, verts: np.ndarray, faces: np.ndarray) -> Path:
    """Wavefront OBJ (1-based indices)."""
    buf = io.StringIO()
    buf.write("# written by ddmi\n")
    np.savetxt(buf, verts, fmt="v %.6f %.6f %.6f")
    if len(faces):
        np.savetxt(buf, faces + 1, fmt="f %d %d %d")
    return atomic_write_bytes(path, buf.getvalue().encode())


def read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    """Read back a PLY written by :func:`write_ply`."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    head = data[:end].decode().splitlines()
    nv = int(next(line for line in head if line.startswith("element vertex")).split()[-1])
    nf = int(next(line for line in head if line.startswith("element face")).split()[-1])
    verts = np.frombuffer(data, "<f4", nv * 3, end).reshape(nv, 3)
    rec = np.frombuffer(data, [("n", "u1"), ("idx", "<i4", (3,))], nf, end + nv * 12)
    return verts.copy(), rec["idx"].astype(np.int64)


def read_obj(path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` and triangles ``(F, 3)`` (0-based) of a Wavefront OBJ such as
    :func:`write_obj` writes (``v`` and ``f`` lines; polygons are fanned into triangles,
    ``f a/b/c`` index forms and negative indices are understood)."""
    verts, faces = [], []
    for line in Path(path).read_text(errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "f":
            idx = [int(p.split("/")[0]) for p in parts[1:]]
            idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
            faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    v = np.asarray(verts, np.float32).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"face indices outside the {len(v)} vertices")
    return v, f


# ------------------------------------------------------------------------------------------
# preview


def _rotation(elev_deg: float, azim_deg: float) -> np.ndarray:
    """World -> view rotation of a camera looking at the origin from azimuth ``azim`` (about y,
    from +z towards +x) and elevation ``elev``; view axes: x right, y up, z towards the viewer."""
    a, e = math.radians(azim_deg), math.radians(elev_deg)
    ry = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    return rx @ ry


def render_mesh(verts: np.ndarray, faces: np.ndarray, *, size: int = 256, elev: float = 25.0,
                azim: float = 35.0, extent: float = 0.55, color=(0.55, 0.7, 0.95), seed: int = 0) -> np.ndarray:
    """Shaded orthographic view of a mesh -> ``(size, size, 3)`` uint8 on a white background.

    ``extent``: half-size of the world box to frame (its bounding sphere fills the image).
    """
    img = np.ones((size, size, 3), np.float32)
    if len(faces) == 0:
        return (img * 255).astype(np.uint8)
    pts, nrm = sample_mesh_surface(verts, faces, 6 * size * size, np.random.default_rng(seed))
    rot = _rotation(elev, azim)
    p, n = pts @ rot.T, nrm @ rot.T
    scale = size / (2 * extent * math.sqrt(3) * 1.02)
    px = np.floor(p[:, 0] * scale + size / 2).astype(np.int64)
    py = np.floor(size / 2 - p[:, 1] * scale).astype(np.int64)
    light = np.array([-0.4, 0.6, 0.7])
    light /= np.linalg.norm(light)
    facing = np.where(n[:, 2:3] < 0, -n, n)                 # two-sided
    shade = 0.3 + 0.7 * np.clip(facing @ light, 0, 1)
    rgb = np.clip(np.asarray(color)[None] * shade[:, None] + 0.15 * facing[:, 2:3] ** 8, 0, 1)
    xs, ys, zs, cs = [], [], [], []
    for dx in (0, 1):                                       # 2x2 splats close small gaps
        for dy in (0, 1):
            xs.append(px + dx), ys.append(py + dy), zs.append(p[:, 2]), cs.append(rgb)
    x, y, z, c = (np.concatenate(t) for t in (xs, ys, zs, cs))
    ok = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    x, y, z, c = x[ok], y[ok], z[ok], c[ok]
    pix = y * size + x
    order = np.lexsort((-z, pix))                           # per pixel, nearest (largest z) first
    pix, c = pix[order], c[order]
    first = np.ones(len(pix), bool)
    first[1:] = pix[1:] != pix[:-1]
    img.reshape(-1, 3)[pix[first]] = c[first]
    return (img * 255 + 0.5).astype(np.uint8)


def write_png(path, image: np.ndarray) -> Path:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


PREVIEW_VIEWS = ((25.0, 35.0), (25.0, 125.0), (60.0, 215.0))


def preview(verts: np.ndarray, faces: np.ndarray, *, size: int = 192, extent: float = 0.55,
            views=PREVIEW_VIEWS) -> np.ndarray:
    """Several views of one mesh side by side."""
    return tile([render_mesh(verts, faces, size=size, elev=e, azim=a, extent=extent) for e, a in views],
                ncol=len(views), pad_value=255)
