"""The D2C-VAE's posterior: a diagonal Gaussian over the latent planes."""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """A diagonal Gaussian whose parameters are the two channel halves of one tensor.

    ``params``: ``(B, 2*C, ...)``; the first half is the mean, the second the log-variance,
    clamped to [-30, 20]. ``params`` is kept as given (raw, unclamped log-variance).
    """

    def __init__(self, params: torch.Tensor):
        self.params = params            # the raw parameters (official ``.parameters``: logvar not clamped)
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, *, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``mean + std * noise``; ``noise`` (N(0, 1), the mean's shape) is drawn from ``generator``
        (the global RNG when None) unless given."""
        if noise is not None:
            return self.mean + self.std * noise.to(self.mean)
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device="cpu" if generator is None else generator.device)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over all non-batch dimensions: ``(B,)``."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)
