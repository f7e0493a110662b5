"""Runs cannot collide, failed starts do not poison a folder, divergence can be recovered from,
and failures are one line (issue: reliability, items 2, 3, 5, 7)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddmi import checkpoint as ckpt
from ddmi.cli import main, one_line
from ddmi.errors import DataError
from ddmi.files import LOCK_NAME

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _args(tiny_overrides, run, steps=8, *extra):
    return ["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={run}", f"train.steps={steps}",
            "train.batch_size=4", "train.save_every=2", "train.sample_every=0", "--no-progress", *extra]


def _weights(run):
    return load_file(str(ckpt.latest_checkpoint(run) / "model.safetensors"))


def test_two_processes_on_one_run_folder_one_trains_the_other_is_refused_with_its_pid(tmp_path, tiny_overrides):
    ref, run = tmp_path / "ref", tmp_path / "run"
    cmd = [sys.executable, "-m", "ddmi", *_args(tiny_overrides, run, 8, "train.save_every=1")]
    subprocess.run([sys.executable, "-m", "ddmi", *_args(tiny_overrides, ref, 8, "train.save_every=1")],
                   env=ENV, check=True, capture_output=True)
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.pid, p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for _, rc, _ in results)
    assert codes == [0, 2], results
    (winner, _, _), = [r for r in results if r[1] == 0]
    (_, _, err), = [r for r in results if r[1] == 2]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"in use by process {winner}" in lines[0], err
    assert all(json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines())
    a, b = _weights(ref), _weights(run)                    # the winner's run is not disturbed
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_lock_names_its_holder_and_is_released_when_the_holder_dies(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ddmi.files import FolderLock\n"
                               f"with FolderLock({str(run)!r}):\n    print('locked', flush=True)\n"
                               "    time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_args(tiny_overrides, run, 2)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by process {holder.pid}" in err[0]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
    assert main(_args(tiny_overrides, run, 2)) == 0


def test_a_failed_first_start_does_not_poison_the_folder(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    bad = [o for o in tiny_overrides if not o.startswith("data.dir=")] + [f"data.dir={tmp_path / 'typo'}"]
    assert main(_args(bad, run, 2)) == 2
    assert "typo" in capsys.readouterr().err
    assert main(_args(tiny_overrides, run, 2)) == 0          # the corrected command is accepted
    assert ckpt.read_run_info(run)["started"] is True
    assert main(_args(bad, run, 4)) == 2                     # a started run keeps its config
    assert "different config (data.dir)" in capsys.readouterr().err


def test_a_start_cut_short_before_its_config_was_written_is_restarted(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("stage: vae\ndomain: image\nstarted: false\n")   # disk full after this
    assert main(_args(tiny_overrides, run, 2)) == 0


def test_train_refuses_a_non_empty_folder_that_is_not_a_run(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("my notes")
    assert main(_args(tiny_overrides, run, 2)) == 2
    assert "not empty and holds no ddmi run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK_NAME, "notes.txt"])
    assert (run / "notes.txt").read_text() == "my notes"


def test_a_lagging_process_does_not_take_the_main_one_s_new_run_for_a_foreign_folder(tmp_path):
    """In multi-process training every process looks at the folder, then the main one writes it;
    a slower process that reaches the new-folder check after the main process wrote ``run.yaml``
    must not refuse the folder (it did, once, in CI: rank 1 exited 2)."""
    from ddmi.commands.train import prepare_run_dir
    from ddmi.config import load_config

    cfg = load_config("image-tiny", {})
    run = tmp_path / "run"
    prepare_run_dir(cfg, "vae", run, True, existing=False)              # the main process, first
    prepare_run_dir(cfg, "vae", run, False, existing=False)             # rank 1, late: no error
    with pytest.raises(Exception, match="holds no ddmi run"):          # the main one still checks
        other = tmp_path / "other"
        other.mkdir()
        (other / "notes.txt").write_text("x")
        prepare_run_dir(cfg, "vae", other, True, existing=False)


def test_an_exploding_loss_keeps_the_last_good_checkpoint_and_the_remedy_resumes_it(tmp_path, tiny_overrides,
                                                                                      monkeypatch, capsys):
    from ddmi.training import vae_task

    real_forward = vae_task._Forward.forward
    calls = {"n": 0}

    def exploding(self, images, rand, **kw):
        loss, logs = real_forward(self, images, rand, **kw)
        calls["n"] += 1
        return (loss * 1e6 if calls["n"] > 13 else loss), logs        # finite, but exploding

    monkeypatch.setattr(vae_task._Forward, "forward", exploding)
    run = tmp_path / "run"
    args = _args(tiny_overrides, run, 30, "train.save_every=5", "train.max_nonfinite=3")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "diverged at step 15" in err and "exploded" in err
    assert "last good checkpoint is" in err and "step-00000010" in err and "train.lr" in err
    assert ckpt.latest_checkpoint(run).name == "step-00000010"    # nothing written after step 13
    monkeypatch.setattr(vae_task._Forward, "forward", real_forward)
    assert main([*args, "train.lr=5e-5", "train.grad_clip=1.0"]) == 0   # the remedy is accepted
    history = [json.loads(line) for line in (run / "logs" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["resumed_from"] == "step-00000010"
    assert history[-1]["changed"]["train.lr"][1] == 5e-5
    assert "train.grad_clip" in history[-1]["changed"]
    assert int(ckpt.load_state(ckpt.latest_checkpoint(run))["step"]) == 30
    assert main([*args, "vae.ch=32"]) == 2                         # architecture keys stay fixed
    assert "different config (vae.ch)" in capsys.readouterr().err


def test_a_data_error_in_a_dataloader_worker_is_one_line():
    try:
        raise DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                        "call last):\n  File \"x.py\", line 1, in f\n    raise DataError(...)\n"
                        "ddmi.errors.DataError: cannot read image /data/a.png: truncated")
    except DataError as exc:
        assert one_line(exc) == "cannot read image /data/a.png: truncated"


def test_a_corrupt_image_read_by_a_worker_process_is_one_line(tmp_path, tiny_overrides, image_data, capsys):
    data = tmp_path / "data"
    shutil.copytree(image_data, data)
    first = sorted(data.glob("*.png"))[0]
    first.write_bytes(first.read_bytes()[:40])
    over = [o for o in tiny_overrides if not o.startswith("data.dir=")] + [f"data.dir={data}"]
    assert main(_args(over, tmp_path / "run", 2, "data.num_workers=1")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and first.name in errors[0] and "Traceback" not in err, err


def _tmpfs(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs to fill a disk")
    return path


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(bytes(1 << 16))
                fh.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_one_line_and_the_run_resumes_bitwise_once_there_is_space(tmp_path, tiny_overrides, capsys):
    ref = tmp_path / "ref"
    assert main(_args(tiny_overrides, ref, 8)) == 0
    disk = _tmpfs(tmp_path / "disk", "64m")
    try:
        run, fresh = disk / "run", disk / "fresh"
        assert main(_args(tiny_overrides, run, 4)) == 0
        filler = _fill(disk)
        assert main(_args(tiny_overrides, run, 8)) == 2            # its next checkpoint cannot be written
        assert main(_args(tiny_overrides, fresh, 8)) == 2          # a new run cannot even start
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 2 and all("no space left on device" in e for e in errors), errors
        assert ckpt.latest_checkpoint(run).name == "step-00000004"  # intact
        filler.unlink()
        assert main(_args(tiny_overrides, run, 8)) == 0             # resumes from step 4
        assert main(_args(tiny_overrides, fresh, 8)) == 0           # the folder was not poisoned
        a = _weights(ref)
        for folder in (run, fresh):
            b = _weights(folder)
            assert all(torch.equal(a[k], b[k]) for k in a), folder
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
