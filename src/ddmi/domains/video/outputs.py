"""The video domain: fields -> clips at any size and frame count -> MP4 / GIF / frames / sheets.

A video field (``VideoAutoencoder.decode``) returns RGB at ``(x, y, t)`` in [-1, 1]^3 (pixel-centre
semantics on every axis; conventions in :mod:`ddmi.domains.video.model`). Rendering at ``R x R`` and
``F`` frames queries the ``F`` frame centres ``t_k = -1 + (2k + 1)/F`` of the same interval, so
``F`` larger than the training clip length interpolates in time (temporal super-resolution) and
``R`` larger than the training size in space.

Outputs of ``ddmi sample`` for every ``(R, F)`` asked: ``sample_<i>_<R>x<F>.mp4`` (when PyAV is
installed), ``.gif``, a frame folder ``sample_<i>_<R>x<F>/frame00000.png ...`` (the layout the
loader and FVD read) and ``sheet_<R>x<F>.png`` (one row per sample, one column per frame).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddmi.files import output_stems
from ddmi.progress import progress_bar, share
from ddmi.render import video as vio


def have_mp4() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def write_clips(clips: torch.Tensor, out: Path, stems: list[str], *, fps: int, sheet: str | None,
                frames_folders: bool = True, log=print) -> list[Path]:
    """MP4 (if PyAV is installed) + GIF + frame folder per clip of ``clips (B, 3, T, H, W)``, and
    a contact sheet named ``sheet``."""
    written = []
    mp4 = have_mp4()
    for clip, stem in zip(clips, stems):
        if mp4:
            written.append(vio.write_mp4(clip, out / f"{stem}.mp4", fps=fps))
        written.append(vio.write_gif(clip, out / f"{stem}.gif", fps=fps))
        if frames_folders:
            written += vio.write_frames(clip, out / stem)
    if not mp4:
        log("note: MP4 files need PyAV (pip install 'ddmi[video]'); wrote GIFs and frames only")
    if sheet:
        written.append(vio.contact_sheet(clips, out / sheet))
    return written


def _sizes(args, ae) -> list[tuple[int, int]]:
    resolutions = args.resolution or [ae.resolution]
    resolutions = resolutions if isinstance(resolutions, list) else [resolutions]
    frame_counts = getattr(args, "frames", None) or [ae.frames]
    return [(r, f) for r in resolutions for f in frame_counts]


def _stems(args, ae, count: int) -> dict[tuple[int, int], list[str]]:
    prefix = "interpolation" if args.interpolate else "sample"
    return {sz: [f"{prefix}_{i:05d}_{sz[0]}x{sz[1]}" for i in range(count)] for sz in _sizes(args, ae)}


def sample_targets(args, ae, count: int) -> list[Path]:
    out, stems = Path(args.out), _stems(args, ae, count)
    return [out / f"{st}.gif" for s in stems for st in stems[s]] + [out / f"sheet_{r}x{f}.png" for r, f in stems]


def write_samples(args, ae, batches, count: int, shard, log) -> str:
    """``ddmi sample`` for a video run (module docstring): this process's clips, and the sheets
    on the main process."""
    out, stems = Path(args.out), _stems(args, ae, count)
    sizes = list(stems)
    rendered = {s: [] for s in sizes}
    with progress_bar(share(count, shard.world) * len(sizes), "decoding clips", "clip", enabled=shard.is_main) as bar:
        for i, z in batches:
            for r, f in sizes:
                clips = ae.render(z, r, f).cpu()
                write_clips(clips, out, stems[(r, f)][i:i + len(z)], fps=ae.fps, sheet=None, log=lambda m: None)
                rendered[(r, f)].append((i, clips))
                bar.update(len(z))
    for r, f in sizes:
        clips = torch.cat(shard.gather_by_start(rendered[(r, f)]))
        if shard.is_main:
            vio.contact_sheet(clips, out / f"sheet_{r}x{f}.png")
    if not have_mp4():
        log("note: MP4 files need PyAV (pip install 'ddmi[video]'); wrote GIFs and frames only")
    return (f"wrote {count} videos (MP4/GIF/frames + sheet) at "
            f"{', '.join(f'{r}x{r}, {f} frames' for r, f in sizes)} to {out}")


def reconstruct_targets(args, ae) -> list[Path]:
    """Every file ``ddmi reconstruct`` writes for a video run (checked before any compute)."""
    out, sizes = Path(args.out), _sizes(args, ae)
    kinds = ("gif", "mp4") if have_mp4() else ("gif",)
    return ([out / f"{s}_rec{r}x{f}.{k}" for s in output_stems(args.inputs, folders_are_items=True)
             for r, f in sizes for k in kinds]
            + [out / f"reconstructions_{r}x{f}.png" for r, f in sizes] + [out / "inputs.png"])


def reconstruct_videos_command(ae, args, log=print) -> int:
    """``ddmi reconstruct`` for a video run: video files or frame folders -> reconstructed clips
    (the first ``video.frames`` frames of each input) at ``--resolution`` and ``--frames``, on the
    autoencoder's device."""
    from ddmi.data.videos import load_clip
    from ddmi.devices import model_device
    out = Path(args.out)
    sizes = _sizes(args, ae)
    stems = output_stems(args.inputs, folders_are_items=True)
    clips = torch.stack([load_clip(p, ae.frames, ae.resolution) for p in args.inputs])
    with torch.inference_mode():
        z = ae.encode(clips.to(model_device(ae))).mode()
        for r, f in sizes:
            rec = ae.render(z, r, f).cpu()
            write_clips(rec, out, [f"{s}_rec{r}x{f}" for s in stems], fps=ae.fps,
                        sheet=f"reconstructions_{r}x{f}.png", frames_folders=False, log=log)
    vio.contact_sheet(clips, out / "inputs.png")
    log(f"wrote {len(clips)} reconstructed videos at {', '.join(f'{r}x{r}, {f} frames' for r, f in sizes)} "
        f"to {out} (+ inputs.png, reconstructions_*.png)")
    return 0


# ------------------------------------------------------------------------------------------
# ddmi eval


def clips_uint8(clips: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` in [-1, 1] -> uint8 ``(B, T, H, W, 3)``, quantised as written frames are."""
    import numpy as np
    return torch.from_numpy(np.stack([vio.clip_to_uint8(c) for c in clips]))


def _clip_set(root, split: str, ae, *, num: int | None, seed: int):
    """A seeded subset (at most ``num``) of one fixed ``ae.frames``-frame window per video of the
    ``split`` folder of ``root`` (``train`` falls back to ``root`` itself): ``(dataset, indices)``."""
    from ddmi.data.videos import VideoFolderDataset
    from ddmi.metrics.image_sets import seeded_subset
    ds = VideoFolderDataset(root, split=split, frames=ae.frames, resolution=ae.resolution, seed=seed)
    return ds, [int(i) for i in seeded_subset(len(ds), num, seed)]


def evaluate_run(run_dir: Path, cfg, stage: str, ae, generate, *, metrics, num, batch_size, ref, i3d,
                 seed: int, shard, log, **_) -> dict:
    """Video runs, at the training size (``video.frames`` frames of ``R x R``).

    * ``fvd`` (LDM): ``--num`` EMA samples (default: as many as reference clips) against one fixed
      window per reference video: the training split (the official eval mode), or ``--ref``.
    * ``rfvd``, ``psnr``, ``ssim`` (VAE or LDM): the held-out split (``data.test_dir``, else
      ``val``/``test`` under ``data.dir``, else the training split; or ``--ref``) reconstructed
      from the posterior mean; PSNR / SSIM are per frame, averaged over frames then clips.

    FVD needs the I3D weights (``--i3d``); they are loaded before any work starts.

    ``generate(num) -> (batches, sampler, steps)`` draws this process's share of the clips
    (:class:`ddmi.devices.Shard`): they are embedded in shares and the main process does the rest.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from ddmi.data.videos import split_folder
    from ddmi.errors import DataError
    from ddmi.metrics.fvd import fvd_from_features, i3d_embeddings, load_i3d
    from ddmi.metrics.image_quality import psnr, ssim

    net = load_i3d(i3d, device=shard.device) if {"fvd", "rfvd"} & set(metrics) else None
    results: dict = {"run": str(run_dir), "resolution": ae.resolution, "frames": ae.frames}
    eval_dir = run_dir / "eval"

    if shard.is_main and {"rfvd", "psnr", "ssim"} & set(metrics):    # reconstructions: the main process
        root = ref or cfg.data.test_dir or cfg.data.dir
        try:
            split_folder(root, "val")
            split = "val"
        except DataError:
            split = "train"
        ds, idx = _clip_set(root, split, ae, num=num, seed=seed)
        if "rfvd" in metrics and len(idx) < 2:
            raise DataError(f"rFVD needs at least 2 clips; {ds.root} has {len(idx)} (name a bigger folder with --ref)")
        psnrs, ssims, real_f, rec_f = [], [], [], []
        with torch.inference_mode():
            for i in tqdm(range(0, len(idx), batch_size), desc="reconstructing", disable=None):
                real = clips_uint8(torch.stack([ds[j] for j in idx[i:i + batch_size]]))
                x = real.permute(0, 4, 1, 2, 3).to(shard.device).float() / 127.5 - 1.0
                rec = clips_uint8(ae.render(ae.encode(x).mode(), ae.resolution, ae.frames))
                for a, b in zip(rec, real):          # (T, H, W, 3) each: frames as a batch
                    fa = a.permute(0, 3, 1, 2).float() / 127.5 - 1.0
                    fb = b.permute(0, 3, 1, 2).float() / 127.5 - 1.0
                    psnrs.append(float(psnr(fa, fb).mean()))
                    if "ssim" in metrics:
                        ssims.append(float(ssim(fa, fb).mean()))
                if net is not None and "rfvd" in metrics:
                    real_f.append(i3d_embeddings(real, net))
                    rec_f.append(i3d_embeddings(rec, net))
        if "psnr" in metrics:
            results["psnr"] = float(np.mean(psnrs))
        if "ssim" in metrics:
            results["ssim"] = float(np.mean(ssims))
        if "rfvd" in metrics:
            results["rfvd"] = fvd_from_features(np.concatenate(rec_f), np.concatenate(real_f))
        results.update(num_recon=len(idx), recon_folder=str(ds.root))

    if "fvd" in metrics:
        ds, idx = _clip_set(ref or cfg.data.dir, "train", ae, num=num, seed=seed)
        num_gen = num or len(idx)
        if min(num_gen, len(idx)) < 2:
            raise DataError(f"FVD needs at least 2 clips on each side (got {num_gen} generated, {len(idx)} reference)")
        batches, sampler, steps = generate(num_gen)
        out = eval_dir / f"samples-{sampler}{steps or ''}-{ae.resolution}x{ae.frames}"
        gen_f, ref_f = [], []
        with torch.inference_mode():
            for i, z in batches:
                clips = ae.render(z, ae.resolution, ae.frames).cpu()
                for k, clip in enumerate(clips):
                    vio.write_frames(clip, out / f"sample_{i + k:05d}")
                gen_f.append((i, i3d_embeddings(clips_uint8(clips), net)))   # moved to the I3D's device
        gen_f = shard.gather_by_start(gen_f)
        if not shard.is_main:
            return results
        with torch.inference_mode():
            for i in tqdm(range(0, len(idx), batch_size), desc="reference I3D", disable=None):
                ref_f.append(i3d_embeddings(clips_uint8(torch.stack([ds[j] for j in idx[i:i + batch_size]])), net))
        results["fvd"] = fvd_from_features(np.concatenate(gen_f), np.concatenate(ref_f))
        results.update(num_gen=num_gen, num_ref=len(idx), sampler=sampler, steps=steps, samples=str(out),
                       ref=str(ds.root))
    return results
