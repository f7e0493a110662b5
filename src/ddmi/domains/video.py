"""The video domain: fields -> clips at any size and frame count -> MP4 / GIF / frames / sheets.

A video field (``VideoAutoencoder.decode``) returns RGB at ``(x, y, t)`` in [-1, 1]^3 (pixel-centre
semantics on every axis; conventions in :mod:`ddmi.video_model`). Rendering at ``R x R`` and
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

from ..render import video as vio


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


def sample_videos_command(args, ae, diffusion, cfg, log=print) -> int:
    """``ddmi sample`` for a video run (module docstring)."""
    from ..stage2 import _check_free, generate_latents, sampling_plan
    sampler, steps, noises = sampling_plan(args, cfg, ae.latent_shape)
    out = Path(args.out)
    prefix = "interpolation" if args.interpolate else "sample"
    sizes = _sizes(args, ae)
    stems = {s: [f"{prefix}_{i:05d}_{s[0]}x{s[1]}" for i in range(len(noises))] for s in sizes}
    targets = [out / f"{st}.gif" for s in sizes for st in stems[s]] + [out / f"sheet_{r}x{f}.png" for r, f in sizes]
    _check_free(targets, args.overwrite)
    with torch.inference_mode():
        z = generate_latents(diffusion, ae.latent_shape, noises, sampler=sampler, steps=steps,
                             eta=args.eta, batch_size=args.batch_size)
        for r, f in sizes:
            clips = torch.cat([ae.render(z[i:i + args.batch_size], r, f) for i in range(0, len(z), args.batch_size)])
            write_clips(clips, out, stems[(r, f)], fps=ae.fps, sheet=f"sheet_{r}x{f}.png", log=log)
    log(f"wrote {len(noises)} videos (MP4/GIF/frames + sheet) at "
        f"{', '.join(f'{r}x{r}, {f} frames' for r, f in sizes)} to {out} ({sampler}, {steps or 'default'} steps)")
    return 0


def reconstruct_videos_command(ae, args, log=print) -> int:
    """``ddmi reconstruct`` for a video run: video files or frame folders -> reconstructed clips
    (the first ``video.frames`` frames of each input) at ``--resolution`` and ``--frames``."""
    from ..data.videos import load_clip
    from ..stage2 import _check_free
    out = Path(args.out)
    sizes = _sizes(args, ae)
    stems = []
    for p in args.inputs:
        name = Path(p).name if Path(p).is_dir() else Path(p).stem
        stems.append(name if name not in stems else f"{len(stems):04d}_{name}")
    _check_free([out / f"{s}_rec{r}x{f}.gif" for s in stems for r, f in sizes], args.overwrite)
    clips = torch.stack([load_clip(p, ae.frames, ae.resolution) for p in args.inputs])
    with torch.inference_mode():
        z = ae.encode(clips).mode()
        for r, f in sizes:
            rec = ae.render(z, r, f)
            write_clips(rec, out, [f"{s}_rec{r}x{f}" for s in stems], fps=ae.fps,
                        sheet=f"reconstructions_{r}x{f}.png", frames_folders=False, log=log)
    vio.contact_sheet(clips, out / "inputs.png")
    log(f"wrote {len(clips)} reconstructed videos at {', '.join(f'{r}x{r}, {f} frames' for r, f in sizes)} "
        f"to {out} (+ inputs.png, reconstructions_*.png)")
    return 0
