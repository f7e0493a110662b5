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
    from ddmi import stage1

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
