"""Faults: SIGKILL at random moments, Ctrl-C, NaN losses, fuzzed image files, bad checkpoints."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ddmi import checkpoint as ckpt
from ddmi.cli import main
from ddmi.errors import DataError

STEPS = 10


def _cmd(overrides, run_dir, steps=STEPS):
    return [sys.executable, "-m", "ddmi", "train", "vae", "image-tiny", *overrides, f"run_dir={run_dir}",
            f"train.steps={steps}", "train.batch_size=4", "train.save_every=1", "train.keep_checkpoints=2",
            "train.sample_every=0", "--no-progress"]


def _final(run_dir):
    latest = ckpt.latest_checkpoint(run_dir)
    return latest.name, load_file(str(latest / "model.safetensors"))


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count everywhere: same float sums


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_overrides):
    """The uninterrupted run, in a subprocess like the killed ones."""
    run = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_cmd(tiny_overrides, run), env=ENV, check=True, capture_output=True)
    return run


def _kill_and_resume(tiny_overrides, run, kills: int, seed: int) -> list[str]:
    """Start the training, SIGKILL it at random moments ``kills`` times, then let it finish."""
    rng = random.Random(seed)
    env = ENV
    seen = []
    for _ in range(kills):
        proc = subprocess.Popen(_cmd(tiny_overrides, run), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # wait for the process to be past start-up (a checkpoint newer than the last kill), then kill
        # it after a random extra delay: it dies in a step, a checkpoint write or a pruning
        before = ckpt.latest_checkpoint(run)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and ckpt.latest_checkpoint(run) == before:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = ckpt.latest_checkpoint(run)
        seen.append(latest.name if latest else "none")
    assert subprocess.run(_cmd(tiny_overrides, run), env=env, capture_output=True).returncode == 0
    return seen


def test_sigkill_at_random_moments_then_resume_is_bitwise(tmp_path, tiny_overrides, reference_run):
    run = tmp_path / "run"
    seen = _kill_and_resume(tiny_overrides, run, kills=3, seed=0)
    assert len(seen) == 3
    name, weights = _final(run)
    ref_name, ref = _final(reference_run)
    assert name == ref_name == f"step-{STEPS:08d}"
    assert weights.keys() == ref.keys()
    assert all(torch.equal(weights[k], ref[k]) for k in ref)
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


@pytest.mark.slow
def test_sigkill_many_times(tmp_path, tiny_overrides, reference_run):
    for seed in range(5):
        run = tmp_path / f"run{seed}"
        _kill_and_resume(tiny_overrides, run, kills=6, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(_final(run)[1].values(), _final(reference_run)[1].values()))


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    cmd = _cmd(tiny_overrides, run, steps=100000)
    cmd = [c for c in cmd if not c.startswith("train.save_every")] + ["train.save_every=1000"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    metrics = run / "logs" / "metrics.jsonl"
    while proc.poll() is None and time.monotonic() < deadline and not (metrics.is_file() and metrics.stat().st_size):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "saved a checkpoint" in err and "Traceback" not in err
    step = int(ckpt.load_state(ckpt.latest_checkpoint(run))["step"])
    assert 0 < step < 100000


def test_nan_loss_stops_with_the_remedy_and_writes_no_nan_weights(tmp_path, tiny_overrides, monkeypatch, capsys):
    from ddmi.training import vae_task as stage1

    real_forward = stage1._Forward.forward
    calls = {"n": 0}

    def poisoned(self, images, rand, **kw):
        loss, logs = real_forward(self, images, rand, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 2 else loss), logs

    monkeypatch.setattr(stage1._Forward, "forward", poisoned)
    run = tmp_path / "run"
    rc = main(_cmd(tiny_overrides, run, steps=20)[3:] + ["train.max_nonfinite=3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "diverged" in err and "spectral regularisation" in err
    name, weights = _final(run)                      # checkpoints of the healthy steps only
    assert name == "step-00000002"
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_wrong_architecture_checkpoint_lists_the_differences(tmp_path, tiny_overrides, vae_run, image_data,
                                                             capsys):
    other = tmp_path / "other"
    assert main(["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={other}", "train.steps=1",
                 "vae.plane_channels=8", "--no-progress"]) == 0
    # graft the first run's weights into the second run's folder: the plane widths differ
    latest = ckpt.latest_checkpoint(other)
    (latest / "model.safetensors").write_bytes((ckpt.latest_checkpoint(vae_run) / "model.safetensors").read_bytes())
    image = sorted(image_data.glob("*.png"))[0]
    assert main(["reconstruct", str(other), str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not match this architecture" in err and "shape mismatch" in err


def test_checkpoint_state_is_loaded_without_unpickling_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    folder = tmp_path / "checkpoints" / "step-00000001"
    folder.mkdir(parents=True)
    torch.save({"step": 1, "evil": Evil()}, folder / "state.pt")
    (folder / ckpt.MARKER).write_text("1")
    with pytest.raises(Exception):
        ckpt.load_state(folder)
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------------
# fuzzed image files: every case is a DataError naming the file, never a crash or a hang

def _fuzz_cases(rng: random.Random, png: bytes):
    yield "empty", b""
    yield "truncated-header", png[:8]
    for _ in range(8):
        yield "truncated", png[: rng.randrange(9, len(png) - 1)]
    for _ in range(8):
        yield "random", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
    for _ in range(8):
        b = bytearray(png)
        for _ in range(rng.randrange(1, 20)):
            b[rng.randrange(8, len(b))] = rng.randrange(256)  # flipped bytes after the signature
        yield "bitflip", bytes(b)


def test_fuzzed_image_files(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from ddmi.data.images import ImageFolderDataset

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    outcomes = {"error": 0, "decoded": 0}
    for i, (kind, data) in enumerate(_fuzz_cases(random.Random(0), png)):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        path = folder / f"{kind}.png"
        path.write_bytes(data)
        ds = ImageFolderDataset(folder, resolution=16)
        try:
            x = ds[0]
        except DataError as exc:
            assert str(path) in str(exc)
            outcomes["error"] += 1
        else:  # a bit flip in an ancillary chunk can leave a valid image: then it must be sane
            assert x.shape == (3, 16, 16) and torch.isfinite(x).all()
            outcomes["decoded"] += 1
    assert outcomes["error"] >= 18


def _npz_bytes(**arrays) -> bytes:
    import io

    import numpy as np
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(array) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (object arrays pickled)."""
    import io

    import numpy as np
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _zip_npz(**members: bytes) -> bytes:
    """An ``.npz`` archive made of raw ``.npy`` members (for members numpy would not write)."""
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for key, data in members.items():
            z.writestr(f"{key}.npy", data)
    return buf.getvalue()


def test_fuzzed_onet_files(tmp_path):
    """ONet ``points.npz`` / ``pointcloud.npz``: every broken file is a DataError naming it."""
    import numpy as np

    from ddmi.data.shapes import read_pointcloud_npz, read_points_npz

    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (64, 3)).astype(np.float16)
    good_points = _npz_bytes(points=pts, occupancies=np.packbits(rng.random(64) < 0.3))
    good_cloud = _npz_bytes(points=pts, normals=pts)
    structured = [
        ("wrong-dtype", _npz_bytes(points=pts.astype("U8"), occupancies=np.zeros(8, np.uint8))),
        ("wrong-shape", _npz_bytes(points=pts[:, :2], occupancies=np.zeros(8, np.uint8))),
        ("nan", _npz_bytes(points=np.full((64, 3), np.nan, np.float32), occupancies=np.zeros(8, np.uint8))),
        ("occ-count", _npz_bytes(points=pts, occupancies=np.zeros(5, np.uint8))),
        ("occ-strings", _npz_bytes(points=pts, occupancies=np.array(["x"] * 64))),
        ("missing-key", _npz_bytes(points=pts)),
        ("empty-points", _npz_bytes(points=np.zeros((0, 3), np.float32), occupancies=np.zeros(0, np.uint8))),
    ]
    petabytes = _lying_npy((10 ** 15, 3))  # a header declaring petabytes: used to be a MemoryError
    structured += [("lying-header", _zip_npz(points=petabytes, occupancies=petabytes)),
                   ("cloud-lying-normals", _zip_npz(points=_npy(pts), normals=petabytes))]
    cases = list(structured)
    r = random.Random(0)
    for good, reader_name in ((good_points, "points"), (good_cloud, "cloud")):
        for name, data in _fuzz_cases(r, good):
            cases.append((f"{reader_name}-{name}", data))
    for i, (kind, data) in enumerate(cases):
        path = tmp_path / f"{i}-{kind}.npz"
        path.write_bytes(data)
        reader = read_pointcloud_npz if kind.startswith("cloud") else read_points_npz
        try:
            reader(path)
        except DataError as exc:
            assert str(path) in str(exc), kind
        else:  # only flips in unused zip metadata can leave a readable file
            assert "bitflip" in kind, kind


# ------------------------------------------------------------------------------------------
# fuzzed srn-cars files (NeRF): every broken file is a DataError naming it; what is accepted is sane

def _srn_arrays(views=3, res=4, points=16, seed=0):
    import numpy as np

    from ddmi.render.volume import look_at
    rng = np.random.default_rng(seed)
    poses = torch.stack([look_at((3.0 * np.sin(a), 1.0, 3.0 * np.cos(a)))
                         for a in np.linspace(0, 6, views)]).numpy().astype(np.float32)
    return {"images": rng.random((views, res, res, 3)).astype(np.float16), "cam_poses": poses,
            "data": np.concatenate([rng.uniform(-1, 1, (points, 3)), rng.random((points, 3))], 1).astype(np.float32)}


def _lying_npy(shape) -> bytes:
    """A .npy whose header declares ``shape`` but holds 12 floats (a damaged header)."""
    import numpy as np
    raw = _npy(np.zeros((2, 6), np.float32))
    end = raw.index(b"\n")
    header = raw[:end].replace(b"(2, 6)", repr(tuple(shape)).encode())
    return header.ljust(end) + raw[end:]


def _srn_structured_cases():
    """(name, bytes) for every array-level way an srn-cars file can be wrong."""
    import numpy as np
    good = _srn_arrays()
    img, poses, pts = good["images"], good["cam_poses"], good["data"]

    def npz(**changes):
        return _npz_bytes(**{k: v for k, v in {**good, **changes}.items() if v is not None})

    scaled = poses.copy()
    scaled[:, :3, :3] *= 2
    bottom = poses.copy()
    bottom[:, 3, 0] = 1
    cases = [
        ("missing-images", npz(images=None)), ("missing-cam_poses", npz(cam_poses=None)),
        ("missing-data", npz(data=None)), ("no-arrays", _npz_bytes()),
        ("images-strings", npz(images=img.astype("U6"))), ("images-complex", npz(images=img.astype(np.complex64))),
        ("images-bool", npz(images=img > 0.5)), ("images-int32", npz(images=(img * 255).astype(np.int32))),
        ("images-structured", npz(images=np.zeros(3, [("a", "f4"), ("b", "i4")]))),
        ("images-0d", npz(images=np.array(0.5))), ("images-rgba", npz(images=np.ones(img.shape[:3] + (4,), np.float16))),
        ("images-empty", npz(images=img[:0])), ("images-zero-width", npz(images=img[:, :, :0])),
        ("images-nan", npz(images=np.where(img > 0.5, np.nan, img).astype(np.float16))),
        ("images-inf", npz(images=np.full(img.shape, np.inf, np.float32))),
        ("images-0-255-floats", npz(images=img.astype(np.float32) * 255)),
        ("cam_poses-strings", npz(cam_poses=poses.astype("U12"))),       # numeric strings: used to be read
        ("cam_poses-complex", npz(cam_poses=poses.astype(np.complex64))),  # used to drop the imaginary part
        ("cam_poses-bool", npz(cam_poses=poses.astype(bool))),             # used to be read as 0/1
        ("cam_poses-structured", npz(cam_poses=np.zeros((3, 4, 4), [("a", "f4")]))),
        ("cam_poses-nan", npz(cam_poses=np.where(poses > 0.5, np.nan, poses))),
        ("cam_poses-inf", npz(cam_poses=np.full(poses.shape, -np.inf, np.float32))),
        ("cam_poses-3x4", npz(cam_poses=poses[:, :3])), ("cam_poses-count", npz(cam_poses=poses[:1])),
        ("cam_poses-empty", npz(cam_poses=poses[:0])),
        ("cam_poses-zero", npz(cam_poses=np.zeros_like(poses))),           # used to give zero-length rays
        ("cam_poses-scaled", npz(cam_poses=scaled)), ("cam_poses-bottom-row", npz(cam_poses=bottom)),
        ("data-strings", npz(data=pts.astype("U12"))), ("data-words", npz(data=np.full(pts.shape, "car"))),
        ("data-complex", npz(data=pts.astype(np.complex128))), ("data-bool", npz(data=pts > 0)),
        ("data-nan", npz(data=np.where(pts > 0.9, np.nan, pts))), ("data-inf", npz(data=np.full(pts.shape, np.inf))),
        ("data-float64-overflow", npz(data=np.full(pts.shape, 1e300))),
        ("data-colours-0-255", npz(data=np.concatenate([pts[:, :3], pts[:, 3:] * 255], 1))),   # used to be read
        ("data-colours-negative", npz(data=np.concatenate([pts[:, :3], -1 - pts[:, 3:]], 1))),
        ("data-3-columns", npz(data=pts[:, :3])), ("data-1d", npz(data=pts.ravel())),
        ("data-empty", npz(data=pts[:0])),
    ]
    # an object array: np.load(allow_pickle=False) refuses it
    cases.append(("images-object", _zip_npz(images=_npy(np.array([1, "a", None], dtype=object)),
                                            cam_poses=_npy(poses), data=_npy(pts))))
    for shape in ((10 ** 6, 6), (10 ** 15, 6)):    # a header declaring more than the file holds
        lying = _lying_npy(shape)
        cases.append((f"lying-header-{shape[0]:.0e}", _zip_npz(images=lying, cam_poses=lying, data=lying)))
    return cases


def _check_srn_accepted(path):
    """Read ``path``; if accepted, everything a NeRF item is made from must be sane."""
    import numpy as np

    from ddmi.data.srn import NeRFDataset, read_scene
    s = read_scene(path)
    v, h, w, c = s["images"].shape
    assert c == 3 and min(v, h, w) > 0 and np.isfinite(s["images"]).all()
    assert s["images"].min() >= -1e-3 and s["images"].max() <= 1 + 1e-3
    rot = s["poses"][:, :3, :3]
    assert np.allclose(rot.transpose(0, 2, 1) @ rot, np.eye(3), atol=1e-2)
    assert s["points"].shape[1] == 6 and np.isfinite(s["points"]).all()
    assert -1e-3 <= s["points"][:, 3:].min() and s["points"][:, 3:].max() <= 1 + 1e-3
    item = NeRFDataset(None, files=[path], num_points=8, num_rays=10)[0]
    assert item.shape == (18, 9) and torch.isfinite(item).all()


def test_fuzzed_srn_files(tmp_path):
    """srn-cars ``.npz``: 44 structured cases + 26 byte-level cases on each of a plain and a
    compressed (as the release and ``write_scene``) file; counts in docs/reliability.md."""
    import io

    import numpy as np
    good = _npz_bytes(**_srn_arrays())
    buf = io.BytesIO()
    np.savez_compressed(buf, **_srn_arrays())
    compressed = buf.getvalue()
    # regression: a zip header naming an unknown "version needed" used to raise NotImplementedError
    bad_version = bytearray(good)
    at = good.index(b"PK\x01\x02") + 6            # the central directory's "version needed to extract"
    bad_version[at:at + 2] = (99).to_bytes(2, "little")
    r = random.Random(0)
    cases = _srn_structured_cases() + [("zip-version", bytes(bad_version))]
    cases += [(f"bytes-{k}", d) for k, d in _fuzz_cases(r, good)]
    cases += [(f"bytes-{k}-compressed", d) for k, d in _fuzz_cases(r, compressed)]
    outcomes = {"error": 0, "accepted": 0}
    for i, (kind, data) in enumerate(cases):
        path = tmp_path / f"{i}-{kind}.npz"
        path.write_bytes(data)
        try:
            _check_srn_accepted(path)
        except DataError as exc:
            assert str(path) in str(exc), (kind, str(exc))
            outcomes["error"] += 1
        else:  # only flips in unused zip metadata can leave a readable file
            assert kind.startswith("bytes-bitflip"), kind
            outcomes["accepted"] += 1
    assert outcomes["error"] >= len(cases) - 16


def test_srn_array_mutations_hypothesis(tmp_path_factory):
    """Hypothesis replaces one array of a valid file by an arbitrary array (any dtype, any shape up
    to 4-d, any values): a DataError naming the file, or a file whose every array is sane."""
    hyp = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    good = _srn_arrays()
    dtypes = st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                       hnp.complex_number_dtypes(), hnp.boolean_dtypes(), hnp.unicode_string_dtypes(max_len=4),
                       hnp.byte_string_dtypes(max_len=4), hnp.datetime64_dtypes(), hnp.timedelta64_dtypes())
    shapes = st.one_of(st.sampled_from([a.shape for a in good.values()]),
                       hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arrays = st.tuples(dtypes, shapes).flatmap(lambda ds: hnp.arrays(ds[0], ds[1]))
    folder = tmp_path_factory.mktemp("srn-hyp")
    counter = {"n": 0}

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(key=st.sampled_from(sorted(good)), array=arrays)
    def check(key, array):
        counter["n"] += 1
        path = folder / f"case{counter['n']}.npz"
        path.write_bytes(_npz_bytes(**{**good, key: array}))
        try:
            _check_srn_accepted(path)
        except DataError as exc:
            assert str(path) in str(exc)

    check()
    assert counter["n"] == 60 and hyp


# ------------------------------------------------------------------------------------------
# fuzzed video inputs: frame folders and video files

def _write_frames(folder, n, size=(12, 10)):
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), 10 * k, np.uint8)).save(folder / f"frame{k}.png")
    return sorted(folder.iterdir())


def test_fuzzed_frame_folders(tmp_path):
    """A frame replaced by broken bytes (every byte-level case of the image fuzzer) at a random
    position of a 6-frame video: the clip that reaches it is a DataError naming the frame."""
    import io

    import numpy as np
    from PIL import Image

    from ddmi.data.videos import VideoFolderDataset, load_clip
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    rng = random.Random(0)
    outcomes = {"error": 0, "decoded": 0}
    for i, (kind, data) in enumerate(_fuzz_cases(rng, buf.getvalue())):
        root = tmp_path / f"case{i}"
        frames = _write_frames(root / "train" / "v", 6)
        bad = frames[rng.randrange(6)]
        bad.write_bytes(data)
        ds = VideoFolderDataset(root, frames=6, resolution=4)     # the whole video is the window
        for load in (lambda: ds[0], lambda: load_clip(root / "train" / "v", 6, 4)):
            try:
                x = load()
            except DataError as exc:
                assert str(bad) in str(exc), (kind, str(exc))
                outcomes["error"] += 1
            else:   # a flip in an ancillary PNG chunk or a cut inside IEND can leave a valid frame
                assert kind in ("bitflip", "truncated") and x.shape == (3, 6, 4, 4) and torch.isfinite(x).all(), kind
                outcomes["decoded"] += 1
    assert outcomes["error"] >= 2 * 18


def test_frame_folder_odd_frames(tmp_path, caplog):
    import logging

    import numpy as np
    from PIL import Image

    from ddmi.data.videos import VideoFolderDataset, load_clip
    # a frame of another size: rejected naming it (its crop would jump within the clip)
    frames = _write_frames(tmp_path / "sizes" / "train" / "v", 4)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(frames[2])
    with pytest.raises(DataError, match=f"{frames[2]}: frame size 30x20 differs"):
        VideoFolderDataset(tmp_path / "sizes", frames=4, resolution=4)[0]
    with pytest.raises(DataError, match="frame2.png"):
        load_clip(frames[0].parent, 4, 4)
    # greyscale and RGBA frames are accepted as the image loader does: grey -> RGB, alpha on white
    frames = _write_frames(tmp_path / "modes" / "train" / "v", 3)
    Image.fromarray(np.full((10, 12), 77, np.uint8), "L").save(frames[0])
    Image.fromarray(np.zeros((10, 12, 4), np.uint8), "RGBA").save(frames[1])     # fully transparent
    x = VideoFolderDataset(tmp_path / "modes", frames=3, resolution=4)[0]
    assert torch.allclose((x[:, 0] + 1) * 127.5, torch.tensor(77.0), atol=0.5)
    assert torch.allclose(x[:, 1], torch.tensor(1.0))
    # zero-byte and directory "frames"
    frames = _write_frames(tmp_path / "zero" / "train" / "v", 3)
    frames[1].write_bytes(b"")
    (frames[0].parent / "frame9.png").mkdir()
    ds = VideoFolderDataset(tmp_path / "zero", frames=3, resolution=4)          # the folder is not a frame
    with pytest.raises(DataError, match=str(frames[1])):
        ds[0]
    # shorter than the clip: skipped, counted and named; only all-short is an error
    _write_frames(tmp_path / "short" / "train" / "long", 5)
    _write_frames(tmp_path / "short" / "train" / "tiny", 2)
    with caplog.at_level(logging.WARNING):
        ds = VideoFolderDataset(tmp_path / "short", frames=4, resolution=4)
    assert len(ds) == 1 and ds.skipped_short == 1
    assert "skipped 1 video(s) shorter than 4 frames" in caplog.text and "tiny (2 frames)" in caplog.text
    with pytest.raises(DataError, match=r"2 shorter ones skipped, e.g. .*long \(5 frames\)"):
        VideoFolderDataset(tmp_path / "short", frames=6, resolution=4)


def test_fuzzed_video_files(tmp_path):
    """MP4 (also renamed .mkv) and GIF bytes, broken 26 ways each (empty, truncated, random, bit
    flips): a DataError naming the file, a documented skip naming it, or frames of the right shape."""
    pytest.importorskip("av")
    from ddmi.data.videos import VideoFolderDataset, load_clip
    from ddmi.render.video import write_gif, write_mp4
    clip = torch.rand(3, 8, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mp4 = write_mp4(clip, tmp_path / "good.mp4", fps=5).read_bytes()
    gif = write_gif(clip, tmp_path / "good.gif").read_bytes()
    rng = random.Random(0)
    outcomes = {"error": 0, "skipped": 0, "decoded": 0}
    cases = [(ext, kind, data) for ext, good in ((".mp4", mp4), (".mkv", mp4), (".gif", gif))
             for kind, data in _fuzz_cases(rng, good)]
    # regression: a metadata string that is not UTF-8 (PyAV raised UnicodeDecodeError)
    at = mp4.find(b"Lavf")
    cases.append((".mp4", "metadata-not-utf8", mp4[:at] + b"\xec\xff\xfe\xfd" + mp4[at + 4:]))
    cases.append((".mp4", "png-bytes", tmp_path.joinpath("good.gif").read_bytes()[:6] + b"\x00" * 50))
    for i, (ext, kind, data) in enumerate(cases):
        root = tmp_path / f"case{i}"
        (root / "train").mkdir(parents=True)
        path = root / "train" / f"{kind}{ext}"
        path.write_bytes(data)
        loads = [lambda: load_clip(path, 4, 8)]
        if ext != ".gif":     # GIFs are read by load_clip (ddmi reconstruct), not found by the dataset
            loads.append(lambda: VideoFolderDataset(root, frames=4, resolution=8)[(0, 1)])
        for load in loads:
            try:
                x = load()
            except DataError as exc:
                assert str(path) in str(exc), (kind, str(exc))
                outcomes["skipped" if "shorter ones skipped" in str(exc) else "error"] += 1
            else:   # bytes FFmpeg does not use, or a flip inside compressed pixels (no checksum to catch it)
                assert kind in ("bitflip", "truncated") and x.shape == (3, 4, 8, 8) and torch.isfinite(x).all()
                outcomes["decoded"] += 1
    assert outcomes["error"] >= 60, outcomes
