"""Video writers: MP4 (PyAV, H.264), animated GIF (Pillow), frame folders and contact sheets.

Every writer takes ``(T, H, W, 3)`` uint8 frames (or a ``(3, T, H, W)`` float clip in [-1, 1],
converted with :func:`clip_to_uint8`) and writes atomically (:func:`ddmi.files.atomic_output`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddmi.data.images import save_image, tile
from ddmi.errors import MissingDependencyError
from ddmi.files import atomic_output, atomic_write


def clip_to_uint8(clip) -> np.ndarray:
    """``(3, T, H, W)`` float in [-1, 1] (tensor or array) or ``(T, H, W, 3)`` uint8 -> uint8 THWC."""
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().float().cpu().numpy()
    clip = np.asarray(clip)
    if clip.dtype == np.uint8:
        assert clip.ndim == 4 and clip.shape[-1] == 3, f"expected (T, H, W, 3) uint8, got {clip.shape}"
        return clip
    assert clip.ndim == 4 and clip.shape[0] == 3, f"expected a (3, T, H, W) clip, got {clip.shape}"
    x = np.clip(np.floor((clip + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0))


def write_gif(clip, path, *, fps: float = 8) -> Path:
    """An endlessly looping animated GIF."""
    from PIL import Image
    frames = clip_to_uint8(clip)
    images = [Image.fromarray(f) for f in frames]
    return atomic_write(Path(path), lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                           duration=max(1, round(1000 / fps)), loop=0, optimize=False))


def write_mp4(clip, path, *, fps: int = 8, crf: int = 18) -> Path:
    """An H.264 MP4 (yuv420p; odd sizes are padded by repeating the last row / column)."""
    try:
        import av
    except ImportError:
        raise MissingDependencyError("writing MP4 needs PyAV: pip install 'ddmi[video]'") from None
    frames = clip_to_uint8(clip)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = Path(path)
    with atomic_output(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = container.add_stream(codec, rate=int(fps))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf)}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def write_frames(clip, folder) -> list[Path]:
    """``folder/frame00000.png ...`` (the frame-folder layout the loader and FVD read)."""
    frames = clip_to_uint8(clip)
    return [save_image(f, Path(folder) / f"frame{i:05d}.png") for i, f in enumerate(frames)]


SHEET_COLUMNS = 8     # frames per row of a contact sheet; longer clips wrap onto more rows


def contact_sheet(clips: torch.Tensor, path, *, max_frames: int | None = None,
                  columns: int = SHEET_COLUMNS) -> Path:
    """Every clip of ``clips (B, 3, T, H, W)`` as a block of its frames (all of them, or
    ``max_frames`` evenly spaced ones), ``columns`` frames per row (a 32-frame clip wraps onto 4
    rows instead of one very wide one); blocks are stacked top to bottom, separated by a gap,
    each row labelled with the index of its first frame."""
    b, t = clips.shape[0], clips.shape[2]
    idx = torch.arange(t) if not max_frames or t <= max_frames else \
        torch.linspace(0, t - 1, max_frames).round().long()
    cols = min(columns, len(idx))
    labels = [f"t={int(idx[k])}" for k in range(0, len(idx), cols)] if len(idx) > cols else None
    frames = clip_to_uint8(torch.cat(list(clips[:, :, idx].float().cpu()), dim=1))   # (B * T', H, W, 3)
    blocks = [tile(frames[k * len(idx):(k + 1) * len(idx)], ncol=cols, row_labels=labels) for k in range(b)]
    gap = np.zeros((6, blocks[0].shape[1], 3), np.uint8)
    sheet = np.concatenate([part for block in blocks for part in (block, gap)][:-1])
    return save_image(sheet, path)
