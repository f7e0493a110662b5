"""Image files: listing, robust loading, an image-folder dataset, and PNG writers.

Conventions (see ``docs``/DESIGN.md): images are ``uint8`` ``(H, W, 3)`` RGB arrays at the file
boundary and ``float32`` ``(3, H, W)`` tensors in ``[-1, 1]`` inside the model.

Loading rules (:func:`load_image`):

* the EXIF orientation tag is applied, so photos appear the way viewers show them;
* every Pillow mode is converted to 8-bit RGB. Images with transparency (``RGBA``, ``LA``,
  ``PA``, palette images with a transparent index) are composited **on white**, the way most
  viewers and browsers display them on a page;
* 16-bit and 32-bit integer grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I``) are treated as
  16-bit data and *scaled* ``0..65535 -> 0..255`` (Pillow's own ``convert("L")`` clips them);
* a corrupt, truncated or non-image file raises :class:`~ddmi.errors.DataError` naming it, even
  if some other code set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.

The writers (:func:`save_image`, :func:`save_grid`) write atomically: a temporary file in the
destination folder, then :func:`os.replace`, so a crash never leaves a half-written image.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps

from ddmi.errors import ConfigError, DataError
from ddmi.files import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "list_images",
    "load_image",
    "ImageFolderDataset",
    "to_uint8",
    "make_grid",
    "tile",
    "save_image",
    "save_grid",
]

logger = logging.getLogger(__name__)

#: File name suffixes recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_Resampling = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has the constants on Image
_LANCZOS = _Resampling.LANCZOS

PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, torch.Tensor]

# ``ImageFile.LOAD_TRUNCATED_IMAGES`` is process-global; we force it off while decoding so that
# truncated files are reported, and restore the caller's value afterwards.
_truncation_lock = threading.Lock()


# ------------------------------------------------------------------------------------------
# Listing
# ------------------------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_images(root: PathLike) -> list[Path]:
    """Return every image file under ``root``, recursively, in sorted order.

    Files and folders whose names start with ``.`` are ignored (``.DS_Store``,
    ``.ipynb_checkpoints``, temporary files of interrupted writes). Symlinked folders are followed once. The order is
    the sort order of the paths relative to ``root``, so it is the same on every machine.

    Raises:
        DataError: ``root`` does not exist, is not a folder, or holds no image file.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (expected a folder of images)")

    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink cycle or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if _is_image_name(name):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    if not found:
        raise DataError(
            f"no images found in {root} (searched recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def _open_image(path: Path) -> Image.Image:
    """Open and fully decode ``path``; any failure becomes a DataError naming the file."""
    try:
        with _truncation_lock:
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                with Image.open(path) as img:
                    img.load()  # decode now: truncated / corrupt data fails here, not later
                    img = ImageOps.exif_transpose(img) or img
                    img.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an image file") from None
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"cannot read image {path}: {exc} (raise PIL.Image.MAX_IMAGE_PIXELS if it is trusted)"
        ) from None
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read image {path}: {reason}") from None
    if img.width == 0 or img.height == 0:
        raise DataError(f"cannot read image {path}: it has zero width or height")
    return img


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    arr = np.asarray(rgba.convert("RGBA"), dtype=np.float32)
    alpha = arr[..., 3:4] / 255.0
    rgb = arr[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return Image.fromarray(np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded Pillow image of any mode to 8-bit RGB (see the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (older Pillow opens 16-bit PNGs as 32-bit "I"): scale, don't clip.
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(np.floor(arr * (255.0 / 65535.0) + 0.5), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([arr] * 3, axis=-1))
    if mode == "F":
        # Floating-point grayscale: [0, 1] data is scaled, anything larger is taken as 0..255.
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.floor(arr + 0.5), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([arr] * 3, axis=-1))
    if mode == "P":
        has_alpha = "transparency" in img.info or (
            img.palette is not None and img.palette.mode == "RGBA"
        )
        return _composite_on_white(img) if has_alpha else img.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite_on_white(img)
    if mode in ("L", "1") and "transparency" in img.info:
        return _composite_on_white(img)
    if mode in ("L", "1", "CMYK", "YCbCr", "RGBX"):
        return img.convert("RGB")
    # LAB, HSV and anything exotic: let Pillow try, through RGBA if needed.
    try:
        return img.convert("RGB")
    except ValueError:
        return _composite_on_white(img.convert("RGBA"))


def _load_rgb(path: Path) -> Image.Image:
    img = _open_image(path)
    try:
        return _to_rgb(img)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot convert image {path} (mode {img.mode}) to RGB: {exc}") from None


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` ``uint8`` RGB array.

    EXIF orientation is applied; transparency is composited on white; 16-bit grayscale is
    scaled to 8 bits; palette, grayscale, CMYK and other modes are converted to RGB.

    Raises:
        DataError: the file is missing, corrupt, truncated or not an image; the message names it.
    """
    return np.array(_load_rgb(Path(path)), dtype=np.uint8)


# ------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------


def _center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop ``img`` to a square and resize it (Lanczos, antialiased) to ``resolution``."""
    w, h = img.size
    side = min(w, h)
    left = (w - side) / 2.0
    top = (h - side) / 2.0
    box = (left, top, left + side, top + side)
    if side == resolution and w == h:
        return img
    return img.resize((resolution, resolution), _LANCZOS, box=box)


def read_skipping_bad(items: Sequence, start: int, read, *, skip_bad: bool, bad: set, warn,
                      none_left: str):
    """``read(item)`` for the first item from ``items[start]`` on (wrapping around) not in ``bad``.

    A :class:`DataError` propagates unless ``skip_bad``; then the item joins ``bad``,
    ``warn(item, error)`` reports it (once: it is skipped from then on) and the next item is tried,
    so a bad item is always replaced by the same readable one. ``none_left``: the error message
    when no item can be read.
    """
    n = len(items)
    for step in range(n):
        item = items[(start + step) % n]
        if item in bad:
            continue
        try:
            return read(item)
        except DataError as exc:
            if not skip_bad:
                raise
            bad.add(item)
            warn(item, exc)
    raise DataError(none_left)


def warn_mixed_splits(root: Path) -> None:
    """Warn when ``root`` is a dataset root whose ``train/`` and ``test/`` (or ``val/``) splits
    would both be read (``data.dir`` set to a ``ddmi synth`` root instead of its ``train``)."""
    splits = [s for s in ("train", "test", "val") if (root / s).is_dir()]
    if "train" in splits and len(splits) > 1:
        warnings.warn(f"{root} holds the splits {', '.join(s + '/' for s in splits)}: all of them are read as one "
                      f"set; point data.dir at {root / 'train'} (and data.test_dir at {root / splits[1]})",
                      RuntimeWarning, stacklevel=3)


class ImageFolderDataset(torch.utils.data.Dataset):
    """All images under a folder (recursively), as ``float32`` ``(3, R, R)`` tensors in ``[-1, 1]``.

    Each image is loaded with :func:`load_image`, centre-cropped to a square, resized with an
    antialiased Lanczos filter to ``resolution`` (upscaling is allowed) and, if ``hflip``, flipped
    left-right with probability 1/2 using torch's RNG (so ``DataLoader`` worker seeding applies).

    Args:
        root: folder searched recursively (see :func:`list_images`).
        resolution: output side length in pixels.
        hflip: random horizontal flip augmentation.
        skip_bad: if ``False`` (default), the first unreadable file raises
            :class:`~ddmi.errors.DataError` naming it. If ``True``, an unreadable file is
            reported once with a warning and replaced by the next readable file (in index order,
            wrapping around), so the substitution is deterministic. Call :meth:`validate` to find
            every bad file up front.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        resolution: int,
        hflip: bool = False,
        skip_bad: bool = False,
    ) -> None:
        if (
            isinstance(resolution, bool)
            or not isinstance(resolution, (int, np.integer))
            or resolution < 1
        ):
            raise ConfigError(f"resolution must be a positive integer, got {resolution!r}")
        self.root = Path(root).expanduser()
        self.files = list_images(self.root)
        warn_mixed_splits(self.root)
        self.resolution = int(resolution)
        self.hflip = bool(hflip)
        self.skip_bad = bool(skip_bad)
        self.bad_files: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, files={len(self)}, "
            f"resolution={self.resolution}, hflip={self.hflip}, skip_bad={self.skip_bad})"
        )

    @staticmethod
    def _warn_bad(path: Path, error: DataError) -> None:
        message = f"skipping unreadable image: {error}"
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    def load_uint8(self, index: int) -> np.ndarray:
        """The ``(R, R, 3)`` ``uint8`` image at ``index`` (cropped and resized, never flipped)."""
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        img = read_skipping_bad(self.files, index % n, _load_rgb, skip_bad=self.skip_bad,
                                bad=self.bad_files, warn=self._warn_bad,
                                none_left=f"no readable image in {self.root}: all {n} files failed to load")
        return np.array(_center_crop_resize(img, self.resolution), dtype=np.uint8)

    def __getitem__(self, index: int) -> torch.Tensor:
        arr = self.load_uint8(index)
        x = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)
        if self.hflip and torch.rand(()).item() < 0.5:
            x = x.flip(-1)
        return x.contiguous()

    def validate(self) -> list[Path]:
        """Decode every file now; return the unreadable ones (also remembered and skipped).

        Never raises for a bad file (whatever ``skip_bad`` is); logs one warning per bad file.
        """
        bad: list[Path] = []
        for path in self.files:
            try:
                _load_rgb(path)
            except DataError as exc:
                bad.append(path)
                if path not in self.bad_files:
                    self.bad_files.add(path)
                    logger.warning("unreadable image: %s", exc)
        return bad


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def uint8_tensor(x: torch.Tensor) -> torch.Tensor:
    """Float images in ``[-1, 1]`` (any shape, any device) -> ``uint8`` of the same shape and
    layout, on the same device, rounded as :func:`to_uint8` (half up; NaN -> 128): the project's
    file boundary, used where the pixels go on to a network (FID) rather than a file."""
    x = torch.nan_to_num(x.detach().float(), nan=0.0, posinf=1.0, neginf=-1.0)
    return torch.floor((x.clamp(-1.0, 1.0) + 1.0) * 127.5 + 0.5).to(torch.uint8)


def to_uint8(x: ArrayLike) -> np.ndarray:
    """Map a channels-first image or batch in ``[-1, 1]`` to channels-last ``uint8``.

    ``(C, H, W) -> (H, W, C)`` and ``(N, C, H, W) -> (N, H, W, C)``; accepts a tensor (any
    device, any float dtype) or a NumPy array. Values are clamped to ``[-1, 1]`` and rounded
    (half up): ``-1 -> 0``, ``0 -> 128``, ``1 -> 255``. NaN maps to mid-gray (128).
    """
    if isinstance(x, torch.Tensor):
        arr = x.detach().to("cpu", torch.float32).numpy()
    else:
        arr = np.asarray(x, dtype=np.float32)
    if arr.ndim not in (3, 4):
        raise ValueError(f"to_uint8 expects (C, H, W) or (N, C, H, W), got shape {arr.shape}")
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=-1.0)
    arr = np.floor((np.clip(arr, -1.0, 1.0) + 1.0) * 127.5 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(arr, -3, -1))


def _as_hwc_uint8(image: ArrayLike) -> np.ndarray:
    """uint8 NumPy arrays are ``(H, W[, C])``; anything else is ``(C, H, W)`` in [-1, 1]."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        arr = image
    elif image.ndim == 2:
        arr = to_uint8(image[None])[..., 0]
    else:
        arr = to_uint8(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot save an image of shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def _atomic_save(img: Image.Image, path: PathLike) -> Path:
    path = Path(path).expanduser()
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda f: img.save(f, format=fmt))


def save_image(image: ArrayLike, path: PathLike) -> Path:
    """Write one image atomically (format from the suffix; PNG by default). Returns the path.

    ``image`` is either a ``uint8`` NumPy array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``, or a
    float tensor / array ``(C, H, W)`` (C = 1 or 3) in ``[-1, 1]`` (see :func:`to_uint8`).
    Parent folders are created.
    """
    arr = _as_hwc_uint8(image)
    return _atomic_save(Image.fromarray(arr), path)  # uint8: L, RGB or RGBA from the shape


def tile(tiles: np.ndarray | Sequence[np.ndarray], *, ncol: int | None = None, padding: int = 2,
         pad_value: int = 0, row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None) -> np.ndarray:
    """Lay ``uint8`` tiles ``(N, h, w, 3)`` out in a grid, row-major, ``ncol`` per row (default
    ``ceil(sqrt(N))``), with ``padding`` pixels of ``pad_value`` around and between them; the one
    tiler of every grid and contact sheet. ``row_labels`` / ``col_labels`` add captions on the
    left / on top (white text on the padding colour)."""
    tiles = np.stack(list(tiles)) if not isinstance(tiles, np.ndarray) else tiles
    if tiles.ndim != 4 or tiles.shape[0] == 0:
        raise ValueError(f"tile expects a non-empty (N, h, w, C) stack, got shape {tuple(tiles.shape)}")
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, h, w, c = tiles.shape
    ncol = max(1, min(int(ncol) if ncol else math.ceil(math.sqrt(n)), n))
    nrows = math.ceil(n / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, np.uint8)
    for k in range(n):
        r, col = divmod(k, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = tiles[k]
    if row_labels or col_labels:
        grid = _caption(grid, h, w, padding, pad_value, list(row_labels or []), list(col_labels or []))
    return grid


def _caption(grid: np.ndarray, h: int, w: int, padding: int, pad_value: int, rows: list[str],
             cols: list[str]) -> np.ndarray:
    from PIL import ImageDraw, ImageFont
    font = ImageFont.load_default()
    size = lambda text: font.getbbox(text)[2:]          # noqa: E731 - (width, height) of a label
    left = max((size(t)[0] for t in rows), default=-6) + 6
    top = max((size(t)[1] for t in cols), default=-6) + 6
    canvas = Image.new("RGB", (grid.shape[1] + left, grid.shape[0] + top), (pad_value,) * 3)
    canvas.paste(Image.fromarray(grid[..., :3]), (left, top))
    draw = ImageDraw.Draw(canvas)
    ink = (255, 255, 255) if pad_value < 128 else (0, 0, 0)
    for r, text in enumerate(rows):
        draw.text((3, top + padding + r * (h + padding) + (h - size(text)[1]) // 2), text, fill=ink, font=font)
    for col, text in enumerate(cols):
        draw.text((left + padding + col * (w + padding) + (w - size(text)[0]) // 2, 3), text, fill=ink, font=font)
    return np.asarray(canvas)


def make_grid(
    images: Union[ArrayLike, Sequence[ArrayLike]],
    *,
    nrow: int | None = None,
    padding: int = 2,
    pad_value: int = 0,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Tile ``(N, 3, H, W)`` images in ``[-1, 1]`` into one ``uint8`` ``(H', W', 3)`` array.

    ``nrow`` is the number of images per row (default: ``ceil(sqrt(N))``, a near-square grid);
    ``padding`` pixels of ``pad_value`` separate the tiles and surround the grid (:func:`tile`).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("make_grid needs at least one image")
        tiles = np.stack([to_uint8(i) for i in images])  # each (C, H, W) -> (H, W, C)
    else:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(
                f"make_grid expects a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}"
            )
        tiles = to_uint8(images)
    return tile(tiles, ncol=nrow, padding=padding, pad_value=pad_value, row_labels=row_labels, col_labels=col_labels)


def save_grid(
    images: Union[ArrayLike, Sequence[ArrayLike]],
    path: PathLike,
    *,
    nrow: int | None = None,
    padding: int = 2,
    pad_value: int = 0,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
) -> Path:
    """Write ``(N, 3, H, W)`` images in ``[-1, 1]`` as one grid image, atomically.

    See :func:`make_grid` for the layout and :func:`save_image` for the file.
    """
    return save_image(make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value, row_labels=row_labels,
                                col_labels=col_labels), path)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``(B, C, H, W)`` to ``size x size``, clamped to [-1, 1]."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(-1.0, 1.0)
