"""VGG16 LPIPS perceptual distance (Zhang et al. 2018, "lin" version v0.1), written out in code.

No torchvision and no network access: the weights are read from local files only.

* :class:`LPIPS` — the network. ``LPIPS()(x, y)`` takes two image batches ``(B, 3, H, W)`` in
  ``[-1, 1]`` (``H, W >= 16``) and returns the distance per image, shape ``(B,)``.
* :meth:`LPIPS.from_file` — one combined file (safetensors or a ``torch.save`` state dict) with
  the VGG16 backbone and the five linear heads; write one with :meth:`LPIPS.save_combined`.
* :meth:`LPIPS.from_files` — a torchvision ``vgg16`` state dict file plus the official LPIPS heads
  file ``vgg.pth`` (shipped by the PyPI package ``lpips``; see :meth:`LPIPS.heads_from_lpips_package`).
* :func:`load_lpips` — the convenience used by training (``None`` turns the loss off).

The state dict of :class:`LPIPS` is exactly the union of torchvision's ``vgg16().features``
keys (``features.0.weight`` ... ``features.28.bias``) and the official heads keys
(``lin0.model.1.weight`` ... ``lin4.model.1.weight``).  Files saved from the official ``lpips``
module (``net.slice1.0.weight`` ..., ``scaling_layer.shift``) are also understood.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ddmi.errors import CheckpointError, MissingDependencyError

__all__ = ["LPIPS", "load_lpips", "VGG16_CFG", "SLICE_ENDS", "HEAD_CHANNELS"]

#: torchvision's VGG16 "D" configuration (``M`` = 2x2 max-pool), without the final pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: End indices (exclusive) in ``features`` of the five slices: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
SLICE_ENDS = (4, 9, 16, 23, 30)
#: Channels of the five tapped layers (= inputs of the five linear heads).
HEAD_CHANNELS = (64, 128, 256, 512, 512)

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10
_FORMAT = "ddmi-lpips-vgg16-lin-v0.1"


def _make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    assert len(layers) == SLICE_ENDS[-1]
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """The official ``NetLinLayer``: ``[Dropout,] 1x1 conv C -> 1, no bias``.

    The dropout slot is always index 0 (an ``Identity`` without dropout), so the weight key is
    ``model.1.weight`` either way, as in the official ``vgg.pth``.
    """

    def __init__(self, channels: int, use_dropout: bool):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout() if use_dropout else nn.Identity(),
                                   nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit_normalize(x: torch.Tensor) -> torch.Tensor:
    # Official: x / (sqrt(sum(x^2, dim=1)) + 1e-10). vector_norm has a zero (not NaN) gradient
    # where a feature vector is all zeros, which sqrt(sum(x^2)) does not.
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + _EPS)


class LPIPS(nn.Module):
    """VGG16 LPIPS ("lin", v0.1). ``forward(x, y) -> (B,)`` for images in ``[-1, 1]``.

    A fresh ``LPIPS()`` is randomly initialised (VGG convs as torchvision: Kaiming-normal,
    zero bias; heads constant ``1/C``, i.e. an unweighted channel mean) — useful for tests only.
    Load real weights with :meth:`from_file` / :meth:`from_files`.

    The parameters are frozen (``requires_grad=False``) and the module stays in eval mode:
    ``.train()`` is a no-op, so the heads' dropout (``use_dropout=True``, as in the original) is
    never active and the loss is deterministic. Gradients flow to the inputs.
    """

    def __init__(self, use_dropout: bool = True):
        super().__init__()
        self.use_dropout = use_dropout
        # Constants, not weights: non-persistent, so the state dict holds only learned tensors.
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = _make_features()
        for i, c in enumerate(HEAD_CHANNELS):
            self.add_module(f"lin{i}", _Head(c, use_dropout))
        self._init_random()
        self.requires_grad_(False)
        super().train(False)

    # ------------------------------------------------------------------ network

    def _init_random(self) -> None:
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for head, c in zip(self.heads, HEAD_CHANNELS):
            nn.init.constant_(head.model[1].weight, 1.0 / c)

    @property
    def heads(self) -> list[_Head]:
        return [getattr(self, f"lin{i}") for i in range(len(HEAD_CHANNELS))]

    def train(self, mode: bool = True) -> "LPIPS":
        """Ignored: LPIPS always stays in eval mode (see the class docstring)."""
        return super().train(False)

    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped VGG activations (relu1_2 ... relu5_3) of scaled input ``x``."""
        feats, start = [], 0
        for end in SLICE_ENDS:
            for i in range(start, end):
                x = self.features[i](x)
            feats.append(x)
            start = end
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distance between ``x`` and ``y`` (``(B, 3, H, W)``, in ``[-1, 1]``) -> ``(B,)``."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two (B, 3, H, W) batches of the same shape, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"LPIPS (VGG16) needs images of at least 16x16, got {tuple(x.shape[-2:])}")
        n = x.shape[0]
        both = (torch.cat([x, y]) - self.shift) / self.scale   # one backbone pass for both
        total = x.new_zeros(n)
        for feat, head in zip(self.layer_features(both), self.heads):
            f = _unit_normalize(feat)
            d = (f[:n] - f[n:]).pow(2)
            total = total + head(d).mean(dim=(1, 2, 3))
        return total

    # ------------------------------------------------------------------ weights

    @staticmethod
    def heads_from_lpips_package(version: str = "0.1") -> str | None:
        """Path of ``lpips/weights/v<version>/vgg.pth`` inside an installed ``lpips`` package.

        The package is located with ``importlib.util.find_spec`` (it is not imported, so its
        torchvision dependency is not needed). ``None`` if the package or file is absent.
        """
        try:
            spec = importlib.util.find_spec("lpips")
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        roots = list(spec.submodule_search_locations or [])
        if not roots and spec.origin:
            roots = [str(Path(spec.origin).parent)]
        for root in roots:
            p = Path(root) / "weights" / f"v{version}" / "vgg.pth"
            if p.is_file():
                return str(p)
        return None

    @classmethod
    def from_file(cls, path: str | Path, *, use_dropout: bool = True) -> "LPIPS":
        """Load one combined weights file (backbone + heads), e.g. from :meth:`save_combined`."""
        sd = _normalize_keys(_read_state_dict(path, what="LPIPS weights"))
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        model = cls(use_dropout=use_dropout)
        model._load_checked(sd, path, expected=set(model.state_dict()))
        return model

    @classmethod
    def from_files(cls, *, backbone: str | Path, heads: str | Path,
                   use_dropout: bool = True) -> "LPIPS":
        """Load a torchvision ``vgg16`` state dict file plus the official LPIPS ``vgg.pth`` heads.

        The backbone's ``classifier.*`` keys are ignored.
        """
        model = cls(use_dropout=use_dropout)
        keys = set(model.state_dict())
        want_b = {k for k in keys if k.startswith("features.")}
        sd_b = _normalize_keys(_read_state_dict(backbone, what="VGG16 backbone weights"))
        sd_b = {k: v for k, v in sd_b.items() if not k.startswith("classifier.")}
        sd_h = _normalize_keys(_read_state_dict(heads, what="LPIPS heads weights"))
        model._load_checked(sd_b, backbone, expected=want_b, partial=True)
        model._load_checked(sd_h, heads, expected=keys - want_b, partial=True)
        return model

    def save_combined(self, path: str | Path) -> None:
        """Write backbone + heads as one safetensors file (atomically), readable by :meth:`from_file`."""
        from safetensors.torch import save

        from ddmi.files import atomic_write_bytes

        sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(Path(path), save(sd, metadata={"format": _FORMAT}))

    def _load_checked(self, sd: dict[str, torch.Tensor], path, *, expected: set[str],
                      partial: bool = False) -> None:
        missing = sorted(expected - set(sd), key=_natural)
        unexpected = sorted(set(sd) - expected, key=_natural)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {_short(missing)}")
            if unexpected:
                parts.append(f"unexpected keys {_short(unexpected)}")
            raise CheckpointError(f"{path}: not an LPIPS VGG16 weights file: " + "; ".join(parts))
        own = self.state_dict()
        for k, v in sd.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise CheckpointError(f"{path}: wrong shape for {k}: file has {tuple(v.shape)}, "
                                      f"expected {tuple(own[k].shape)}")
        with torch.no_grad():
            self.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=not partial)


# ---------------------------------------------------------------------- file helpers

def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _short(keys: list[str], n: int = 6) -> str:
    s = ", ".join(keys[:n])
    return s + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _read_state_dict(path: str | Path, *, what: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDependencyError(f"{what} file not found: {p}")
    try:
        with open(p, "rb") as f:
            head = f.read(9)
        if len(head) == 9 and head[8:9] == b"{":      # safetensors: u64 header length, then JSON
            from safetensors.torch import load_file
            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse is a corrupt/foreign file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {what} file {p}: {msg}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what} file {p} does not hold a state dict of tensors")
    return dict(sd)


def _normalize_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the official ``lpips.LPIPS`` module keys onto ours; drop its constant buffers.

    Handles ``net.sliceN.I.*`` -> ``features.I.*``, the ``lins.N`` aliases, heads saved without
    dropout (``linN.model.0.weight``) and a DDP ``module.`` prefix.
    """
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k in ("scaling_layer.shift", "scaling_layer.scale"):
            continue
        m = re.fullmatch(r"net\.slice[1-5]\.(\d+)\.(weight|bias)", k)
        if m:  # the official slices keep torchvision's global layer index as the module name
            k = f"features.{m[1]}.{m[2]}"
        m = re.fullmatch(r"lins?\.?([0-4])\.model\.[01]\.weight", k)
        if m:  # official: `lins` is a ModuleList alias of lin0..lin4; no dropout -> model.0
            k = f"lin{m[1]}.model.1.weight"
        out[k] = v
    return out


# ---------------------------------------------------------------------- training helper

def load_lpips(weights: str | Path | None, *, backbone: str | Path | None = None,
               log: Callable[[str], object] = print) -> LPIPS | None:
    """The perceptual network for training, or ``None`` (logged) when ``weights`` is ``None``.

    ``weights`` alone is a combined file (:meth:`LPIPS.from_file`); with ``backbone`` given,
    ``weights`` is the heads file and ``backbone`` the torchvision VGG16 file (:meth:`LPIPS.from_files`).
    """
    if weights is None:
        if backbone is not None:
            raise MissingDependencyError(
                "an LPIPS backbone file was given but no heads/weights file (lpips_weights)")
        log("LPIPS off (no weights file; set loss.lpips_weights=PATH to a local LPIPS VGG16 file, "
            "see docs/gan.md)")
        return None
    if backbone is None:
        model = LPIPS.from_file(weights)
        log(f"LPIPS on: VGG16 weights from {weights}")
    else:
        model = LPIPS.from_files(backbone=backbone, heads=weights)
        log(f"LPIPS on: VGG16 backbone from {backbone}, heads from {weights}")
    return model
