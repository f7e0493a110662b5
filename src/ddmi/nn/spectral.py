"""NVAE-style spectral regulariser (Vahdat & Kautz 2020, sec. 3.3 "spectral regularization").

Loss = sum over convolutions of the largest singular value of the weight reshaped to
``(out, in * k * k)`` (estimated by power iteration, batched over weights of equal shape) plus
sum over GroupNorm layers of ``max |gamma|``. The power-iteration vectors are buffers, so they
are saved and restored with the training state.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn


class SpectralRegularizer(nn.Module):
    def __init__(self, model: nn.Module, *, power_iters: int = 4, init_iters: int = 40):
        super().__init__()
        groups: dict[tuple[int, int], list[str]] = defaultdict(list)
        self._norm_names: list[str] = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                w = module.weight
                groups[(w.shape[0], w[0].numel())].append(name)
            elif isinstance(module, nn.GroupNorm) and module.affine:
                self._norm_names.append(name)
        self._groups = sorted(groups.items())
        self.power_iters = power_iters
        self.init_iters = init_iters
        gen = torch.Generator().manual_seed(0)
        for i, ((rows, cols), names) in enumerate(self._groups):
            self.register_buffer(f"u{i}", F.normalize(torch.randn(len(names), rows, generator=gen), dim=1))
            self.register_buffer(f"v{i}", F.normalize(torch.randn(len(names), cols, generator=gen), dim=1))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, model: nn.Module) -> torch.Tensor:
        modules = dict(model.named_modules())
        iters = self.power_iters if bool(self.initialised) else self.init_iters
        total = 0.0
        for i, ((rows, cols), names) in enumerate(self._groups):
            w = torch.stack([modules[n].weight.reshape(rows, cols) for n in names])  # (G, rows, cols)
            u, v = getattr(self, f"u{i}"), getattr(self, f"v{i}")
            with torch.no_grad():
                wd = w.detach()
                for _ in range(iters):
                    v = F.normalize(torch.bmm(wd.transpose(1, 2), u.unsqueeze(2)).squeeze(2), dim=1)
                    u = F.normalize(torch.bmm(wd, v.unsqueeze(2)).squeeze(2), dim=1)
                getattr(self, f"u{i}").copy_(u)
                getattr(self, f"v{i}").copy_(v)
            sigma = torch.einsum("gr,grc,gc->g", u, w, v)
            total = total + sigma.sum()
        for name in self._norm_names:
            total = total + modules[name].weight.abs().max()
        self.initialised.fill_(True)
        return total
