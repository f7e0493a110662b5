"""Video data: frame folders (SkyTimelapse / PVDM layout) and video files, as training clips.

Layout (docs/official-code.md §8)::

    ROOT/train/<video>/frame00000.png ...        one folder of frames per video
    ROOT/train/<video>/<clip>/frame00000.jpg ... or nested clip folders (PVDM)
    ROOT/train/<name>.mp4                        or video files (.mp4 .webm .avi .mov .mkv)
    ROOT/val/...                                 held-out videos (``test/`` is accepted too)

A *video* is every folder that directly holds image files (its frames, in natural name order:
``frame2`` before ``frame10``) and every video file. Videos shorter than the clip length ``F`` are
skipped; how many is logged, and only an empty result is an error. A training item is a window
of ``F`` consecutive frames, each centre-cropped to a square and resized (Lanczos, antialiased)
to ``R x R``: ``float32 (3, F, R, R)`` in [-1, 1]. A corrupt or unreadable frame, a frame whose size
differs from the others of its clip, or a video file FFmpeg reports damaged raises
:class:`~ddmi.errors.DataError` naming the file (greyscale and RGBA frames are converted as
:func:`ddmi.data.images.load_image` does).

Randomness: the window of video ``i`` drawn at global training position ``pos`` starts at a
frame drawn from a generator seeded with ``(seed, i, pos)``, so training is reproducible and
resumable whatever the number of workers (``StepBatchSampler(positional=True)``); indexing with
a plain ``i`` gives one fixed window per video (for caches and previews).

Video files are decoded with PyAV (``pip install 'ddmi[video]'``), imported only when one is met.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ddmi.errors import DataError, MissingDependencyError
from ddmi.data.images import IMAGE_EXTENSIONS, _center_crop_resize, _load_rgb, read_skipping_bad

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")

__all__ = ["VideoFolderDataset", "find_videos", "load_clip", "read_video_frames", "VIDEO_EXTENSIONS"]


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("reading video files needs PyAV: pip install 'ddmi[video]' "
                                     "(or give folders of frames)") from None
    return av


def find_videos(root: PathLike) -> list[tuple[Path, list[Path] | None]]:
    """Every video under ``root``: ``(folder, sorted frame paths)`` or ``(file, None)``, sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"video folder not found: {root}")
    frames: dict[Path, list[Path]] = {}
    files: list[Path] = []
    for p in root.rglob("*"):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists() and p.suffix.lower() in (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS):
            warnings.warn(f"{p} is a link to a missing file: left out", RuntimeWarning, stacklevel=2)
            continue
        if not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            frames.setdefault(p.parent, []).append(p)
        elif suffix in VIDEO_EXTENSIONS:
            files.append(p)
    out: list[tuple[Path, list[Path] | None]] = [(d, sorted(f, key=_natural_key)) for d, f in frames.items()]
    for folder, paths in out:
        _warn_numbering_gap(folder, paths)
    out += [(f, None) for f in files]
    return sorted(out, key=lambda item: str(item[0]))


def _warn_numbering_gap(folder: Path, paths: list[Path]) -> None:
    """Warn when the numbers in a frame folder's file names skip (``frame_0007`` then
    ``frame_0009``): a frame is missing, and the clip would jump."""
    numbers = [int(m.group(1)) for p in paths if (m := re.search(r"(\d+)\D*$", p.stem))]
    if len(numbers) != len(paths) or len(numbers) < 2:
        return
    gaps = [(a, b) for a, b in zip(numbers, numbers[1:]) if b != a + 1]
    if gaps:
        a, b = gaps[0]
        warnings.warn(f"{folder}: the frame numbers skip from {a} to {b} ({len(gaps)} gap(s)); the frames are used "
                      "in order, so the clip jumps where a frame is missing", RuntimeWarning, stacklevel=3)


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise DataError(f"{path}: holds no video stream")
    return container.streams.video[0]


def _av_errors(av) -> tuple:
    # FFmpegError for what FFmpeg rejects; ValueError (UnicodeDecodeError) for damaged metadata
    # strings, which PyAV decodes as UTF-8 when opening the file
    return (av.error.FFmpegError, OSError, ValueError)


@contextmanager
def _decoder_errors(av):
    """Collect FFmpeg's error-level messages while decoding: FFmpeg conceals some corruptions (a
    truncated GIF's last frame: "LZW decode failed") and only logs them."""
    previous = av.logging.get_level()
    if previous is None or previous < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(previous)


def video_frame_count(path: Path) -> int:
    """Frames of a video file (from the container, or by counting its packets)."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            if stream.frames:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)
    except _av_errors(av) as exc:
        raise DataError(f"{path}: cannot read the video ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def read_video_frames(path: PathLike, start: int = 0, count: int | None = None) -> list[np.ndarray]:
    """Frames ``[start, start + count)`` of a video file as ``(H, W, 3)`` uint8 arrays. A file that
    FFmpeg reports damaged while decoding them raises :class:`DataError`, even where FFmpeg
    itself would go on with concealed (wrong) pixels."""
    av = _av()
    path = Path(path)
    out: list[np.ndarray] = []
    try:
        with _decoder_errors(av) as logs, av.open(str(path)) as container:
            stream = _video_stream(container, path)
            for i, frame in enumerate(container.decode(stream)):
                if i < start:
                    continue
                out.append(frame.to_ndarray(format="rgb24"))
                if count is not None and len(out) == count:
                    break
    except _av_errors(av) as exc:
        raise DataError(f"{path}: cannot decode the video ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    errors = [(name, msg.strip()) for level, name, msg in logs if level is not None and level <= av.logging.ERROR]
    if errors:
        name, msg = errors[0]
        raise DataError(f"{path}: damaged video data ({name}: {msg})".splitlines()[0])
    if count is not None and len(out) < count:
        raise DataError(f"{path}: has {start + len(out)} decodable frames, needs {start + count}")
    return out


def _load_frames(paths: list[Path]) -> list:
    """The frames of one window of a frame folder, all of one size (a frame of another size is
    most likely a stray file: its crop would jump within the clip)."""
    frames = [_load_rgb(p) for p in paths]
    for p, f in zip(paths[1:], frames[1:]):
        if f.size != frames[0].size:
            raise DataError(f"{p}: frame size {f.size[0]}x{f.size[1]} differs from "
                            f"{paths[0].name}'s {frames[0].size[0]}x{frames[0].size[1]} in the same video")
    return frames


def _prepare(frames, resolution: int) -> torch.Tensor:
    """PIL images or uint8 arrays -> ``(3, F, R, R)`` float32 in [-1, 1]."""
    from PIL import Image
    arrs = []
    for f in frames:
        img = Image.fromarray(f) if isinstance(f, np.ndarray) else f
        arrs.append(np.asarray(_center_crop_resize(img, resolution), dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrs)).permute(3, 0, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def load_clip(source: PathLike, frames: int, resolution: int, *, start: int = 0) -> torch.Tensor:
    """A clip of ``frames`` frames from a frame folder or a video file: ``(3, F, R, R)`` in [-1, 1]."""
    source = Path(source)
    if source.is_dir():
        paths = sorted([p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()],
                       key=_natural_key)
        if len(paths) < start + frames:
            raise DataError(f"{source}: holds {len(paths)} frames, needs {start + frames}")
        return _prepare(_load_frames(paths[start:start + frames]), resolution)
    if not source.is_file():
        raise DataError(f"{source}: no such video file or frame folder")
    return _prepare(read_video_frames(source, start, frames), resolution)


def split_folder(root: PathLike, split: str) -> Path:
    """``ROOT/<split>`` (``val`` falls back to ``test``); ``ROOT`` itself for ``train`` when it has
    no split folders."""
    root = Path(root).expanduser()
    names = {"train": ["train"], "val": ["val", "test"], "test": ["test", "val"]}.get(split, [split])
    for name in names:
        if (root / name).is_dir():
            return root / name
    if split == "train" and root.is_dir() and not any((root / n).is_dir() for n in ("val", "test")):
        return root
    raise DataError(f"{root}: no {' or '.join(names)} folder of videos")


class VideoFolderDataset(Dataset):
    """Clips of ``frames`` frames from the videos of one split (module docstring).

    ``dataset[i]`` -> ``(3, F, R, R)``, a fixed window of video ``i``; ``dataset[(i, pos)]`` -> the
    window drawn for global training position ``pos``. ``skipped_short`` counts the videos left
    out for having fewer than ``frames`` frames.

    ``skip_bad``: if ``False`` (default), an unreadable or damaged video raises
    :class:`DataError` naming it. If ``True``, it is logged once and skipped: a video that cannot
    be opened is left out at construction, and one that fails while decoding is replaced by the
    next readable video (the same one every time, so a resumed run sees the same data).
    """

    positional = True

    def __init__(self, root: PathLike, *, split: str = "train", frames: int = 16, resolution: int = 64,
                 seed: int = 0, log=None, skip_bad: bool = False):
        self.root = split_folder(root, split)
        self.frames, self.resolution, self.seed = int(frames), int(resolution), int(seed)
        if self.frames < 1 or self.resolution < 1:
            raise DataError(f"frames and resolution must be >= 1, got {frames}, {resolution}")
        self.skip_bad = bool(skip_bad)
        self.bad_videos: set[int] = set()         # indices into ``videos`` that failed to decode
        self._warn = log or logger.warning
        self.videos: list[tuple[Path, list[Path] | None, int]] = []
        self.skipped_short = 0
        example = ""
        for source, paths in find_videos(self.root):
            try:
                n = len(paths) if paths is not None else video_frame_count(source)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self._warn_bad(exc)
                continue
            if n < self.frames:
                self.skipped_short += 1
                example = example or f"{source} ({n} frames)"
                continue
            self.videos.append((source, paths, n))
        if self.skipped_short:
            msg = (f"{self.root}: skipped {self.skipped_short} video(s) shorter than {self.frames} frames "
                   f"({len(self.videos)} kept), e.g. {example}")
            self._warn(msg)
        if not self.videos:
            raise DataError(f"{self.root}: no video with at least {self.frames} frames"
                            + (f" ({self.skipped_short} shorter ones skipped, e.g. {example})" if self.skipped_short else ""))

    def __len__(self) -> int:
        return len(self.videos)

    def window_start(self, i: int, position: int = -1) -> int:
        n = self.videos[i][2]
        rng = np.random.default_rng([self.seed, i, int(position) + 1])
        return int(rng.integers(0, n - self.frames + 1))

    def _warn_bad(self, exc: DataError) -> None:
        self._warn(f"skipping unreadable video (data.skip_bad): {exc}")

    def _read(self, i: int, position: int) -> torch.Tensor:
        source, paths, _ = self.videos[i]
        start = self.window_start(i, position)
        if paths is None:
            return _prepare(read_video_frames(source, start, self.frames), self.resolution)
        return _prepare(_load_frames(paths[start:start + self.frames]), self.resolution)

    def __getitem__(self, key) -> torch.Tensor:
        i, position = (key, -1) if isinstance(key, (int, np.integer)) else key
        n = len(self.videos)
        return read_skipping_bad(range(n), int(i) % n, lambda j: self._read(j, position),
                                 skip_bad=self.skip_bad, bad=self.bad_videos,
                                 warn=lambda j, exc: self._warn_bad(exc),
                                 none_left=f"no readable video in {self.root}: all {n} failed to load")
