"""No command deletes what it did not create (issue 19, item 1)."""

from __future__ import annotations

import shutil

import torch

from ddmi import checkpoint as ckpt
from ddmi.cli import main

from conftest import LDM_ARGS


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_ldm_in_the_vae_runs_parent_keeps_the_vae_run(tmp_path, tiny_overrides, vae_run):
    """run_dir=X, vae=X/vae: X/vae is the user's VAE run, not a copy to replace."""
    x = tmp_path / "both"
    shutil.copytree(vae_run, x / "vae")
    before = _tree(x / "vae")
    code = main(["train", "ldm", "image-tiny", *tiny_overrides, f"vae={x / 'vae'}", f"run_dir={x}",
                 "train.steps=2", *LDM_ARGS])
    assert code == 2
    assert _tree(x / "vae") == before
    assert [p.name for p in x.iterdir()] == ["vae"]   # refused before anything was written
    assert ckpt.latest_checkpoint(x / "vae") is not None


def test_ldm_refuses_a_foreign_vae_folder(tmp_path, tiny_overrides, vae_run, capsys):
    run = tmp_path / "ldm"
    (run / "vae").mkdir(parents=True)
    (run / "vae" / "notes.txt").write_text("mine")
    (run / "vae.tmp").mkdir()
    (run / "vae.tmp" / "keep.txt").write_text("mine too")
    code = main(["train", "ldm", "image-tiny", *tiny_overrides, f"vae={vae_run}", f"run_dir={run}",
                 "train.steps=2", *LDM_ARGS])
    assert code == 2
    assert "vae" in capsys.readouterr().err
    assert (run / "vae" / "notes.txt").read_text() == "mine"
    assert (run / "vae.tmp" / "keep.txt").read_text() == "mine too"


def test_pruning_never_follows_a_symlinked_checkpoint(tmp_path):
    run = tmp_path / "run"
    outside = tmp_path / "outside" / ckpt.CKPT_DIR / "step-00000001"
    weights = {"model": {"w": torch.zeros(2)}}
    ckpt.save_checkpoint(tmp_path / "outside", 1, weights=weights, state={"step": 1})
    (run / ckpt.CKPT_DIR).mkdir(parents=True)
    (run / ckpt.CKPT_DIR / "step-00000001").symlink_to(outside, target_is_directory=True)
    for step in (2, 3, 4):
        ckpt.save_checkpoint(run, step, weights=weights, state={"step": step}, keep=1)
    assert (outside / ckpt.MARKER).is_file()
    assert (outside / "model.safetensors").is_file()
    assert [p.name for p in ckpt.list_checkpoints(run)][-1] == "step-00000004"


def test_synth_overwrite_with_fewer_items_leaves_only_the_new_dataset_and_the_users_files(tmp_path):
    out = tmp_path / "videos"
    common = ["synth", "video", str(out), "--frames", "2", "--resolution", "8", "--test", "1"]
    assert main([*common, "--num", "4"]) == 0
    (out / "train" / "my-notes.txt").write_text("mine")
    assert main([*common, "--num", "2", "--overwrite"]) == 0
    from ddmi.data.videos import VideoFolderDataset
    assert len(VideoFolderDataset(out, frames=2, resolution=8)) == 2
    assert (out / "train" / "my-notes.txt").read_text() == "mine"


def test_an_output_folder_that_is_a_file_is_refused_before_any_compute(tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("a file")
    assert main(["synth", "image", str(target), "--num", "2", "--resolution", "8"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "a file"


def test_an_empty_run_config_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("stage: vae\ndomain: image\n")
    (run / "config.yaml").write_text("")
    assert main(["reconstruct", str(run), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "config.yaml is empty" in capsys.readouterr().err


def test_written_files_follow_the_umask(tmp_path):
    """Checkpoints, configs, JSON, images and videos are as readable as the user's umask allows
    (tempfile alone would make them 0600 / 0700)."""
    import os
    import stat

    import numpy as np
    import torch

    from ddmi import checkpoint as ckpt
    from ddmi.data.images import save_image
    from ddmi.files import atomic_write_text
    from ddmi.render.video import write_gif

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png")
        write_gif(np.zeros((2, 4, 4, 3), np.uint8), tmp_path / "a.gif")
        folder = ckpt.save_checkpoint(tmp_path / "run", 1, weights={"model": {"w": torch.zeros(2)}}, state={"step": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)   # noqa: E731
    for p in (tmp_path / "a.json", tmp_path / "a.png", tmp_path / "a.gif", folder / "model.safetensors",
              folder / "state.pt"):
        assert mode(p) == 0o640, (p.name, oct(mode(p)))
    assert mode(folder) == 0o750
