"""Exponential moving average of a model's weights, with ema-pytorch's warm-up semantics.

The official stage-2 trainers use ``ema_pytorch.EMA`` (0.2.x) with ``beta=0.9999``,
``update_every`` 10 (images) or 5 (3-D, NeRF, video) and the library defaults
``update_after_step=100, inv_gamma=1, power=2/3``. This class reproduces that schedule:

* ``update(model)`` is called once per optimiser step; ``step`` counts those calls. Only the
  calls with ``step % update_every == 0`` (counted before incrementing) do anything.
* While ``step <= update_after_step`` the EMA copies the weights.
* Afterwards it blends ``ema <- decay * ema + (1 - decay) * online`` with
  ``decay = min(beta, 1 - (1 + n / inv_gamma) ** -power)``, ``n = step - update_after_step``
  (0 when ``n <= 0``); e.g. the first blend with the defaults is at step 110, n = 10,
  decay = 1 - 11^(-2/3) = 0.798.

Floating-point parameters are averaged; buffers (and non-float parameters) are copied.
The counter is a tensor buffer, so :meth:`state_dict` is a flat ``str -> Tensor`` mapping
that safetensors can store.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """Holds a frozen deep copy of ``model`` averaged by :meth:`update`.

    Args:
        model: the online model (copied once, here).
        beta: maximum decay.
        update_every: act on every ``update_every``-th call of :meth:`update`.
        update_after_step: copy (rather than average) until this many calls.
        inv_gamma, power: warm-up of the decay, ``1 - (1 + n / inv_gamma) ** -power``.

    State: ``ema_model.*`` (the averaged weights) and ``step`` (int64 scalar tensor).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float = 0.9999,
        update_every: int = 10,
        update_after_step: int = 100,
        inv_gamma: float = 1.0,
        power: float = 2.0 / 3.0,
    ):
        super().__init__()
        assert 0.0 <= beta <= 1.0, f"beta must be in [0, 1], got {beta}"
        assert update_every >= 1, f"update_every must be >= 1, got {update_every}"
        assert update_after_step >= 0, f"update_after_step must be >= 0, got {update_after_step}"
        assert inv_gamma > 0 and power > 0, f"inv_gamma and power must be > 0, got {inv_gamma}, {power}"
        self.beta = beta
        self.update_every = update_every
        self.update_after_step = update_after_step
        self.inv_gamma = inv_gamma
        self.power = power
        self.ema_model = copy.deepcopy(model)
        self.ema_model.requires_grad_(False)
        self.ema_model.eval()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def model(self) -> nn.Module:
        """The averaged model (use it for sampling and evaluation)."""
        return self.ema_model

    def train(self, mode: bool = True) -> "EMA":
        """The averaged copy always stays in eval mode."""
        super().train(mode)
        self.ema_model.eval()
        return self

    def decay_at(self, step: int) -> float:
        """Decay applied by the call that sees counter value ``step`` (0 = copy)."""
        n = step - self.update_after_step
        if n <= 0:
            return 0.0
        return min(self.beta, 1.0 - (1.0 + n / self.inv_gamma) ** (-self.power))

    def current_decay(self) -> float:
        """Decay the next :meth:`update` would use if it acts (for logging)."""
        return self.decay_at(int(self.step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Advance the counter; copy or blend ``model`` into the average (see module docs)."""
        step = int(self.step)
        self.step += 1
        if step % self.update_every != 0:
            return
        self._blend(model, decay=self.decay_at(step))

    def _blend(self, model: nn.Module, *, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * online for float params; copy everything else."""
        ema_params = dict(self.ema_model.named_parameters())
        online_params = dict(model.named_parameters())
        assert ema_params.keys() == online_params.keys(), (
            "EMA.update got a model whose parameter names differ from the averaged copy "
            "(pass the unwrapped model, not a DDP/compiled wrapper)"
        )
        for name, ema_p in ema_params.items():
            p = online_params[name].detach()
            if decay == 0.0 or not ema_p.is_floating_point():
                ema_p.copy_(p)
            else:
                ema_p.lerp_(p.to(ema_p.dtype), 1.0 - decay)
        online_buffers = dict(model.named_buffers())
        for name, ema_b in self.ema_model.named_buffers():
            if name in online_buffers:
                ema_b.copy_(online_buffers[name])

    def forward(self, *args, **kwargs):
        """Call the averaged model."""
        return self.ema_model(*args, **kwargs)
