"""Stage 2 end to end on a tiny model: train, resume, sample deterministically, any resolution."""

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from ddmi import checkpoint as ckpt
from ddmi.cli import main

from conftest import LDM_ARGS


def test_ldm_run_is_self_contained(ldm_run):
    assert (ldm_run / "vae" / "model.safetensors").is_file()
    latest = ckpt.latest_checkpoint(ldm_run)
    assert latest.name == "step-00000004"
    assert {p.name for p in latest.glob("*.safetensors")} == {"model.safetensors", "ema.safetensors"}
    assert ckpt.read_run_info(ldm_run)["stage"] == "ldm"


def test_ldm_resume_is_bitwise(tmp_path, tiny_overrides, vae_run, ldm_run):
    run = tmp_path / "ldm"
    base = ["train", "ldm", "image-tiny", *tiny_overrides, f"vae={vae_run}", f"run_dir={run}", *LDM_ARGS]
    assert main(base + ["train.steps=2"]) == 0
    assert main(base + ["train.steps=4"]) == 0
    for name in ("model", "ema"):
        a = load_file(str(ckpt.latest_checkpoint(run) / f"{name}.safetensors"))
        b = load_file(str(ckpt.latest_checkpoint(ldm_run) / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def read(path):
    return np.asarray(Image.open(path)).astype(np.float64)


def test_sampling_is_deterministic_and_refuses_to_overwrite(tmp_path, ldm_run, capsys):
    args = ["sample", str(ldm_run), "--num", "3", "--steps", "3", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "a2")]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--batch-size", "2"]) == 0
    for i in range(3):
        name = f"sample_{i:05d}_16.png"
        assert np.array_equal(read(tmp_path / "a" / name), read(tmp_path / "a2" / name))
        # another batch size changes only the float summation order: at most one grey level
        assert np.abs(read(tmp_path / "a" / name) - read(tmp_path / "b" / name)).max() <= 1
    assert (tmp_path / "a" / "grid_16.png").is_file()
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "a"), "--overwrite"]) == 0
    assert main(args + ["--out", str(tmp_path / "c"), "--seed", "6"]) == 0
    assert not np.array_equal(read(tmp_path / "a" / "sample_00000_16.png"),
                              read(tmp_path / "c" / "sample_00000_16.png"))


def test_one_latent_at_two_resolutions_keeps_its_content(tmp_path, ldm_run):
    assert main(["sample", str(ldm_run), "--num", "2", "--steps", "3", "--out", str(tmp_path),
                 "--resolution", "16", "--resolution", "48"]) == 0
    def psnr(a, b):
        return 10 * np.log10(255.0**2 / max(((a - b) ** 2).mean(), 1e-9))

    big = read(tmp_path / "sample_00000_48.png")
    assert big.shape == (48, 48, 3)
    down = big.reshape(16, 3, 16, 3, 3).mean(axis=(1, 3))
    same = psnr(down, read(tmp_path / "sample_00000_16.png"))
    other = psnr(down, read(tmp_path / "sample_00001_16.png"))
    # the VAE here is barely trained (4 steps) and 48 = 3x extrapolates the scale injection, so
    # ask only that a latent's 3x render matches its own 1x render clearly better than another's
    assert same > other + 3.0, (same, other)


def test_interpolation_strip(tmp_path, ldm_run):
    assert main(["sample", str(ldm_run), "--num", "5", "--steps", "3", "--out", str(tmp_path),
                 "--interpolate"]) == 0
    strip = read(tmp_path / "interpolation_16.png")
    assert strip.shape[1] > 4 * strip.shape[0]


def test_eval_of_a_sample_folder_measures_each_resolution_and_never_the_grids(tmp_path, ldm_run, image_data):
    import json
    out = tmp_path / "s"
    assert main(["sample", str(ldm_run), "--num", "3", "--steps", "2", "--resolution", "16", "--resolution", "24",
                 "--out", str(out), "--device", "cpu"]) == 0
    manifest = json.loads((out / "ddmi-samples.json").read_text())
    assert manifest["checkpoint"].startswith("step-") and sorted(manifest["groups"]) == ["16", "24"]
    assert main(["eval", str(out), "--ref", str(image_data), "--metric", "kid", "--device", "cpu"]) == 0
    figures = json.loads((out / "ddmi-eval.json").read_text())
    assert figures["num_gen@16"] == 3 and figures["num_gen@24"] == 3     # grids not counted
    assert "kid@16" in figures and "kid@24" in figures and "kid" not in figures
