"""The video domain's config section ``video`` (its dataclass schema; see :mod:`ddmi.config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VideoConfig:
    """The video domain: clip length, the TimeSformer encoder and its axis collapsers, the
    cross-plane attention of the plane decoder and of the tri-plane UNet (spec 3.4, 5.2). The
    TimeSformer patch is the decoder's upsampling factor ``2 ** (len(vae.ch_mult) - 1)``."""

    frames: int = 16                   # frames per training clip (a random window of a video)
    fps: int = 8                       # frame rate of the written MP4 / GIF files
    enc_dim: int = 384                 # TimeSformer width
    enc_depth: int = 8
    enc_heads: int = 8
    enc_head_dim: int = 64
    enc_ff_mult: int = 4               # GEGLU feed-forward expansion
    collapse_depth: int = 4            # the three axis-collapsing ViTs
    collapse_heads: int = 4
    collapse_head_dim: int = 48
    collapse_mlp: int = 512
    cross_heads: int = 8               # decoder cross-plane attention heads
    cross_expand: bool = True          # each head has the full channel width (official *-expand)
    unet_cross_heads: int = 16         # tri-plane UNet: 1-D attention heads across the planes
