"""The NeRF domain: radiance fields -> rendered views, turntables (PNG frames + GIF), PSNR.

A NeRF field (:meth:`ddmi.domains.nerf.model.NeRFAutoencoder.decode`) is rendered from any camera with
:mod:`ddmi.render.volume` in the world frame of the data (OpenGL camera-to-world poses, the
srn-cars intrinsics scaled to the requested size: ``focal = 0.5 R / tan(0.5 fov)``, so any
resolution ``R`` shows the same view). Turntables orbit the origin at ``nerf.turntable_radius``
and ``nerf.turntable_elevation`` degrees.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from ddmi.data.images import tile
from ddmi.data.images import to_uint8 as pixels_uint8
from ddmi.errors import DataError
from ddmi.files import output_stems
from ddmi.progress import progress_bar, share
from ddmi.render.video import write_gif
from ddmi.render.volume import SRN_FOV, focal_from_fov, render_views, turntable_poses

TURNTABLE_FPS = 12.5           # 80 ms per frame


def render_latents(ae, z: torch.Tensor, poses: torch.Tensor, resolution: int) -> torch.Tensor:
    """Views ``(B, V, 3, R, R)`` in [0, 1] of the fields of latents ``z`` from ``poses (V, 4, 4)``."""
    planes = ae.vae.decode(z)
    device = planes[0].device
    return render_views(ae.query_fn(planes), poses.to(device), resolution, resolution,
                        focal_from_fov(resolution, ae.fov), batch=len(z), pixel_offset=ae.pixel_offset,
                        **ae.render_kwargs(train=False))


def turntable(ae, n: int | None = None, *, radius: float | None = None,
              elevation: float | None = None) -> torch.Tensor:
    """``n`` camera poses around the object (default ``nerf.turntable_frames``) at ``radius``
    (world units) and ``elevation`` (degrees above the horizon); the run's config by default."""
    nc = ae.nerf
    return turntable_poses(n or nc.turntable_frames, radius=radius or nc.turntable_radius,
                           elevation=math.radians(nc.turntable_elevation if elevation is None else elevation))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` renders in [0, 1] -> ``(..., H, W, 3)`` uint8 (:func:`ddmi.data.images.to_uint8`)."""
    return pixels_uint8(images.detach().float() * 2 - 1)


def sheet(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of ``(N, H, W, 3)`` uint8 tiles -> one white-padded contact sheet."""
    ncol = max(len(r) for r in rows)
    tiles = []
    for r in rows:
        tiles += list(r) + [np.full_like(r[0], 255)] * (ncol - len(r))
    return tile(tiles, ncol=ncol, padding=pad, pad_value=255)


def nerf_dataset(cfg: DictConfig, split: str = "train", *, num_rays: int | None = None, root=None):
    from ddmi.data.srn import NeRFDataset
    nc = cfg.nerf
    return NeRFDataset(root or cfg.data.dir, split=split, category=nc.category, num_points=nc.num_points,
                       num_rays=nc.num_rays if num_rays is None else num_rays, ray_views=nc.ray_views,
                       point_noise=nc.point_noise, points_scale=nc.points_scale,
                       fov=nc.fov if nc.fov is not None else SRN_FOV, val_fraction=nc.val_fraction,
                       seed=cfg.seed)


# ------------------------------------------------------------------------------------------
# stage-1 task


def colour_notice(cfg: DictConfig) -> str | None:
    """The line printed when NeRF stage 1 starts without the point colour loss (docs/nerf.md)."""
    if cfg.nerf.point_rgb_weight > 0:
        return None
    return ("note: nerf.point_rgb_weight is 0 (the paper's loss). In ddmi's CPU-scale runs the latent "
            "then carried shape but not colour (every object rendered in one grey); set "
            "nerf.point_rgb_weight=1 to supervise the field's colour at the encoder's points. "
            "See docs/nerf.md, 'Colour through the latent'.")


def preview_objects(cfg: DictConfig):
    """Held-out objects for the reconstruction previews, if there are any (else training ones)."""
    try:
        return nerf_dataset(cfg, "val", num_rays=0, root=cfg.data.test_dir)
    except DataError:
        return nerf_dataset(cfg, "train", num_rays=0)


def _preview_views(ae, preview_set, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Preview object ``i``: 3 of its views (at most 64 px) rendered from its encoded point
    cloud, and the ground truth: ``(pred, gt)``, each ``(3, 3, R, R)`` in [0, 1] on the CPU."""
    s = preview_set.scene(i)
    views = np.linspace(0, len(s["poses"]) - 1, 3).round().astype(int)
    res = min(64, s["images"].shape[1])
    points = preview_set[i][None, :ae.num_points, :6].to(next(ae.parameters()).device)
    pred = render_latents(ae, ae.encode(points).mode(), torch.from_numpy(s["poses"][views]), res)[0]
    gt = torch.nn.functional.interpolate(torch.from_numpy(s["images"][views].astype(np.float32))
                                         .permute(0, 3, 1, 2), size=(res, res), mode="area")
    return pred.float().cpu().clamp(0, 1), gt


def write_preview(ae, preview_set, path: Path) -> list[Path]:
    """One row per held-out object (up to 4): 3 ground-truth views, then their renderings."""
    from ddmi.render.mesh import write_png
    rows = []
    for i in range(min(4, len(preview_set))):
        pred, gt = _preview_views(ae, preview_set, i)
        rows.append(np.concatenate([to_uint8(gt), to_uint8(pred)]))
    return [write_png(path, sheet(rows))]


def probe(ae, preview_set) -> dict[str, float]:
    """``psnr``: the preview renderings of :func:`write_preview` against the ground truth, in dB."""
    from ddmi.metrics.image_quality import psnr
    scores = [psnr(*_preview_views(ae, preview_set, i), data_range=1.0) for i in range(min(4, len(preview_set)))]
    return {"psnr": float(torch.cat(scores).mean())}


def ldm_sample_sheet(ae, z: torch.Tensor, path: Path) -> Path:
    """Stage-2 periodic samples: 4 turntable views of up to 8 samples, 32 px."""
    from ddmi.render.mesh import write_png
    imgs = render_latents(ae, z[:8], turntable(ae, 4), 32)
    return write_png(path, sheet([to_uint8(v) for v in imgs]))


# ------------------------------------------------------------------------------------------
# commands


def _stems(args, count: int) -> dict[int, list[str]]:
    prefix = "interpolation" if args.interpolate else "sample"
    return {r: [f"{prefix}_{i:05d}_{r}" for i in range(count)] for r in args.resolution or [128]}


def sample_targets(args, ae, count: int) -> list[Path]:
    out, stems = Path(args.out), _stems(args, count)
    return ([out / f"{s}.gif" for r in stems for s in stems[r]]
            + [out / s / "frame_000.png" for r in stems for s in stems[r]]
            + [out / f"turntables_{r}.png" for r in stems])


def write_samples(args, ae, batches, count: int, shard, log) -> str:
    """``ddmi sample`` for a NeRF run: per sample and resolution, a turntable of PNG frames and
    an animated GIF (this process's batches), plus one sheet of every sample's turntable per
    resolution (main process)."""
    from ddmi.render.mesh import write_png
    out, stems = Path(args.out), _stems(args, count)
    resolutions = list(stems)
    frames = args.frames[0] if getattr(args, "frames", None) else None
    poses = turntable(ae, frames, radius=getattr(args, "radius", None), elevation=getattr(args, "elevation", None))
    rows = {r: [] for r in resolutions}
    with progress_bar(share(count, shard.world) * len(resolutions),
                      f"rendering turntables ({len(poses)} frames)", "turntable", enabled=shard.is_main) as bar:
        for i0, z in batches:
            for r in resolutions:
                for k0 in range(len(z)):
                    i = i0 + k0
                    frames = to_uint8(render_latents(ae, z[k0:k0 + 1], poses, r)[0])
                    for k, f in enumerate(frames):
                        write_png(out / stems[r][i] / f"frame_{k:03d}.png", f)
                    write_gif(frames, out / f"{stems[r][i]}.gif", fps=TURNTABLE_FPS)
                    row = frames[np.linspace(0, len(frames) - 1, min(8, len(frames)), endpoint=False).astype(int)] \
                        if len(frames) > 8 else frames
                    rows[r].append((i, row))
                    bar.update(1)
    for r in resolutions:
        gathered = shard.gather_by_start(rows[r])
        if shard.is_main:
            write_png(out / f"turntables_{r}.png", sheet(gathered))
    return (f"wrote {count} turntables ({len(poses)} frames: PNG + GIF) at "
            f"{', '.join(f'{r}x{r}' for r in resolutions)} to {out}")


def reconstruct_targets(args, ae) -> list[Path]:
    """The files ``ddmi reconstruct`` writes for a NeRF run (its per-view renders by pattern:
    their numbers depend on each object's views)."""
    out = Path(args.out)
    stems = output_stems(args.inputs)
    views = [p for s in stems for p in sorted(out.glob(f"{s}_view*.png"))] if out.is_dir() else []
    return [out / f"{s}_compare.png" for s in stems] + [out / "psnr.json"] + views


def reconstruct_nerf_command(ae, args, log=print) -> int:
    """``ddmi reconstruct`` for a NeRF run: srn-cars ``.npz`` objects -> their encoded point
    clouds -> renders of ``--views`` of their views, with PSNR / SSIM against the images (on the
    autoencoder's device)."""
    from ddmi.data.srn import read_scene
    from ddmi.devices import model_device
    from ddmi.metrics.image_quality import psnr, ssim
    from ddmi.render.mesh import write_png
    out = Path(args.out)
    nviews = getattr(args, "views", None) or 8
    results = {}
    stems = output_stems(args.inputs)
    nc = ae.nerf
    with progress_bar(len(args.inputs), "reconstructing", "object") as bar:
        for path, stem in zip(args.inputs, stems):
            s = read_scene(path)
            pts = s["points"]
            pts[:, :3] *= nc.points_scale
            pick = np.random.default_rng(0).choice(len(pts), ae.num_points, replace=len(pts) < ae.num_points)
            v, h, w, _ = s["images"].shape
            views = np.unique(np.linspace(0, v - 1, min(nviews, v)).round().astype(int))
            res = args.resolution or w
            with torch.inference_mode():
                z = ae.encode(torch.from_numpy(pts[pick])[None].to(model_device(ae))).mode()
                pred = render_latents(ae, z, torch.from_numpy(s["poses"][views]), res)[0].cpu()   # (V, 3, R, R)
            frames = to_uint8(pred)
            for k, f in zip(views, frames):
                write_png(out / f"{stem}_view{k:03d}.png", f)
            gt = _gt_views(s, views, res)
            entry = {"views": views.tolist(), "resolution": res}
            if res == w and h == w:
                entry["psnr"] = float(psnr(pred.float(), gt, data_range=1.0).mean())
                if res >= 11:
                    entry["ssim"] = float(ssim(pred.float(), gt, data_range=1.0).mean())
            results[str(path)] = entry
            write_png(out / f"{stem}_compare.png", sheet([to_uint8(gt), frames]))
            bar.update(1)
    scored = [e["psnr"] for e in results.values() if "psnr" in e]
    summary = {"objects": results}
    if scored:
        summary["mean_psnr"] = float(np.mean(scored))
    from ddmi.files import atomic_write_text
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "psnr.json", json.dumps(summary, indent=1) + "\n")
    msg = f"mean PSNR {summary['mean_psnr']:.2f} dB" if scored else \
        "no PSNR (render at the images' own size, --resolution W, to measure it)"
    log(f"wrote renders of {len(results)} objects to {out} ({msg}; per object in psnr.json)")
    return 0


# ------------------------------------------------------------------------------------------
# ddmi eval


def _reference_objects(cfg, root):
    """The held-out objects of ``root`` (``val`` split, else ``train``), point clouds only."""
    try:
        return nerf_dataset(cfg, "val", num_rays=0, root=root)
    except DataError:
        return nerf_dataset(cfg, "train", num_rays=0, root=root)


def _gt_views(scene: dict, views, res: int) -> torch.Tensor:
    """Ground-truth views ``(V, 3, res, res)`` in [0, 1] (antialiased resize when ``res`` differs)."""
    gt = torch.from_numpy(scene["images"][views].astype(np.float32)).permute(0, 3, 1, 2)
    if gt.shape[-1] != res or gt.shape[-2] != res:
        gt = torch.nn.functional.interpolate(gt, size=(res, res), mode="bilinear", antialias=True).clamp(0, 1)
    return gt


def evaluate_run(run_dir: Path, cfg, stage: str, ae, generate, *, metrics, num, resolution, batch_size, ref,
                 seed: int, shard, log, **_) -> dict:
    """NeRF runs. Reference objects: ``--ref`` or ``data.test_dir`` or ``data.dir`` (its ``val``
    split, else ``train``).

    * ``psnr``, ``ssim`` (VAE or LDM): up to ``--num`` reference objects encoded from their point
      clouds (posterior mean) and rendered from 8 of their cameras (evenly spaced) at
      ``--resolution`` (default: the images' own size), against their images.
    * ``fid``, ``kid`` (LDM): ``--num`` (default 100) EMA samples, each rendered from 4 cameras
      drawn at random from the reference objects' cameras, against as many reference views drawn
      the same way, all at ``--resolution`` (default 128) and quantised to uint8.

    ``generate(num) -> (batches, sampler, steps)`` draws this process's share of the samples
    (:class:`ddmi.devices.Shard`): they are rendered and featurised in shares and the main
    process does the rest.
    """
    from tqdm.auto import tqdm

    from ddmi.metrics.image_quality import psnr, ssim

    ds = _reference_objects(cfg, ref or cfg.data.test_dir or cfg.data.dir)
    rng = np.random.default_rng(seed)
    results: dict = {"run": str(run_dir), "reference": f"{ds.files[0].parent} ({len(ds)} objects)"}

    if shard.is_main and {"psnr", "ssim"} & set(metrics):      # reconstructions: the main process
        n = len(ds) if num is None else min(num, len(ds))
        psnrs, ssims = [], []
        with torch.inference_mode():
            for i in tqdm(range(n), desc="reconstructing", disable=None):
                s = ds.scene(i)
                views = np.unique(np.linspace(0, len(s["poses"]) - 1, min(8, len(s["poses"]))).round().astype(int))
                res = resolution or s["images"].shape[2]
                points = ds[i][None, :ae.num_points, :6].to(shard.device)
                pred = render_latents(ae, ae.encode(points).mode(), torch.from_numpy(s["poses"][views]), res)[0]
                pred = torch.from_numpy(to_uint8(pred)).permute(0, 3, 1, 2).float() / 255
                gt = torch.from_numpy(to_uint8(_gt_views(s, views, res))).permute(0, 3, 1, 2).float() / 255
                psnrs.append(float(psnr(pred, gt, data_range=1.0).mean()))
                if "ssim" in metrics and res >= 11:
                    ssims.append(float(ssim(pred, gt, data_range=1.0).mean()))
        if "psnr" in metrics:
            results["psnr"] = float(np.mean(psnrs))
        if "ssim" in metrics and ssims:
            results["ssim"] = float(np.mean(ssims))
        results["num_recon"] = n

    if {"fid", "kid"} & set(metrics):
        from ddmi.metrics.fid import features_from_batches, fid_from_features
        from ddmi.metrics.frechet import kid
        from ddmi.metrics.inception import InceptionFeatures
        from ddmi.render.mesh import write_png
        per_object = 4
        res = resolution or 128
        num_gen = num or 100
        extractor = InceptionFeatures(batch_size=50, device=shard.device)

        def draw_cameras(count):
            objs = rng.integers(0, len(ds), count)
            return [(int(o), int(rng.integers(0, len(ds.scene(int(o))["poses"])))) for o in objs]

        cameras = [draw_cameras(per_object) for _ in range(num_gen)]    # every process: the same draws
        batches, sampler, steps = generate(num_gen)
        out = run_dir / "eval" / f"samples-{sampler}{steps or ''}-{res}"
        gen_f = []
        with torch.inference_mode(), progress_bar(share(num_gen, shard.world), f"rendering samples at {res}x{res}",
                                                  "sample", enabled=shard.is_main) as bar:
            for i0, z in batches:
                for k in range(len(z)):
                    i = i0 + k
                    poses = torch.from_numpy(np.stack([ds.scene(o)["poses"][v] for o, v in cameras[i]]))
                    frames = to_uint8(render_latents(ae, z[k:k + 1], poses, res)[0])      # (V, R, R, 3)
                    write_png(out / f"sample_{i:05d}.png", sheet([frames]))
                    gen_f.append((i, features_from_batches([torch.from_numpy(frames).permute(0, 3, 1, 2)],
                                                           extractor)))
                    bar.update(1)
        gen_f = shard.gather_by_start(gen_f)
        if not shard.is_main:
            return results
        ref_imgs = [to_uint8(_gt_views(ds.scene(o), [v], res))[0] for o, v in draw_cameras(num_gen * per_object)]
        ref_f = features_from_batches((torch.from_numpy(np.stack(ref_imgs[i:i + 50])).permute(0, 3, 1, 2)
                                       for i in range(0, len(ref_imgs), 50)), extractor)
        gen_f = np.concatenate(gen_f)
        if "fid" in metrics:
            results["fid"] = fid_from_features(gen_f, ref_f)
        if "kid" in metrics:
            results["kid"], results["kid_std"] = kid(gen_f, ref_f, seed=seed)
        results.update(num_gen=num_gen, views_per_sample=per_object, num_ref_views=len(ref_f), resolution=res,
                       sampler=sampler, steps=steps, samples=str(out))
    return results
