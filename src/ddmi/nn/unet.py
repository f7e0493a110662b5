"""ADM / LDM-style UNet denoiser for the stage-2 latent diffusion model.

The layout follows the "ablated diffusion model" UNet (Dhariwal & Nichol 2021) as shipped
in latent-diffusion's ``openaimodel.UNetModel``, which DDMI uses for its image, occupancy
and NeRF latents, so that the parameter counts of the paper-size presets match the official
ones exactly (docs/official-code.md §10):

    encoder:  conv_in, then per level ``num_res_blocks`` x [ResBlock (+ attention)],
              and a stride-2 conv Downsample between levels
    middle:   ResBlock, attention, ResBlock
    decoder:  per level ``num_res_blocks + 1`` x [ResBlock on concat(h, skip) (+ attention)],
              and a nearest-x2 + conv Upsample between levels
    output:   GroupNorm -> SiLU -> zero-initialised conv3x3

Every block that writes into the residual stream (the second conv of a ResBlock, the
attention projection, the output conv) is zero-initialised, so the freshly built network
outputs exactly zero.

Tensor shapes: ``x`` is (B, C, H, W) with H and W divisible by ``2 ** (len(channel_mult) - 1)``;
timesteps ``t`` are (B,) (integer or float) in [0, T).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["UNet", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (Vaswani et al. 2017, as in ADM).

    Args:
        t: (B,) timesteps, integer or float.
        dim: embedding size.
    Returns:
        (B, dim) float32 embedding ``[cos(t * f_i), sin(t * f_i)]`` with
        ``f_i = max_period ** (-i / (dim // 2))``; zero-padded when ``dim`` is odd.
    """
    assert t.ndim == 1, f"timesteps must have shape (B,), got {tuple(t.shape)}"
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always computes its statistics in float32 (safe under fp16 autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    assert channels % groups == 0, (
        f"GroupNorm needs channels ({channels}) divisible by norm_groups ({groups})"
    )
    return GroupNorm32(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM residual block without scale-shift norm.

    (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W):
    ``skip(x) + conv(drop(SiLU(GN(conv(SiLU(GN(x))) + W SiLU(emb)))))``.
    """

    def __init__(self, *, in_ch: int, out_ch: int, emb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            _norm(in_ch, groups), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch))
        self.out_layers = nn.Sequential(
            _norm(out_ch, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, GroupNorm pre-norm.

    (B, C, H, W) -> (B, C, H, W); heads = C // head_channels, scale head_dim ** -0.5.
    """

    def __init__(self, *, channels: int, head_channels: int, groups: int):
        super().__init__()
        assert channels % head_channels == 0, (
            f"attention channels ({channels}) must be divisible by num_head_channels ({head_channels})"
        )
        self.heads = channels // head_channels
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 conv3x3: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then conv3x3: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A sequence of blocks; ResBlocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """ADM/LDM UNet epsilon-network: ``forward(x (B,C_in,H,W), t (B,)) -> (B,C_out,H,W)``.

    Args:
        in_channels, out_channels: latent channels in and out.
        model_channels: base width ``mc``; level ``i`` has ``mc * channel_mult[i]`` channels.
        channel_mult: width multiplier per resolution level.
        num_res_blocks: ResBlocks per encoder level (the decoder has one more per level).
        attention_resolutions: downsample factors (1, 2, 4, ...) at which self-attention
            follows each ResBlock; the middle block always has attention.
        num_head_channels: channels per attention head.
        dropout: dropout inside ResBlocks.
        norm_groups: GroupNorm groups (32 in ADM; smaller only for tiny test models).
        gradient_checkpointing: recompute block activations in backward to save memory.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2),
        num_head_channels: int = 32,
        dropout: float = 0.0,
        norm_groups: int = 32,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        assert in_channels > 0 and out_channels > 0, "in_channels and out_channels must be positive"
        assert len(channel_mult) >= 1, "channel_mult must have at least one level"
        assert num_res_blocks >= 1, f"num_res_blocks must be >= 1, got {num_res_blocks}"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.channel_mult = tuple(channel_mult)
        self.gradient_checkpointing = gradient_checkpointing
        attention_resolutions = set(attention_resolutions)
        emb_ch = 4 * model_channels

        def res(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch=in_ch, out_ch=out_ch, emb_ch=emb_ch, dropout=dropout, groups=norm_groups)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(channels=ch, head_channels=num_head_channels, groups=norm_groups)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )

        # Encoder. `skip_chs` records the width of every tensor pushed onto the skip stack.
        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        ch, ds = model_channels, 1
        skip_chs = [ch]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chs.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_chs.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res(ch, ch), attn(ch), res(ch, ch))

        # Decoder: num_res_blocks + 1 blocks per level, each consuming one skip tensor.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                if level != 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        assert not skip_chs, "internal error: unconsumed skip connections"

        self.out = nn.Sequential(
            _norm(ch, norm_groups), nn.SiLU(), _zero(nn.Conv2d(model_channels, out_channels, 3, padding=1))
        )

    def _run(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W), (B,) -> (B, C_out, H, W)."""
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
        )
        factor = 2 ** (len(self.channel_mult) - 1)
        assert x.shape[2] % factor == 0 and x.shape[3] % factor == 0, (
            f"H and W ({x.shape[2]}x{x.shape[3]}) must be divisible by {factor}"
        )
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        assert t.shape == (x.shape[0],), f"timesteps must have shape ({x.shape[0]},), got {tuple(t.shape)}"

        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        h, skips = x, []
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
