"""ddmi: domain-agnostic latent diffusion models for implicit neural representations."""

__version__ = "0.1.0"
