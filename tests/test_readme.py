"""The README's Python examples run as written (against a tiny trained run in place of the
demo's), and the pipeline agrees with `ddmi sample`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import ddmi
from ddmi.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert python_blocks()


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, ldm_run):
    (tmp_path / "demo_out" / "runs").mkdir(parents=True)
    (tmp_path / "demo_out" / "runs" / "ldm").symlink_to(ldm_run)
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), {})


def test_pipeline_samples_are_those_of_ddmi_sample(tmp_path, ldm_run):
    from PIL import Image
    assert main(["sample", str(ldm_run), "--num", "2", "--steps", "3", "--resolution", "16", "--seed", "5",
                 "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0
    pipe = ddmi.DDMIPipeline.from_run(ldm_run, device="cpu")
    z, sampler, steps = pipe.sample_latents(2, seed=5, steps=3)
    images = pipe.render(z, resolution=16)
    for i in range(2):
        written = np.asarray(Image.open(tmp_path / "s" / f"sample_{i:05d}_16.png"), dtype=np.float32)
        ours = ((images[i].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
        assert np.abs(written - ours).max() <= 1.0


def test_a_vae_pipeline_explains_that_sampling_needs_an_ldm_run(vae_run):
    pipe = ddmi.DDMIPipeline.from_run(vae_run, device="cpu")
    with pytest.raises(ddmi.errors.ConfigError, match="needs an LDM run"):
        pipe(num=1)
    z = pipe.encode(torch.zeros(1, 3, 16, 16)).mean
    assert pipe.render(z, resolution=24).shape == (1, 3, 24, 24)
