"""ddmi: domain-agnostic latent diffusion models for implicit neural representations.

``ddmi.DDMIPipeline.from_run(RUN)`` loads a trained run for sampling, decoding and rendering
(see :mod:`ddmi.pipeline`); the package's modules are imported on first use, so ``import ddmi``
stays light.
"""

__version__ = "0.1.0"
__all__ = ["DDMIPipeline", "Samples", "__version__", "load_autoencoder", "load_config"]

_EXPORTS = {"DDMIPipeline": "ddmi.pipeline", "Samples": "ddmi.pipeline", "load_autoencoder": "ddmi.runs",
            "load_config": "ddmi.config"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ddmi' has no attribute {name!r}")
