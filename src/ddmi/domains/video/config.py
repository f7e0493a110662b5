"""The video domain's config section ``video`` (its dataclass schema; see :mod:`ddmi.config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VideoConfig:
    """The video domain: clip length, the TimeSformer encoder and its axis collapsers, the
    cross-plane attention of the plane decoder and of the tri-plane UNet (docs/official-code.md §3.4, 5.2). The
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

    # --- official-compatibility switches (docs/official-checkpoints.md; set by the importer of the
    # official checkpoints, ddmi.domains.video.official). Defaults = ddmi's own computation.
    # Official TimeSformer rotary embeddings (PVDM layout): channel pairs (2i, 2i+1) turned by
    # angles listed as [a_0..a_{d/2-1}] twice (frames: index x 10000^(-2j/d); space: linspace(-1, 1)
    # x pi x logspace scales 1..5 per axis). ddmi: a proper half-split rotary with integer positions.
    official_rotary: bool = False
    # Axis collapsers: "token" (ddmi) prepends the learned token and keeps its output; "first"
    # (official) appends the token after the sequence and keeps the output at the sequence's first
    # element (a PVDM quirk: the learned token is only attended to).
    collapse_readout: str = "token"
    # A LayerNorm on the collapsers' output (ddmi); the official ViTs have none.
    collapse_norm: bool = True
    # Token order of the planes in the latent (the LDM tensor), in ddmi's plane names (xt: rows t,
    # cols x; yt: rows t, cols y). ddmi: "xy,xt,yt". Official: [xy, xt, yt] in its own names, whose
    # xt collapses w (= ddmi's yt) and yt collapses h (= ddmi's xt), i.e. "xy,yt,xt" here.
    latent_order: str = "xy,xt,yt"
    # How the MLP reads the planes. False (ddmi): xy at (x, y), xt at (x, t), yt at (y, t), every
    # plane with align_corners=False (pixel centres). True (official MLPVideo, docs/official-code.md §12.2.2):
    # align_corners=True, and the time planes are read transposed: t indexes their spatial
    # (column) axis and y (for xt) or x (for yt) their T rows.
    official_query: bool = False
