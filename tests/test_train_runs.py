"""Run folders: training through the CLI, resume, multi-process parity, checkpoints."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ddmi import checkpoint as ckpt
from ddmi.cli import main


def run_cli(*args):
    return main(list(args))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir):
    return load_file(str(ckpt.latest_checkpoint(run_dir) / "model.safetensors"))


def test_run_folder_is_self_describing(vae_run):
    assert (vae_run / "config.yaml").is_file() and (vae_run / "run.yaml").is_file()
    names = [p.name for p in ckpt.list_checkpoints(vae_run)]
    assert names == ["step-00000002", "step-00000004"]
    records = metrics(vae_run)
    assert [m["step"] for m in records if "lr" in m] == [1, 2, 3, 4]
    # the held-out metric is logged once, at the end (no sample_every)
    assert [(m["step"], 0 < m["eval/psnr"] < 60) for m in records if "eval/psnr" in m] == [(4, True)]
    assert list((vae_run / "samples").glob("recon-*.png"))
    state = ckpt.load_state(ckpt.latest_checkpoint(vae_run))
    assert state["step"] == 4 and "optimizer" in state


def test_resume_reaches_the_same_weights_bitwise(tmp_path, tiny_overrides, vae_run):
    base = [*tiny_overrides, "train.batch_size=4", "train.save_every=2", "--no-progress"]
    run = tmp_path / "resumed"
    assert run_cli("train", "vae", "image-tiny", *base, f"run_dir={run}", "train.steps=2") == 0
    assert run_cli("train", "vae", "image-tiny", *base, f"run_dir={run}", "train.steps=4") == 0
    a, b = final_weights(run), final_weights(vae_run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_a_torn_checkpoint_write(tmp_path, tiny_overrides, vae_run):
    """A leftover temporary folder (a kill during a save) is ignored; the last complete one is used."""
    run = tmp_path / "torn"
    shutil.copytree(vae_run, run)
    latest = ckpt.latest_checkpoint(run)
    torn = latest.parent / ".tmp-step-00000006-x"
    shutil.copytree(latest, torn)
    (torn / "COMPLETE").unlink()
    (torn / "model.safetensors").write_bytes(b"garbage")
    assert ckpt.latest_checkpoint(run) == latest


def test_wrong_config_on_existing_run_is_refused(vae_run, tiny_overrides, capsys):
    rc = run_cli("train", "vae", "image-tiny", *tiny_overrides, f"run_dir={vae_run}", "vae.ch=32")
    assert rc == 2
    assert "vae.ch" in capsys.readouterr().err


def _free_port() -> int:
    """A TCP port that is free now (accelerate's fixed default, 29500, may be taken)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run ``cmd`` (at most 5 minutes: a process stuck at a barrier must not hang the suite); on
    failure, fail the test with the command's stderr. Returns the finished process (its output)."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {' '.join(cmd[:6])} ...\n{proc.stderr[-4000:]}"
    return proc


def _one_and_two_processes(tmp_path, stage: str, base: list[str], batch: int, key: str):
    """Train ``stage`` once in one process with batch ``2 * batch`` and once under
    ``accelerate launch --multi_gpu`` with 2 processes of ``batch`` (the same global batch).
    Returns the logged ``key`` values of both runs and the two-process run folder."""
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    section = "train" if stage == "vae" else "ldm_train"
    _run([sys.executable, "-m", "ddmi", "train", stage, "image-tiny", *base, f"run_dir={one}",
          f"{section}.batch_size={2 * batch}"], env)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--main_process_port", str(_free_port()), "-m", "ddmi", "train", stage, "image-tiny", *base,
          f"run_dir={two}", f"{section}.batch_size={batch}"], env)
    return [m[key] for m in metrics(one) if key in m], [m[key] for m in metrics(two) if key in m], two


def _assert_equal_losses(l1: list[float], l2: list[float], steps: int) -> None:
    assert len(l1) == len(l2) == steps
    for a, b in zip(l1, l2):   # same examples, same randomness: equal up to float reduction order
        assert abs(a - b) / abs(a) < 1e-3, (l1, l2)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test on linux only")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny_overrides):
    """`accelerate launch --multi_gpu` starts torch.distributed processes (gloo on CPU); `--cpu`
    alone would start only one process."""
    base = [*tiny_overrides, "train.steps=3", "train.save_every=3", "--no-progress", "loss.multiscale=true"]
    l1, l2, _ = _one_and_two_processes(tmp_path, "vae", base, 2, "l1")   # (the eval/psnr record has no l1)
    _assert_equal_losses(l1, l2, 3)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test on linux only")
def test_two_process_ldm_matches_one_process(tmp_path, vae_run, tiny_overrides):
    """Stage 2 under `accelerate launch`: both processes copy-or-find the VAE in step (the copy
    is made once, by the main process), and the losses equal a one-process run's."""
    base = [*tiny_overrides, f"vae={vae_run}", "ldm_train.steps=3", "ldm_train.save_every=3",
            "ldm_train.log_every=1", "--no-progress"]
    l1, l2, two = _one_and_two_processes(tmp_path, "ldm", base, 4, "loss")
    assert (two / "vae" / "model.safetensors").is_file()
    _assert_equal_losses(l1, l2, 3)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test on linux only")
def test_two_processes_refuse_a_foreign_folder_once_and_do_not_hang(tmp_path, tiny_overrides):
    """Only the main process checks a new folder; when it refuses, the launcher stops the other
    process (waiting at a barrier) instead of leaving it hanging, and the user's file is kept."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                           "2", "--main_process_port", str(_free_port()), "-m", "ddmi", "train", "vae",
                           "image-tiny", *tiny_overrides, f"run_dir={mine}", "train.steps=2", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("not empty and holds no ddmi run") == 1, proc.stderr[-3000:]
    assert (mine / "notes.txt").read_text() == "my notes"
    assert not (mine / "run.yaml").exists()
