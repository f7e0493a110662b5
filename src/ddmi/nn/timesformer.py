"""TimeSformer video encoder and ViT "axis collapsers" (the video D2C-VAE encoder, docs/official-code.md §3.4).

Tokens are ``(B, T, h, w, D)``: one token per ``p x p`` patch of every frame (no temporal
patching). Each block applies divided attention (Bertasius et al. 2021): attention over time
(the ``T`` tokens at one spatial position) with a 1-D rotary embedding of the frame index, then
attention over space (the ``h * w`` tokens of one frame) with an axial rotary embedding (half
of each head's channels rotate with the row, half with the column), then a GEGLU feed-forward;
all pre-LayerNorm and residual. Attention runs through ``F.scaled_dot_product_attention``
(scale ``head_dim ** -0.5``).

An :class:`AxisCollapser` is a small ViT over a 1-D sequence of tokens along one axis: a learned
token is prepended, learned positions are added, and the output at the learned token is kept.

Official compatibility (``video.official_rotary``, ``video.collapse_readout``,
``video.collapse_norm``; see :mod:`ddmi.domains.video.official`): the official encoder (PVDM's
TimeSformer) uses another rotary layout (:func:`official_frame_angles`, :func:`official_axial_angles`,
:func:`rotate_pairs`), appends the learned token of its collapsers after the sequence, reads the
output at the sequence's *first* element, and has no final LayerNorm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def rotary(x: torch.Tensor, pos: torch.Tensor, *, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of ``x (..., N, d)`` at positions ``pos (N,)``.

    Channel ``i < d/2`` is rotated together with channel ``i + d/2`` by ``pos * base^(-i/(d/2))``.
    """
    half = x.shape[-1] // 2
    freqs = torch.exp(-torch.log(torch.tensor(base)) * torch.arange(half, device=x.device) / half)
    ang = pos.to(torch.float32)[:, None] * freqs[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half:]], dim=-1)


def axial_rotary(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """2-D axial rotary embedding: the first half of the channels by row, the second by column."""
    half = x.shape[-1] // 2
    return torch.cat([rotary(x[..., :half], rows), rotary(x[..., half:], cols)], dim=-1)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """``(x_0, x_1, x_2, x_3, ...)`` -> ``(-x_1, x_0, -x_3, x_2, ...)``: the quarter turn of the
    channel pairs ``(2i, 2i + 1)`` (the official rotary layout)."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def official_frame_angles(n: int, dim_head: int, *, device=None) -> torch.Tensor:
    """Angles ``(n, dim_head)`` of the official frame rotary embedding: frequencies
    ``10000 ** (-2j / dim_head)`` (``j < dim_head / 2``) times the frame index, the list of
    ``dim_head / 2`` angles written twice (``[a_0 .. a_{d/2-1}, a_0 .. a_{d/2-1}]``). Used with
    :func:`rotate_pairs`, so channels ``2i`` and ``2i + 1`` turn by *different* angles: not a
    rotation, but what the official checkpoints were trained with."""
    inv = 1.0 / (10000 ** (torch.arange(0, dim_head, 2, device=device).float() / dim_head))
    ang = torch.arange(n, device=device).float()[:, None] * inv[None, :]
    return torch.cat([ang, ang], dim=-1)


def official_axial_angles(h: int, w: int, dim_head: int, *, max_freq: float = 10.0, device=None) -> torch.Tensor:
    """Angles ``(h * w, dim_head)`` (row-major tokens) of the official axial rotary embedding:
    scales ``logspace_2(0 .. log2(max_freq / 2), dim_head / 4)``, positions ``linspace(-1, 1)``
    per axis times ``pi``; the first ``dim_head / 4`` angles follow the row, the next the column,
    and every angle is repeated for its channel pair ``(2i, 2i + 1)``."""
    scales = torch.logspace(0.0, math.log(max_freq / 2) / math.log(2), dim_head // 4, base=2, device=device)
    hs = torch.linspace(-1.0, 1.0, h, device=device)[:, None] * scales * math.pi        # (h, d/4)
    ws = torch.linspace(-1.0, 1.0, w, device=device)[:, None] * scales * math.pi        # (w, d/4)
    ang = torch.cat([hs[:, None, :].expand(h, w, -1), ws[None, :, :].expand(h, w, -1)], dim=-1)
    return ang.reshape(h * w, -1).repeat_interleave(2, dim=-1)


def apply_official_rotary(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    """``x (..., N, d)`` turned by the official rotary angles ``ang (N, d)``."""
    return x * ang.cos() + rotate_pairs(x) * ang.sin()


class Attention(nn.Module):
    """Multi-head self-attention ``(B, N, dim) -> (B, N, dim)``: ``heads x dim_head`` inner
    channels, qkv without bias, output projection with bias; ``pos_fn`` rotates q and k."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, pos_fn=None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if pos_fn is not None:
            q, k = pos_fn(q), pos_fn(k)
        out = F.scaled_dot_product_attention(q, k, v)                 # (B, heads, N, dim_head)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    """``Linear(dim, 2*mult*dim) -> a * gelu(g) -> Linear(mult*dim, dim)``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(g))


class DividedBlock(nn.Module):
    """Time attention, space attention, feed-forward (each pre-LN, residual) on ``(B,T,h,w,D)``."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, *, official_rotary: bool = False):
        super().__init__()
        self.official_rotary = official_rotary
        self.norm_t, self.attn_t = nn.LayerNorm(dim), Attention(dim, heads, dim_head)
        self.norm_s, self.attn_s = nn.LayerNorm(dim), Attention(dim, heads, dim_head)
        self.norm_f, self.ff = nn.LayerNorm(dim), GEGLU(dim, ff_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = x.shape
        time_pos, space_pos = self.positions(t, h, w, x.device)
        xt = x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        xt = xt + self.attn_t(self.norm_t(xt), time_pos)
        x = xt.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)
        xs = x.reshape(b * t, h * w, d)
        xs = xs + self.attn_s(self.norm_s(xs), space_pos)
        xs = xs + self.ff(self.norm_f(xs))
        return xs.reshape(b, t, h, w, d)

    def positions(self, t: int, h: int, w: int, device):
        """The rotary embeddings ``(time, space)`` applied to q and k: functions of
        ``(..., N, dim_head)`` tensors."""
        if self.official_rotary:
            dh = self.attn_t.dim_head
            ta, sa = official_frame_angles(t, dh, device=device), official_axial_angles(h, w, dh, device=device)
            return (lambda q: apply_official_rotary(q, ta)), (lambda q: apply_official_rotary(q, sa))
        frames = torch.arange(t, device=device)
        rows = torch.arange(h, device=device).repeat_interleave(w)
        cols = torch.arange(w, device=device).repeat(h)
        return (lambda q: rotary(q, frames)), (lambda q: axial_rotary(q, rows, cols))


class TimeSformer(nn.Module):
    """Clip ``(B, 3, T, H, W)`` -> tokens ``(B, T, H/p, W/p, dim)``."""

    def __init__(self, *, patch: int, dim: int, depth: int, heads: int, dim_head: int,
                 ff_mult: int = 4, in_channels: int = 3, official_rotary: bool = False):
        super().__init__()
        assert dim_head % 4 == 0, f"dim_head ({dim_head}) must be a multiple of 4 (axial rotary)"
        self.patch = patch
        self.to_tokens = nn.Linear(in_channels * patch * patch, dim)
        self.blocks = nn.ModuleList([DividedBlock(dim, heads, dim_head, ff_mult, official_rotary=official_rotary)
                                     for _ in range(depth)])

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        b, c, t, hh, ww = clip.shape
        p = self.patch
        assert hh % p == 0 and ww % p == 0, f"frame size {hh}x{ww} is not a multiple of the patch {p}"
        x = clip.reshape(b, c, t, hh // p, p, ww // p, p).permute(0, 2, 3, 5, 4, 6, 1)
        x = self.to_tokens(x.reshape(b, t, hh // p, ww // p, p * p * c))
        for block in self.blocks:
            x = block(x)
        return x


class AxisCollapser(nn.Module):
    """ViT over sequences ``(N, L, dim)`` -> ``(N, dim)`` (the output at a learned token).

    ``readout="token"`` (ddmi): the learned token is prepended and its output kept.
    ``readout="first"`` (official): the learned token is appended *after* the sequence, the
    positions are added to ``[seq, token]`` and the output at the sequence's first element is kept
    (the token then only takes part in the attention). ``final_norm``: a LayerNorm on the output
    (ddmi); the official collapsers have none."""

    def __init__(self, *, length: int, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 readout: str = "token", final_norm: bool = True):
        super().__init__()
        assert readout in ("token", "first"), f"readout {readout!r} is not 'token' or 'first'"
        self.readout = readout
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, length + 1, dim) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([
                nn.LayerNorm(dim), Attention(dim, heads, dim_head), nn.LayerNorm(dim),
                nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim)),
            ]))
        self.norm = nn.LayerNorm(dim) if final_norm else nn.Identity()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        n, length, _ = seq.shape
        assert length + 1 == self.pos.shape[1], f"expected sequences of {self.pos.shape[1] - 1}, got {length}"
        token = self.token.expand(n, -1, -1)
        x = torch.cat([token, seq] if self.readout == "token" else [seq, token], dim=1) + self.pos
        for norm1, attn, norm2, mlp in self.layers:
            x = x + attn(norm1(x))
            x = x + mlp(norm2(x))
        return self.norm(x[:, 0])
