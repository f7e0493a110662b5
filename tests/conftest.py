"""Shared fixtures: tiny synthetic datasets and tiny configs that train in seconds."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# A VAE small enough to overfit in seconds on a CPU (16x16 inputs, planes at 8 and 16).
TINY_IMAGE = [
    "data.resolution=16", "vae.ch=16", "vae.ch_mult=[1,2]", "vae.num_res_blocks=1",
    "vae.z_channels=8", "vae.embed_dim=4", "vae.hdbpe_resolutions=[8]", "vae.plane_channels=16",
    "mlp.hidden=64", "mlp.scale_embed_dim=32",
    "ldm.unet.model_channels=32", "ldm.unet.channel_mult=[1,2]", "ldm.unet.num_res_blocks=1",
    "ldm.unet.attention_resolutions=[2]", "ldm.unet.num_head_channels=16",
    "train.log_every=1", "ldm_train.log_every=1", "ldm.sample_steps=4",
]


@pytest.fixture(scope="session")
def image_data(tmp_path_factory):
    """A folder of 16 synthetic 32x32 images in the ImageFolder layout (``.../train``)."""
    from ddmi.data.synthetic import synth_images
    root = tmp_path_factory.mktemp("images")
    synth_images(root / "shapes", num=16, resolution=32, seed=0)
    return root / "shapes" / "train"


@pytest.fixture(scope="session")
def tiny_overrides(image_data):
    return TINY_IMAGE + [f"data.dir={image_data}"]


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory, tiny_overrides):
    """A tiny image VAE run folder trained for 4 steps (checkpoints at 2 and 4)."""
    from ddmi.cli import main
    run = tmp_path_factory.mktemp("runs") / "vae"
    assert main(["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={run}", "train.steps=4",
                 "train.batch_size=4", "train.save_every=2", "--no-progress"]) == 0
    return run


LDM_ARGS = ["ldm_train.batch_size=8", "ldm_train.save_every=2", "ldm.ema_after=1", "--no-progress"]


@pytest.fixture(scope="session")
def ldm_run(tmp_path_factory, tiny_overrides, vae_run):
    """A tiny image LDM run on ``vae_run``, trained for 4 steps (checkpoints at 2 and 4)."""
    from ddmi.cli import main
    run = tmp_path_factory.mktemp("ldm") / "ldm"
    assert main(["train", "ldm", "image-tiny", *tiny_overrides, f"vae={vae_run}", f"run_dir={run}",
                 "train.steps=4", *LDM_ARGS]) == 0
    return run


class TerminalText:
    """A text stream that says it is a terminal (progress bars show only on terminals); ``text``
    is what was written to it."""

    def __init__(self):
        import io
        self._buffer = io.StringIO()

    def write(self, s: str) -> int:
        return self._buffer.write(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    @property
    def text(self) -> str:
        return self._buffer.getvalue()


@pytest.fixture
def terminal_stderr(monkeypatch):
    """``sys.stderr`` replaced by a :class:`TerminalText` for the test: what the progress bars
    would show a user at a terminal."""
    import sys
    stream = TerminalText()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream
