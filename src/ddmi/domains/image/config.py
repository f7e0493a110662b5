"""The image domain's config section ``image`` (its dataclass schema; see :mod:`ddmi.config`).

Every key here is an official-compatibility switch: its default is ddmi's own computation, and
``ddmi import-official`` (:meth:`ImageDomain.official_config`) sets the official one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ImageConfig:
    """Official-compatibility switches of the image D2C-VAE's MLP (docs/official-code.md §3.1, 12.2.7)."""

    # The official StyledConv adds NoiseInjection, ``weight * N(0, 1)`` with one learned scalar
    # weight per layer and one fresh draw per pixel shared by all channels, between the modulated
    # conv and the bias + leaky ReLU, also at inference (docs/official-code.md §12.2.7), so the official decode is
    # stochastic. ddmi (default false) has no such weights: its decode is deterministic. True adds
    # a ``noise_weight (1,)`` to every styled layer; the noise then comes from an explicit
    # ``field.query(coords, si=..., noise=generator or per-layer tensors)`` (reproducible), and is
    # zero when none is given (ddmi's renders and metrics: deterministic).
    noise_injection: bool = False
