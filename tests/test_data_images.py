"""Image data layer (ddmi.data.images) and the synthetic image generator (ddmi.data.synthetic)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from ddmi.data.images import (
    IMAGE_EXTENSIONS,
    ImageFolderDataset,
    list_images,
    load_image,
    make_grid,
    save_grid,
    save_image,
    to_uint8,
)
from ddmi.data.synthetic import render_synthetic_image, synth_images
from ddmi.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _rgb_pattern(h: int = 6, w: int = 8) -> np.ndarray:
    """A small image with distinct, non-symmetric pixel values."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 30, yy * 40, (xx + yy) * 10 + 5], axis=-1).astype(np.uint8)


def _write_16bit_gray(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)


def _good_images(root: Path, n: int = 3, size=(12, 10)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _truncated_png(path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------
# load_image: every mode and format
# ------------------------------------------------------------------------------------------


def test_rgb_png_roundtrip(tmp_path):
    arr = _rgb_pattern()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, arr)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: unchanged
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half black over white: ~127
    rgba[1, 1] = (200, 100, 0, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[1, 1], [255, 255, 255])
    assert np.all(np.abs(out[1, 0].astype(int) - 127) <= 1)


def test_la_and_grayscale(tmp_path):
    la = np.array([[[50, 255], [50, 0]]], dtype=np.uint8)  # (1, 2, 2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out[0, 0], [50, 50, 50])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])

    gray = np.array([[0, 77, 255]], dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 1], gray)


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png")[0], [[255, 0, 0], [0, 0, 255]])

    img.info["transparency"] = 1  # index 1 (blue) transparent -> white
    img.save(tmp_path / "pt.png", transparency=1)
    np.testing.assert_array_equal(
        load_image(tmp_path / "pt.png")[0], [[255, 0, 0], [255, 255, 255]]
    )


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    _write_16bit_gray(tmp_path / "g16.png", values)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])

    # big-endian raw mode, as some writers produce
    img = Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    img.save(tmp_path / "g16b.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16b.png")[0, :, 1], [0, 1, 128, 255])


def test_cmyk_jpeg_webp_bmp(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (4, 4, 3)
    assert out[..., 0].min() > 200 and out[..., 1:].max() < 60  # red

    flat = np.full((16, 16, 3), (30, 160, 220), dtype=np.uint8)
    Image.fromarray(flat).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(flat).save(tmp_path / "a.JPEG", quality=95)
    for name in ("a.jpg", "a.JPEG"):
        out = load_image(tmp_path / name)
        assert out.shape == (16, 16, 3)
        assert np.abs(out.astype(int) - flat).max() <= 4

    arr = _rgb_pattern()
    Image.fromarray(arr).save(tmp_path / "a.webp", lossless=True)
    np.testing.assert_array_equal(load_image(tmp_path / "a.webp"), arr)
    Image.fromarray(arr).save(tmp_path / "a.bmp")
    np.testing.assert_array_equal(load_image(tmp_path / "a.bmp"), arr)


def test_exif_orientation_applied(tmp_path):
    arr = _rgb_pattern(4, 6)  # H=4, W=6
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "o.jpg", exif=exif, quality=100, subsampling=0)
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (6, 4, 3)


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "text"])
def test_bad_files_raise_dataerror_naming_file(tmp_path, kind):
    path = tmp_path / f"broken_{kind}.png"
    if kind == "truncated":
        _truncated_png(path)
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("hello, I am not a picture\n")
    with pytest.raises(DataError, match=f"broken_{kind}.png"):
        load_image(path)


def test_truncation_detected_even_if_pil_allows_it(tmp_path, monkeypatch):
    path = tmp_path / "cut.png"
    _truncated_png(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="cut.png"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        load_image(tmp_path / "nope.png")


# ------------------------------------------------------------------------------------------
# list_images
# ------------------------------------------------------------------------------------------


def test_list_images_recursive_sorted_hidden_ignored(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    img = Image.fromarray(_rgb_pattern())
    for rel in ["b/deep/z.png", "a/y.JPG", "a/x.webp", "top.bmp", ".hidden/h.png", "a/.dot.png"]:
        img.save(tmp_path / rel, format="PNG" if rel.endswith("png") else None)
    (tmp_path / "a" / "notes.txt").write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/x.webp", "a/y.JPG", "b/deep/z.png", "top.bmp"]
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp"} == set(IMAGE_EXTENSIONS)


def test_list_images_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty.*\.png"):
        list_images(tmp_path / "empty")
    with pytest.raises(DataError, match="missing"):
        ImageFolderDataset(tmp_path / "missing", resolution=8)


# ------------------------------------------------------------------------------------------
# ImageFolderDataset
# ------------------------------------------------------------------------------------------


def test_dataset_items(tmp_path):
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "cls" / "wide.png")
    Image.new("RGB", (10, 30), (0, 0, 255)).save(tmp_path / "cls" / "tall.png")
    Image.new("L", (5, 5), 0).save(tmp_path / "cls" / "small.png")  # upscaled
    ds = ImageFolderDataset(tmp_path, resolution=16)
    assert len(ds) == 3
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
    # sorted: small, tall, wide
    assert torch.all(ds[0] == -1.0)
    tall = ds[1]
    assert torch.allclose(tall[2], torch.ones(16, 16), atol=1e-6)
    assert torch.allclose(tall[0], -torch.ones(16, 16), atol=1e-6)
    wide = ds[2]
    assert torch.allclose(wide[0], torch.ones(16, 16), atol=1e-6)
    with pytest.raises(ConfigError):
        ImageFolderDataset(tmp_path, resolution=0)


def test_dataset_center_crop(tmp_path):
    # 30x10: left third red, middle third green, right third blue -> centre crop is all green
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, :10, 0] = 255
    arr[:, 10:20, 1] = 255
    arr[:, 20:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "strip.png")
    x = ImageFolderDataset(tmp_path, resolution=10)[0]
    assert torch.allclose(x[1], torch.ones(10, 10))
    assert torch.allclose(x[0], -torch.ones(10, 10)) and torch.allclose(x[2], -torch.ones(10, 10))


def test_dataset_hflip(tmp_path):
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    arr[:, :4] = 255  # left half white
    Image.fromarray(arr).save(tmp_path / "half.png")
    plain = ImageFolderDataset(tmp_path, resolution=8)[0]
    ds = ImageFolderDataset(tmp_path, resolution=8, hflip=True)
    torch.manual_seed(0)
    items = [ds[0] for _ in range(40)]
    flipped = [x for x in items if torch.equal(x, plain.flip(-1))]
    same = [x for x in items if torch.equal(x, plain)]
    assert len(flipped) + len(same) == 40
    assert 5 <= len(flipped) <= 35
    torch.manual_seed(0)
    assert all(torch.equal(a, ds[0]) for a in items)  # torch RNG drives the flips


def test_dataset_bad_files_strict_and_skip(tmp_path):
    good = _good_images(tmp_path, 3)
    _truncated_png(tmp_path / "img1b_truncated.png")
    (tmp_path / "img2b_random.png").write_bytes(os.urandom(500))
    strict = ImageFolderDataset(tmp_path, resolution=8)
    assert len(strict) == 5
    names = [p.name for p in strict.files]
    bad_index = names.index("img1b_truncated.png")
    with pytest.raises(DataError, match="img1b_truncated.png"):
        strict[bad_index]

    ds = ImageFolderDataset(tmp_path, resolution=8, skip_bad=True)
    reference = ImageFolderDataset(tmp_path, resolution=8)
    expected = {p.name: reference[names.index(p.name)] for p in good}
    with pytest.warns(RuntimeWarning, match="img1b_truncated.png"):
        item = ds[bad_index]
    # sorted: img0, img1, img1b_truncated, img2, img2b_random; a bad file is replaced by the
    # next readable one, wrapping around
    assert names == ["img0.png", "img1.png", "img1b_truncated.png", "img2.png", "img2b_random.png"]
    assert torch.equal(item, expected["img2.png"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
        again = ds[bad_index]
    assert len([w for w in caught if "img2b_random.png" in str(w.message)]) == 1
    assert not any("img1b_truncated" in str(w.message) for w in caught)  # warned only once
    assert torch.equal(again, item)
    for x, name in zip(items, ["img0.png", "img1.png", "img2.png", "img2.png", "img0.png"]):
        assert torch.equal(x, expected[name])

    bad = ImageFolderDataset(tmp_path, resolution=8).validate()
    assert sorted(p.name for p in bad) == ["img1b_truncated.png", "img2b_random.png"]


def test_dataset_all_bad(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    ds = ImageFolderDataset(tmp_path, resolution=8, skip_bad=True)
    with pytest.warns(RuntimeWarning), pytest.raises(DataError, match="no readable image"):
        ds[0]


def test_dataset_with_dataloader_workers(tmp_path):
    _good_images(tmp_path, 4)
    ds = ImageFolderDataset(tmp_path, resolution=8, hflip=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0].shape == (2, 3, 8, 8)


# ------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------


def test_to_uint8_rounding_and_clamping():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, float("nan")]).reshape(1, 1, 6)
    np.testing.assert_array_equal(to_uint8(x)[0, :, 0], [0, 0, 128, 255, 255, 128])
    v = np.arange(256, dtype=np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(to_uint8(v.reshape(1, 1, 256))[0, :, 0], np.arange(256))
    assert to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)


def test_save_image_roundtrip_and_atomic(tmp_path):
    arr = _rgb_pattern()
    out = save_image(arr, tmp_path / "sub" / "x.png")
    assert out == tmp_path / "sub" / "x.png"
    np.testing.assert_array_equal(load_image(out), arr)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0
    save_image(t, tmp_path / "sub" / "y.png")
    np.testing.assert_array_equal(load_image(tmp_path / "sub" / "y.png"), arr)
    assert sorted(os.listdir(tmp_path / "sub")) == ["x.png", "y.png"]  # no temp files left
    if os.name == "posix":  # permissions follow the umask, like any normally created file
        umask = os.umask(0o022)
        try:
            save_image(arr, tmp_path / "z.png")
        finally:
            os.umask(umask)
        assert (tmp_path / "z.png").stat().st_mode & 0o777 == 0o644


def test_save_grid_layout(tmp_path):
    imgs = torch.stack([torch.full((3, 4, 5), v) for v in (-1.0, 1.0, -1.0, 1.0, 1.0)])
    save_grid(imgs, tmp_path / "g.png", nrow=2, padding=1, pad_value=255)
    g = load_image(tmp_path / "g.png")
    assert g.shape == (3 * 5 + 1, 2 * 6 + 1, 3)
    assert (g[1:5, 1:6] == 0).all() and (g[1:5, 7:12] == 255).all()
    assert (g[0] == 255).all()
    assert make_grid(imgs).shape == (2 * 6 + 2, 3 * 7 + 2, 3)  # default: 3 per row, padding 2


# ------------------------------------------------------------------------------------------
# synthetic images
# ------------------------------------------------------------------------------------------


def test_render_synthetic_image_is_structured():
    imgs = [render_synthetic_image(np.random.default_rng(i), 32) for i in range(8)]
    for im in imgs:
        assert im.shape == (32, 32, 3) and im.dtype == np.uint8
        assert im.astype(float).std() > 10.0
        assert len(np.unique(im.reshape(-1, 3), axis=0)) > 20  # gradients and anti-aliasing
    for a, b in zip(imgs, imgs[1:]):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 10.0
    big = render_synthetic_image(np.random.default_rng(3), 128)
    small = render_synthetic_image(np.random.default_rng(3), 32)
    down = np.asarray(Image.fromarray(big).resize((32, 32), Image.BOX)).astype(int)
    assert np.abs(down - small.astype(int)).mean() < 8  # same scene at any resolution


def test_simple_style_is_one_flat_shape_on_a_flat_background():
    for i in range(12):
        im = render_synthetic_image(np.random.default_rng(i), 32, "simple").reshape(-1, 3).astype(int)
        colours, counts = np.unique(im, axis=0, return_counts=True)
        order = np.argsort(counts)[::-1]
        background, shape = colours[order[0]], colours[order[1]]
        # two flat colours cover everything but the anti-aliased edge pixels
        assert counts[order[0]] > 0.4 * len(im) and counts[order[1]] > 0.05 * len(im)
        assert counts[order[0]] + counts[order[1]] > 0.8 * len(im)
        assert np.abs(background - shape).max() > 60  # the shape stands out
        assert (im[0] == background).all()  # a corner is background (shapes stay inside)
    big = render_synthetic_image(np.random.default_rng(5), 128, "simple")
    small = render_synthetic_image(np.random.default_rng(5), 32, "simple")
    down = np.asarray(Image.fromarray(big).resize((32, 32), Image.BOX)).astype(int)
    assert np.abs(down - small.astype(int)).mean() < 4  # the same scene at any resolution


def test_synth_images_style_is_validated_and_written(tmp_path):
    with pytest.raises(ConfigError, match="style"):
        synth_images(tmp_path / "bad", num=1, resolution=8, seed=0, style="fancy")
    assert not (tmp_path / "bad").exists()  # nothing written for a bad option
    from ddmi.cli import main
    assert main(["synth", "image", str(tmp_path / "s"), "--num", "2", "--resolution", "16", "--style", "simple"]) == 0
    written = np.asarray(Image.open(tmp_path / "s" / "train" / "00001.png"))
    assert (written == render_synthetic_image(np.random.default_rng([0, 0, 1]), 16, "simple")).all()


def test_synth_images_layout_and_determinism(tmp_path):
    paths = synth_images(tmp_path / "a", num=5, resolution=16, seed=7, split_test=2)
    assert [p.relative_to(tmp_path / "a").as_posix() for p in paths] == [
        "train/00000.png", "train/00001.png", "train/00002.png", "train/00003.png",
        "train/00004.png", "test/00000.png", "test/00001.png",
    ]
    everything = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*"))
    assert everything == ["test", "test/00000.png", "test/00001.png", "train"] + [
        f"train/0000{i}.png" for i in range(5)
    ]
    same = synth_images(tmp_path / "b", num=5, resolution=16, seed=7, split_test=2)
    other = synth_images(tmp_path / "c", num=5, resolution=16, seed=8)
    for p, q in zip(paths, same):
        assert p.read_bytes() == q.read_bytes()
    assert paths[0].read_bytes() != other[0].read_bytes()
    train = {p.read_bytes() for p in paths[:5]}
    assert len(train) == 5 and not ({p.read_bytes() for p in paths[5:]} & train)
    ds = ImageFolderDataset(tmp_path / "a", resolution=16)
    assert len(ds) == 7 and ds[0].shape == (3, 16, 16)


def test_synth_images_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "data"
    synth_images(out, num=3, resolution=8, seed=0)
    with pytest.raises(DataError, match="already contains files"):
        synth_images(out, num=3, resolution=8, seed=0)
    paths = synth_images(out, num=2, resolution=8, seed=1, overwrite=True)
    assert sorted(os.listdir(out / "train")) == ["00000.png", "00001.png"]  # stale file removed
    assert len(paths) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file"):
        synth_images(tmp_path / "file", num=1, resolution=8, seed=0)
    with pytest.raises(ConfigError, match="num"):
        synth_images(tmp_path / "new", num=0, resolution=8, seed=0)
