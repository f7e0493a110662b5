"""The cheap held-out metric the trainer logs periodically (``train.eval_every``)."""

import json
import math

from ddmi.cli import main
from conftest import LDM_ARGS


def _evals(run, key):
    lines = [json.loads(x) for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m[key]) for m in lines if key in m]


def test_vae_psnr_is_logged_every_eval_every_steps_and_rises_with_training(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "vae"
    assert main(["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={run}", "train.steps=60",
                 "train.batch_size=8", "train.eval_every=20", "train.save_every=1000", "train.lr=2e-3",
                 "--no-progress"]) == 0
    evals = _evals(run, "eval/psnr")
    assert [s for s, _ in evals] == [20, 40, 60]
    assert all(math.isfinite(v) for _, v in evals)
    assert evals[-1][1] > evals[0][1] + 1.0, evals        # 60 steps at lr 2e-3 gain more than 1 dB
    assert "step 60: psnr" in capsys.readouterr().err


def test_eval_every_zero_turns_it_off(tmp_path, tiny_overrides):
    run = tmp_path / "vae"
    assert main(["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={run}", "train.steps=2",
                 "train.batch_size=4", "train.eval_every=0", "--no-progress"]) == 0
    assert _evals(run, "eval/psnr") == []


def test_ldm_logs_the_ema_probe_loss(tmp_path, tiny_overrides, vae_run):
    run = tmp_path / "ldm"
    assert main(["train", "ldm", "image-tiny", *tiny_overrides, f"vae={vae_run}", f"run_dir={run}",
                 "train.steps=4", "train.eval_every=2", *LDM_ARGS]) == 0
    evals = _evals(run, "eval/ema_loss")
    assert [s for s, _ in evals] == [2, 4]
    # a zero-output network alone would score ~1 (the noise's variance); the mixed prediction's
    # analytic Gaussian part already explains much of the noise at the start (about 0.2 here)
    assert all(0.05 < v < 1.0 for _, v in evals), evals
