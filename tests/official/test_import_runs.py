"""End to end: the fixture checkpoints of every domain imported with ``ddmi import-official``, then
used by ``ddmi sample`` (two resolutions), ``ddmi reconstruct``, fine-tuning
(``ddmi train vae RUN/config.yaml init=RUN``) and resuming the imported LDM run. Needs every domain's
official hooks and ``ddmi.official.denoiser`` (the other issue-18 branches)."""

from __future__ import annotations

import pytest
import torch
import yaml
from official_fixtures import official_root  # noqa: F401 (fixture)
from safetensors.torch import load_file

from ddmi.cli import main
from ddmi.official.checkpoint_file import read_official_file

pytestmark = pytest.mark.official

#: domain -> (tiny preset, ``ddmi synth`` kind, a reconstruct input under the synthetic folder)
DOMAINS = {"image": ("image-tiny", "image", "train/*"),
           "occupancy": ("shapes-tiny", "shapes", "*/*/pointcloud.npz"),
           "nerf": ("nerf-tiny", "nerf", "cars/sampled/*.npz"),
           "video": ("video-tiny", "video", "train/video_00000")}


def _ok(argv):
    assert main([str(a) for a in argv]) == 0, argv


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_an_imported_official_run_samples_reconstructs_and_fine_tunes(official_root, tmp_path, domain):
    preset, kind, item = DOMAINS[domain]
    data = tmp_path / "data"
    own = {"image": [], "shapes": ["--points", 2000], "nerf": ["--points", 2000, "--views", 4],
           "video": ["--frames", 8]}[kind]          # an option of another domain is an error
    _ok(["synth", kind, data, "--num", 2, "--resolution", 16, *own])
    vae_run, ldm_run = tmp_path / "vae", tmp_path / "ldm"
    # the fixtures are smaller than the tiny presets: their sizes are taken from the files
    _ok(["import-official", official_root / domain / "model-last.pt", "--preset", preset, "--out", vae_run,
         "--use-file-sizes"])
    _ok(["import-official", official_root / domain / "ldm-last.pt", "--preset", preset, "--out", ldm_run,
         "--use-file-sizes", f"data.dir={data}", "ldm_train.batch_size=2"])

    # the run folders: ddmi's layout, the import recorded, the EMA weights the official ema_model
    latest = vae_run / "checkpoints" / "step-00000000"
    assert (latest / "COMPLETE").is_file() and (latest / "model.safetensors").is_file()
    assert yaml.safe_load((vae_run / "run.yaml").read_text())["stage"] == "vae"
    assert yaml.safe_load((ldm_run / "run.yaml").read_text())["stage"] == "ldm"
    assert (ldm_run / "vae" / "SOURCE").is_file() and (ldm_run / "vae" / "model.safetensors").is_file()
    record = yaml.safe_load((ldm_run / "official-import.yaml").read_text())
    official = read_official_file(official_root / domain / "ldm-last.pt")
    assert record["official_step"] == official["step"] and len(record["sha256"]) == 64
    assert record["official_args"] == official["args"]
    ema = load_file(ldm_run / "checkpoints" / "step-00000000" / "ema.safetensors")
    assert int(ema["step"]) == int(official["ema"]["step"].reshape(-1)[0])
    assert torch.equal(ema["ema_model.latent_scale"], torch.ones_like(ema["ema_model.latent_scale"]))
    assert torch.equal(ema["ema_model.latent_shift"], torch.zeros_like(ema["ema_model.latent_shift"]))

    frames = ["--frames", 4, "--frames", 8] if domain == "video" else []
    _ok(["sample", ldm_run, "--num", 2, "--resolution", 16, "--resolution", 24, *frames, "--steps", 2,
         "--out", tmp_path / "samples", "--device", "cpu"])
    inputs = sorted(data.glob(item))[:1]
    assert inputs, item
    own = {"video": ["--frames", 4], "nerf": ["--views", 2]}.get(domain, [])   # options of the domain only
    for run in (vae_run, ldm_run):
        _ok(["reconstruct", run, *inputs, "--out", tmp_path / f"rec-{run.name}", "--resolution", 16, *own,
             "--device", "cpu"])
    _ok(["train", "vae", vae_run / "config.yaml", f"init={vae_run}", f"run_dir={tmp_path / 'fine-tuned'}",
         "train.steps=2", "train.batch_size=2", f"data.dir={data}", "--no-progress"])
    assert (tmp_path / "fine-tuned" / "checkpoints" / "step-00000002" / "COMPLETE").is_file()
    # re-running stage 2 on the imported folder resumes it: fine-tuning from the official weights
    _ok(["train", "ldm", ldm_run / "config.yaml", f"run_dir={ldm_run}", "train.steps=2", "--no-progress"])
    assert (ldm_run / "checkpoints" / "step-00000002" / "COMPLETE").is_file()
