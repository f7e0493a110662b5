"""Multi-scale planes, plane sampling, the coarse-to-fine (CFC) MLP decoders, and ``Field``.

Coordinate convention (everywhere in ddmi): coordinates live in [-1, 1] with pixel-centre
semantics; channel 0 is x (width), channel 1 is y (height), then z or t. Planes are sampled with
``grid_sample(..., align_corners=False, padding_mode="border")``, so the pixel centres of an
``R x R`` plane sit at ``linspace(-(R-1)/R, (R-1)/R, R)`` and a grid of that size reads the plane's
pixels exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------------
# coordinates and plane sampling


def pixel_centers(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The ``n`` pixel centres of [-1, 1]: ``linspace(-(n-1)/n, (n-1)/n, n)``."""
    return torch.linspace(-(n - 1) / n, (n - 1) / n, n, device=device, dtype=dtype)


def image_grid(height: int, width: int | None = None, *, device=None) -> torch.Tensor:
    """Pixel-centre coordinates of an image, ``(H, W, 2)`` with channel 0 = x, 1 = y."""
    width = height if width is None else width
    ys, xs = torch.meshgrid(pixel_centers(height, device=device),
                            pixel_centers(width, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def sample_plane(plane: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``plane (B, C, H, W)`` at ``coords (B, N, 2)`` (x, y) -> ``(B, N, C)``."""
    out = F.grid_sample(plane, coords.unsqueeze(1).to(plane.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


# ------------------------------------------------------------------------------------------
# StyleGAN2-style modulated layers, written as per-point matrix products


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights ~ N(0,1), scaled by 1/sqrt(fan_in))."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.full((out_features,), bias_init)) if bias else None
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class ModulatedLinear(nn.Module):
    """A 1x1 modulated convolution (StyleGAN2) as a per-point linear map.

    ``x (B, N, in)``, ``style (B, style_dim)`` -> ``(B, N, out)``. The weight is scaled per input
    channel by the style and, with ``demodulate``, renormalised per output channel; this equals
    scaling the input by the style and the output by the demodulation factor, which is how it is
    computed (one matrix product for the whole batch).
    """

    def __init__(self, in_features: int, out_features: int, style_dim: int, *,
                 demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.modulation = EqualLinear(style_dim, in_features, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_features)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style) * self.scale                      # (B, in)
        out = torch.matmul(x * s[:, None, :], self.weight.t())      # (B, N, out)
        if self.demodulate:
            w2 = torch.matmul(s.pow(2), self.weight.pow(2).t())     # (B, out)
            out = out * torch.rsqrt(w2 + 1e-8)[:, None, :]
        return out


class StyledLayer(nn.Module):
    """Modulated linear + bias + leaky ReLU(0.2) * sqrt(2) (StyleGAN2's FusedLeakyReLU).

    With ``noise_injection`` (the official StyledConv's NoiseInjection, off by default) the layer
    has a learned scalar ``noise_weight`` and adds ``noise_weight * noise`` before the bias, where
    ``noise (B, N)`` is one value per point shared by all channels (zero when not given).
    """

    def __init__(self, in_features: int, out_features: int, style_dim: int, *, noise_injection: bool = False):
        super().__init__()
        self.linear = ModulatedLinear(in_features, out_features, style_dim)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.noise_weight = nn.Parameter(torch.zeros(1)) if noise_injection else None

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        out = self.linear(x, style)
        if self.noise_weight is not None and noise is not None:
            out = out + self.noise_weight * noise.to(out.dtype)[..., None]
        return F.leaky_relu(out + self.bias, 0.2) * SQRT2


class StyledResBlock(nn.Module):
    """Three styled layers with a residual connection: ``(layers(x) + skip(x)) / sqrt(2)``."""

    def __init__(self, in_features: int, out_features: int, style_dim: int, *, noise_injection: bool = False):
        super().__init__()
        self.layers = nn.ModuleList([
            StyledLayer(in_features, out_features, style_dim, noise_injection=noise_injection),
            StyledLayer(out_features, out_features, style_dim, noise_injection=noise_injection),
            StyledLayer(out_features, out_features, style_dim, noise_injection=noise_injection),
        ])
        self.skip = (EqualLinear(in_features, out_features, bias=False)
                     if in_features != out_features else nn.Identity())

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise=None) -> torch.Tensor:
        """``noise``: None, or a callable ``() -> (B, N)`` giving each layer's noise in turn."""
        h = x
        for layer in self.layers:
            h = layer(h, style, None if noise is None else noise())
        return (h + self.skip(x)) / SQRT2


def sinusoidal_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of a ``(B,)`` scalar -> ``(B, dim)`` (sin | cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / (half - 1))
    args = x.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=-1)


# ------------------------------------------------------------------------------------------
# the image CFC decoder


@dataclass
class ImageMLPSpec:
    """Architecture of the image CFC MLP (``MLP(in_ch=2, out_ch=3, ch, latent_dim)``)."""

    plane_channels: int = 64
    num_scales: int = 3
    hidden: int = 256
    scale_embed_dim: int = 64
    out_channels: int = 3
    noise_injection: bool = False      # the official NoiseInjection weights (see StyledLayer)


class ImageMLP(nn.Module):
    """Coarse-to-fine styled MLP that reads 2-D multi-scale planes at continuous coordinates.

    Every scale ``k`` contributes ``[sample(plane_k, coords), si, si]`` (``C + 2`` channels).
    The coarsest enters the first block; each finer one is concatenated with the hidden state
    before the next block. The scale injection ``si`` (render-size ratio: 1 at the training
    resolution, 1/2 at twice it) is also embedded into the style vector of every layer.
    """

    def __init__(self, spec: ImageMLPSpec):
        super().__init__()
        self.spec = spec
        c, h, e = spec.plane_channels + 2, spec.hidden, spec.scale_embed_dim
        self.style = nn.Sequential(nn.Linear(e, h), nn.GELU(), nn.Linear(h, h))
        n = spec.noise_injection
        self.blocks = nn.ModuleList(
            [StyledResBlock(c, h, h, noise_injection=n)]
            + [StyledResBlock(h + c, h, h, noise_injection=n) for _ in range(spec.num_scales - 1)]
        )
        self.final = StyledResBlock(h, h, h, noise_injection=n)
        self.to_rgb = ModulatedLinear(h, spec.out_channels, h, demodulate=False)
        self.rgb_bias = nn.Parameter(torch.zeros(spec.out_channels))

    def forward(self, planes: list[torch.Tensor], coords: torch.Tensor,
                si: torch.Tensor, noise: torch.Generator | list[torch.Tensor] | None = None) -> torch.Tensor:
        """``planes``: coarse to fine ``(B, C, h_k, w_k)``; ``coords (B, N, 2)``; ``si (B,)``.

        ``noise`` feeds the NoiseInjection layers (``spec.noise_injection``; ignored otherwise):
        None (no noise: deterministic), a ``torch.Generator`` from which each styled layer in turn
        draws ``randn(B, N)`` (the official draw order: block by block, layer by layer, so an
        ``H x W`` grid in row-major order queried in one call draws what the official
        ``(B, 1, H, W)`` NoiseInjection draws from a generator in the same state; a
        :class:`Field` query split into several chunks draws chunk by chunk instead), or one
        ``(B, N)`` tensor per styled layer (then all ``N`` points in one call).

        Returns ``(B, N, out_channels)`` (RGB in about [-1, 1]; not clamped).
        """
        assert len(planes) == len(self.blocks), f"expected {len(self.blocks)} planes, got {len(planes)}"
        style = self.style(sinusoidal_embedding(si, self.spec.scale_embed_dim))
        si_feat = si.to(coords.dtype)[:, None, None].expand(-1, coords.shape[1], 2)
        draw = self._noise_source(noise, coords) if self.spec.noise_injection else None
        h = None
        for plane, block in zip(planes, self.blocks):
            f = torch.cat([sample_plane(plane, coords), si_feat], dim=-1)
            h = block(f if h is None else torch.cat([h, f], dim=-1), style, draw)
        h = self.final(h, style, draw)
        return self.to_rgb(h, style) + self.rgb_bias

    @staticmethod
    def _noise_source(noise, coords: torch.Tensor):
        """``noise`` (see :meth:`forward`) as a callable returning the next layer's ``(B, N)``."""
        if noise is None:
            return None
        shape = coords.shape[:2]
        if isinstance(noise, torch.Generator):
            return lambda: torch.randn(shape, generator=noise, device=noise.device).to(coords.device)
        pieces = iter(noise)

        def take() -> torch.Tensor:
            piece = next(pieces)
            if piece.shape != shape:
                raise ValueError(f"noise of shape {tuple(piece.shape)} for {tuple(shape)} points "
                                 "(query all points in one chunk to pass explicit noise)")
            return piece
        return take


# ------------------------------------------------------------------------------------------
# Field


@dataclass
class Field:
    """A decoded implicit neural representation: multi-scale planes plus the shared MLP.

    ``decoder(planes, coords, **cond) -> (B, N, out)`` is the MLP; ``cond`` holds per-sample
    conditioning tensors (e.g. the image scale injection ``si``). ``query`` evaluates the field at
    arbitrary continuous coordinates in chunks of ``chunk`` points, so memory stays bounded
    whatever the number of points.
    """

    planes: list[torch.Tensor]
    decoder: Callable[..., torch.Tensor]
    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    chunk: int = 8192

    @property
    def batch_size(self) -> int:
        return self.planes[0].shape[0]

    def query(self, coords: torch.Tensor, **cond_override) -> torch.Tensor:
        """``coords (B, N, D)`` or ``(N, D)`` (shared by the batch) -> ``(B, N, out)``."""
        if coords.dim() == 2:
            coords = coords.unsqueeze(0).expand(self.batch_size, -1, -1)
        cond = {**self.cond, **cond_override}
        out = None      # filled chunk by chunk: no list of pieces and no concatenated copy
        for i in range(0, coords.shape[1], self.chunk):
            part = self.decoder(self.planes, coords[:, i:i + self.chunk], **cond)
            if out is None:
                out = part.new_empty(part.shape[0], coords.shape[1], part.shape[2])
            out[:, i:i + part.shape[1]] = part
        return out

    def __getitem__(self, index) -> "Field":
        """A field restricted to some of the batch: ``field[i]`` or ``field[a:b]``."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Field([p[index] for p in self.planes], self.decoder,
                     {k: v[index] for k, v in self.cond.items()}, self.chunk)
