"""Cameras, rays and volume rendering for radiance fields (NeRF domain; docs/official-code.md §6).

Conventions (one world frame for cameras, point clouds and fields):

* **Poses** are ``(4, 4)`` camera-to-world matrices in the OpenGL / Blender convention: the
  camera looks down its ``-z`` axis, ``+y`` is up in the image, ``+x`` is right; the last column
  is the camera centre in world coordinates.
* **Pinhole** with focal length ``f`` pixels (``f = 0.5 W / tan(0.5 fov)`` for a horizontal field
  of view ``fov``; srn-cars: 0.6911112 rad) and the principal point at the image centre. Pixel
  ``(i, j)`` (column, row) has its centre at ``(i + 0.5, j + 0.5)``; its ray direction is
  ``R @ ((i + 0.5 - W/2) / f, -(j + 0.5 - H/2) / f, -1)``: **not normalised**, so the ray
  parameter ``t`` is the depth along the optical axis and ``near`` / ``far`` are depths.
* **Rendering** (docs/official-code.md §6): ``num_samples`` stratified depths in ``[near, far]`` (one uniform draw
  per bin when perturbed, the bin centres otherwise), optional importance samples drawn from the
  coarse weights (same field, no second network), density ``sigma >= 0`` (the field applies the
  softplus), ``alpha_i = 1 - exp(-sigma_i * delta_i * |d|)``, transmittance-weighted colours,
  white background ``rgb += 1 - acc``. Unlike the official code, the last interval ends at
  ``far`` instead of being 1e10 long: with a softplus density (never exactly 0) a 1e10 interval
  makes every ray opaque at its last sample and the white background is never seen.
* **Memory** is bounded: :func:`render_rays` processes ``chunk`` rays at a time.
* **Official compatibility** (imported official checkpoints; ddmi's defaults unchanged): rays
  through the pixel corners (``pixel_offset=0``: ``utils.nerf_helpers.get_rays``), depths
  ``linspace(near, far, S)`` including both ends (``depth_spacing="linspace"``), and a last interval
  of ``last_delta=1e10`` (so ``acc = 1`` and the white background never shows).

A *query* is a callable ``query(points (B, M, 3), dirs (B, M, 3)) -> (sigma (B, M), rgb (B, M, 3))``
taking world points and unit view directions.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

SRN_FOV = 0.6911112          # horizontal field of view of the Points2NeRF srn-cars renders (rad)

Query = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def focal_from_fov(width: int, fov: float = SRN_FOV) -> float:
    """Focal length in pixels of a ``width``-pixel image with horizontal field of view ``fov``."""
    return 0.5 * width / math.tan(0.5 * fov)


def camera_dirs(height: int, width: int, focal: float, *, device=None, dtype=torch.float32,
                pixel_offset: float = 0.5) -> torch.Tensor:
    """Camera-space ray directions of every pixel centre: ``(H, W, 3)``, z = -1 (``pixel_offset=0``:
    through the pixels' corners, as the official ``get_rays``)."""
    j, i = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([(i + pixel_offset - 0.5 * width) / focal, -(j + pixel_offset - 0.5 * height) / focal,
                        -torch.ones_like(i)], dim=-1)


def camera_rays(c2w: torch.Tensor, height: int, width: int, focal: float, *,
                pixel_offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of every pixel of cameras ``c2w (..., 4, 4)``: origins and directions ``(..., H, W, 3)``."""
    d = camera_dirs(height, width, focal, device=c2w.device, dtype=c2w.dtype, pixel_offset=pixel_offset)
    rot = c2w[..., None, None, :3, :3]                         # (..., 1, 1, 3, 3)
    dirs = (rot @ d[..., None])[..., 0]
    origins = c2w[..., None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def pixel_rays(c2w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int,
               focal: float, *, pixel_offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of chosen pixels: ``c2w (N, 4, 4)`` with integer ``rows``/``cols`` ``(N,)`` ->
    origins, directions ``(N, 3)`` (same convention as :func:`camera_rays`)."""
    d = torch.stack([(cols + pixel_offset - 0.5 * width) / focal, -(rows + pixel_offset - 0.5 * height) / focal,
                     -torch.ones_like(cols, dtype=c2w.dtype)], dim=-1).to(c2w.dtype)
    return c2w[:, :3, 3], (c2w[:, :3, :3] @ d[..., None])[..., 0]


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """OpenGL camera-to-world pose ``(4, 4)`` of a camera at ``eye`` looking at ``target``."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    back = F.normalize(eye - target, dim=0)                    # the camera's +z
    right = F.normalize(torch.linalg.cross(up, back), dim=0)
    true_up = torch.linalg.cross(back, right)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, true_up, back, eye
    return pose.float()


def orbit_pose(azimuth: float, elevation: float, radius: float) -> torch.Tensor:
    """Camera on a sphere around the origin (y up), looking at it; angles in radians.

    Azimuth 0 puts the camera on the +z axis; positive elevation is above the xz plane."""
    eye = (radius * math.cos(elevation) * math.sin(azimuth), radius * math.sin(elevation),
           radius * math.cos(elevation) * math.cos(azimuth))
    return look_at(eye)


def turntable_poses(n: int, *, radius: float, elevation: float) -> torch.Tensor:
    """``n`` poses evenly spaced in azimuth at a fixed elevation (radians): ``(n, 4, 4)``."""
    return torch.stack([orbit_pose(2 * math.pi * k / n, elevation, radius) for k in range(n)])


# ------------------------------------------------------------------------------------------
# sampling along rays and compositing


def stratified_depths(near: float, far: float, num: int, shape: tuple[int, ...], *,
                      jitter: torch.Tensor | None = None, device=None, spacing: str = "bins") -> torch.Tensor:
    """``num`` depths per ray in ``[near, far]``: one per equal bin, at ``lower + u * width`` with
    ``u = jitter`` (``(*shape, num)`` in [0, 1)) or the bin centre. Returns ``(*shape, num)``.

    ``spacing="linspace"`` (official): ``near (1 - t) + far t`` at ``t = linspace(0, 1, num)``, and
    with ``jitter`` one draw between the midpoints around each (``utils.nerf_helpers.render_rays``)."""
    if spacing == "linspace":
        t = torch.linspace(0.0, 1.0, num, device=device)
        z = (near * (1.0 - t) + far * t).expand(*shape, num)
        if jitter is None:
            return z
        mids = 0.5 * (z[..., 1:] + z[..., :-1])
        upper, lower = torch.cat([mids, z[..., -1:]], -1), torch.cat([z[..., :1], mids], -1)
        return lower + (upper - lower) * jitter.to(device)
    assert spacing == "bins", f"unknown depth spacing {spacing!r}"
    edges = torch.linspace(near, far, num + 1, device=device)
    lower, width = edges[:-1], edges[1:] - edges[:-1]
    u = torch.full((*shape, num), 0.5, device=device) if jitter is None else jitter.to(device)
    return lower + width * u


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-transform samples of the piecewise-constant pdf ``weights (..., K)`` on the
    intervals ``bins (..., K + 1)`` at uniforms ``u (..., M)``: ``(..., M)``."""
    w = weights + 1e-5
    cdf = torch.cumsum(w / w.sum(-1, keepdim=True), dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], dim=-1)       # (..., K + 1)
    u = u.contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    b0, b1 = bins.gather(-1, idx - 1), bins.gather(-1, idx)
    t = ((u - c0) / (c1 - c0).clamp_min(1e-10)).clamp(0, 1)
    return b0 + t * (b1 - b0)


def composite(sigma: torch.Tensor, rgb: torch.Tensor, depths: torch.Tensor, far: float,
              dir_norm: torch.Tensor, *, white_background: bool = True,
              last_delta: float | None = None) -> dict[str, torch.Tensor]:
    """Alpha compositing of ``sigma (..., S)``, ``rgb (..., S, 3)`` at sorted ``depths (..., S)``.

    ``dir_norm (...)``: |d| of each ray (depth intervals are scaled by it). Returns ``rgb
    (..., 3)``, ``acc`` (opacity), ``depth`` (expected depth) and ``disp`` (``1 / max(1e-10,
    depth / acc)``, 1e10 where ``acc = 0``) ``(...)``, and the ``weights``. The last interval ends at ``far``, or is
    ``last_delta`` long (official: 1e10)."""
    if last_delta is None:
        ends = torch.cat([depths[..., 1:], torch.full_like(depths[..., :1], far)], dim=-1)
        delta = (ends - depths).clamp_min(0) * dir_norm[..., None]
    else:
        delta = torch.cat([depths[..., 1:] - depths[..., :-1], torch.full_like(depths[..., :1], last_delta)], -1)
        delta = delta * dir_norm[..., None]
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-10], dim=-1), dim=-1)[..., :-1]
    weights = alpha * trans
    acc = weights.sum(-1)
    out_rgb = (weights[..., None] * rgb).sum(-2)
    if white_background:
        out_rgb = out_rgb + (1.0 - acc[..., None])
    depth = (weights * depths).sum(-1)
    # official raw2outputs: 1 / max(1e-10, depth / acc), which is NaN where acc = 0 (here 1e10 there)
    disp = 1.0 / torch.maximum(torch.full_like(depth, 1e-10), torch.where(acc > 0, depth / acc, torch.zeros_like(acc)))
    return {"rgb": out_rgb, "acc": acc, "depth": depth, "disp": disp, "weights": weights}


def _render_chunk(query: Query, origins, dirs, *, near, far, num_samples, num_importance,
                  jitter, importance_u, white_background, depth_spacing="bins",
                  last_delta=None) -> dict[str, torch.Tensor]:
    lead = origins.shape[:-1]                                       # (B, R)
    dir_norm = dirs.norm(dim=-1)
    viewdirs = dirs / dir_norm[..., None].clamp_min(1e-12)
    depths = stratified_depths(near, far, num_samples, tuple(lead), jitter=jitter, device=origins.device,
                               spacing=depth_spacing)

    def run(t: torch.Tensor) -> dict[str, torch.Tensor]:
        b, r, s = t.shape
        pts = origins[..., None, :] + dirs[..., None, :] * t[..., None]           # (B, R, S, 3)
        vd = viewdirs[..., None, :].expand_as(pts)
        sigma, rgb = query(pts.reshape(b, r * s, 3), vd.reshape(b, r * s, 3))
        return composite(sigma.reshape(b, r, s), rgb.reshape(b, r, s, 3), t, far, dir_norm,
                         white_background=white_background, last_delta=last_delta)

    if num_importance <= 0:
        return run(depths)
    with torch.no_grad():
        coarse = run(depths)
        edges = torch.cat([torch.full_like(depths[..., :1], near),
                           0.5 * (depths[..., 1:] + depths[..., :-1]),
                           torch.full_like(depths[..., :1], far)], dim=-1)
        u = (torch.rand((*lead, num_importance), device=origins.device) if importance_u is None
             else importance_u.to(origins.device))
        fine = sample_pdf(edges, coarse["weights"], u)
    return run(torch.sort(torch.cat([depths, fine.detach()], dim=-1), dim=-1).values)


def render_rays(query: Query, origins: torch.Tensor, dirs: torch.Tensor, *, near: float, far: float,
                num_samples: int, num_importance: int = 0, jitter: torch.Tensor | None = None,
                importance_u: torch.Tensor | None = None, white_background: bool = True,
                chunk: int = 4096, depth_spacing: str = "bins",
                last_delta: float | None = None) -> dict[str, torch.Tensor]:
    """Volume-render rays ``origins``, ``dirs (B, R, 3)`` through ``query`` in chunks of ``chunk``
    rays (per batch element): ``rgb (B, R, 3)``, ``acc``, ``depth``, ``disp (B, R)``
    (``depth_spacing``, ``last_delta``: see :func:`stratified_depths`, :func:`composite`).

    ``jitter (B, R, num_samples)`` in [0, 1) perturbs the stratified depths (none: bin centres);
    ``importance_u (B, R, num_importance)`` are the uniforms of the importance samples (none:
    drawn with ``torch.rand`` when ``num_importance > 0``)."""
    assert origins.shape == dirs.shape and origins.dim() == 3, (origins.shape, dirs.shape)
    outs = []
    for i in range(0, origins.shape[1], chunk):
        sl = slice(i, i + chunk)
        out = _render_chunk(query, origins[:, sl], dirs[:, sl], near=near, far=far, num_samples=num_samples,
                            num_importance=num_importance, jitter=None if jitter is None else jitter[:, sl],
                            importance_u=None if importance_u is None else importance_u[:, sl],
                            white_background=white_background, depth_spacing=depth_spacing,
                            last_delta=last_delta)
        outs.append({k: out[k] for k in ("rgb", "acc", "depth", "disp")})
    return {k: torch.cat([o[k] for o in outs], dim=1) for k in ("rgb", "acc", "depth", "disp")}


def render_views(query: Query, c2w: torch.Tensor, height: int, width: int, focal: float, *, batch: int = 1,
                 pixel_offset: float = 0.5, **kw) -> torch.Tensor:
    """Images ``(B, V, 3, H, W)`` in [0, 1] of ``batch`` fields (``query`` handles a batch of
    ``batch``) seen from the same cameras ``c2w (V, 4, 4)``."""
    o, d = camera_rays(c2w, height, width, focal, pixel_offset=pixel_offset)   # (V, H, W, 3)
    v = c2w.shape[0]
    o = o.reshape(1, -1, 3).expand(batch, -1, -1)
    d = d.reshape(1, -1, 3).expand(batch, -1, -1)
    rgb = render_rays(query, o, d, **kw)["rgb"]
    return rgb.reshape(batch, v, height, width, 3).permute(0, 1, 4, 2, 3)
