"""Bounded input (issue: reliability, item 4/5): small files cannot take unbounded memory or time,
special files are not read, and every failure is one DataError naming the file."""

from __future__ import annotations

import io
import os
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddmi.cli import main
from ddmi.data.npz import load_npz
from ddmi.data.shapes import read_pointcloud_npz, read_points_npz
from ddmi.data.srn import read_scene
from ddmi.errors import DataError
from ddmi.metrics.api import load_point_clouds


def zip_bomb(path, *, gib: int = 4, key: str = "points"):
    """A few hundred kB of deflated zeros whose .npy header declares ``gib`` GiB of float32."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (gib << 28,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open(f"{key}.npy", "w", force_zip64=True) as m:
        m.write(header.getvalue())
        for _ in range(gib * 4):
            m.write(bytes(1 << 26 >> 2))     # 16 MiB of zeros per write, compressed to ~16 kB
    return path


@pytest.mark.parametrize("reader", [read_points_npz, read_pointcloud_npz, read_scene,
                                    lambda p: load_npz(p, ("points",))], ids=["points", "cloud", "srn", "npz"])
def test_a_zip_bomb_is_refused_before_decompressing(tmp_path, reader):
    bomb = zip_bomb(tmp_path / "bomb.npz", gib=1)
    assert bomb.stat().st_size < 3 << 20
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="declares .* MiB, more than the limit"):
        reader(bomb)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 << 20 and elapsed < 2, (peak, elapsed)


def test_the_limit_is_overridable(tmp_path, monkeypatch):
    np.savez(tmp_path / "a.npz", points=np.zeros((1000, 3), np.float32))
    monkeypatch.setenv("DDMI_MAX_ARRAY_BYTES", "1000")
    with pytest.raises(DataError, match="DDMI_MAX_ARRAY_BYTES"):
        load_npz(tmp_path / "a.npz", ("points",))
    monkeypatch.setenv("DDMI_MAX_ARRAY_BYTES", str(1 << 20))
    assert load_npz(tmp_path / "a.npz", ("points",))["points"].shape == (1000, 3)


def test_a_fifo_is_not_opened(tmp_path):
    fifo = tmp_path / "x.npz"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            read_points_npz(fifo)
        except DataError as exc:
            result["error"] = str(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the loader blocked on a FIFO"
    assert "not a regular file" in result["error"] and str(fifo) in result["error"]


def test_an_npy_named_npz_is_named_as_such(tmp_path):
    np.save(tmp_path / "points.npy", np.zeros((4, 3)))
    (tmp_path / "points.npy").rename(tmp_path / "points.npz")
    with pytest.raises(DataError, match="single .npy array, not an .npz archive"):
        read_points_npz(tmp_path / "points.npz")


def test_eval_of_a_truncated_point_cloud_is_one_line(tmp_path, capsys):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    for folder in (gen, ref):
        folder.mkdir()
        for i in range(3):
            np.save(folder / f"{i}.npy", np.random.default_rng(i).normal(size=(64, 3)).astype(np.float32))
    np.savez(gen / "bad.npz", points=np.zeros((64, 3), np.float32))
    data = (gen / "bad.npz").read_bytes()
    (gen / "bad.npz").write_bytes(data[: len(data) // 2])
    assert main(["eval", str(gen), "--ref", str(ref), "--metric", "mmd-cd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.npz" in err[0] and "Traceback" not in err[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_point_cloud_folders(tmp_path_factory, data):
    """Point-cloud folders of ``ddmi eval`` (.npy and .npz): a damaged file is a DataError naming
    it (or loads as the points it still holds), never another exception, in bounded time."""
    folder = tmp_path_factory.mktemp("clouds")
    good = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    np.save(folder / "a.npy", good)
    kind = data.draw(st.sampled_from(["npy", "npz"]))
    buf = io.BytesIO()
    (np.save if kind == "npy" else lambda b, a: np.savez(b, points=a))(buf, good)
    raw = bytearray(buf.getvalue())
    op = data.draw(st.sampled_from(["truncate", "flip", "garbage", "empty"]))
    if op == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif op == "flip":
        for i in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[i] ^= 0xFF
    elif op == "garbage":
        raw = bytearray(data.draw(st.binary(min_size=1, max_size=512)))
    else:
        raw = bytearray()
    path = folder / f"b.{kind}"
    path.write_bytes(bytes(raw))
    t0 = time.perf_counter()
    try:
        clouds = load_point_clouds(folder)
        assert clouds.shape[1:] == (32, 3)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    assert time.perf_counter() - t0 < 5


def test_a_frame_folder_with_a_numbering_gap_or_a_dangling_link_warns(tmp_path):
    from PIL import Image

    from ddmi.data.videos import find_videos
    clip = tmp_path / "train" / "v"
    clip.mkdir(parents=True)
    for i in (0, 1, 2, 4):                       # frame 3 is missing
        Image.new("RGB", (4, 4)).save(clip / f"frame_{i:04d}.png")
    (clip / "frame_0005.png").symlink_to(tmp_path / "gone.png")
    with pytest.warns(RuntimeWarning) as record:
        videos = find_videos(tmp_path / "train")
    text = " ".join(str(w.message) for w in record)
    assert "skip from 2 to 4" in text and "link to a missing file" in text and "frame_0005" in text
    assert len(videos[0][1]) == 4


def test_a_mirrored_camera_pose_is_rejected(tmp_path):
    from ddmi.data.srn import read_scene, write_scene
    poses = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
    poses[1, 0, 0] = -1.0                          # orthonormal, determinant -1: a reflection
    path = write_scene(tmp_path / "car.npz", np.zeros((2, 4, 4, 3)), poses, np.zeros((16, 6), np.float32))
    with pytest.raises(DataError, match="not a reflection"):
        read_scene(path)


def test_shapes_far_outside_the_unit_cube_warn(tmp_path):
    from ddmi.data.shapes import ShapesDataset, write_pointcloud_npz, write_points_npz
    model = tmp_path / "02691156" / "m0"
    model.mkdir(parents=True)
    pts = np.random.default_rng(0).uniform(-40, 40, (256, 3)).astype(np.float32)   # not normalised
    write_pointcloud_npz(model / "pointcloud.npz", pts, pts)
    write_points_npz(model / "points.npz", pts, np.zeros(256, bool))
    ds = ShapesDataset(tmp_path, split="train", num_points=64, num_queries=64)
    with pytest.warns(RuntimeWarning, match="far outside the unit cube"):
        ds[0]
