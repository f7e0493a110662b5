"""Feedback on long steps and warnings for likely mistakes (issue: the newcomer's path)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ddmi.cli import main


def test_training_says_how_many_items_it_found(tmp_path, tiny_overrides, capsys):
    assert main(["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={tmp_path / 'r'}", "train.steps=1",
                 "train.batch_size=2", "--no-progress"]) == 0
    assert "training vae on 16 items" in capsys.readouterr().err


def test_sample_names_the_checkpoint_and_counts_denoising_steps(tmp_path, ldm_run, capsys):
    assert main(["sample", str(ldm_run), "--num", "3", "--steps", "2", "--batch-size", "1",
                 "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "at step 4 (step-00000004, EMA weights)" in err
    assert "6/6" in err and "sampling 3 (ddim, 2 steps)" in err      # 3 batches x 2 network calls


def test_stage_two_on_an_unfinished_vae_warns(tmp_path, vae_run, tiny_overrides, capsys):
    unfinished = tmp_path / "vae"
    shutil.copytree(vae_run, unfinished)
    cfg = (unfinished / "config.yaml").read_text().replace("steps: 4\n", "steps: 400\n", 1)
    (unfinished / "config.yaml").write_text(cfg)
    assert main(["train", "ldm", "image-tiny", *tiny_overrides, f"vae={unfinished}", f"run_dir={tmp_path / 'ldm'}",
                 "train.steps=1", "ldm_train.batch_size=4", "--no-progress"]) == 0
    assert "stopped at step 4 of its 400" in capsys.readouterr().err


def test_a_dataset_root_with_train_and_test_splits_warns(tmp_path):
    from ddmi.data.images import ImageFolderDataset
    from ddmi.data.synthetic import synth_images
    synth_images(tmp_path / "d", num=4, resolution=8, seed=0, split_test=2)
    with pytest.warns(RuntimeWarning, match="point data.dir at"):
        ImageFolderDataset(tmp_path / "d", resolution=8)


def test_fid_on_few_images_warns(tmp_path):
    from PIL import Image

    from ddmi.metrics.api import evaluate_folders
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(3):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / folder / f"{i}.png")
    with pytest.warns(RuntimeWarning, match="biased upward"):
        evaluate_folders(tmp_path / "a", tmp_path / "b", metrics=["fid"], device="cpu", cache=False, progress=False)


def test_tensorboard_receives_the_preview_images(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "r"
    assert main(["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={run}", "train.steps=2",
                 "train.batch_size=2", "train.sample_every=1", "--no-progress"]) == 0
    events = EventAccumulator(str(run / "logs" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "samples/recon" in events.Tags()["images"]
    assert [e.step for e in events.Images("samples/recon")] == [1, 2]
