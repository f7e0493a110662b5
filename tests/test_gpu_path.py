"""The paper-scale GPU path, checked on the CPU (issue 16): one placement call moves everything a
step, the EMA, the frozen VAE, previews and evaluation use; fp16 loss scaling backs off and
recovers; the stage-2 latent cache is a memory-mapped file in the run folder, reused on resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

from ddmi import checkpoint as ckpt
from ddmi.config import load_config
from ddmi.errors import DDMIError
from ddmi.training.trainer import Task, train


def _placed_off(task, device: str) -> list[str]:
    """Names of every parameter, buffer and tensor the task holds (its dataset aside) that is
    not on ``device``."""
    wrong = []
    for name, value in vars(task).items():
        if name == "dataset":
            continue
        if isinstance(value, nn.Module):
            for k, t in [*value.named_parameters(), *value.named_buffers()]:
                if t.device.type != device:
                    wrong.append(f"{name}.{k}")
        elif isinstance(value, torch.Tensor) and value.device.type != device:
            wrong.append(name)
    return wrong


def test_ldm_task_moves_ema_vae_and_probes_with_one_call(ldm_run):
    from ddmi.training.ldm_task import LDMTask
    task = LDMTask(ckpt.load_run_config(ldm_run), ldm_run, log=lambda m: None)
    assert {"ema", "ae", "module", "fixed_noise", "probe_z0"} <= set(vars(task))
    task.to("meta")
    assert _placed_off(task, "meta") == []


@pytest.mark.parametrize("gan", [False, True])
def test_vae_task_moves_module_and_previews_with_one_call(tiny_overrides, gan):
    from ddmi.training.tasks import make_vae_task
    preset = "image-tiny-gan" if gan else "image-tiny"
    task = make_vae_task(load_config(preset, tiny_overrides), log=lambda m: None)
    task.to("meta")
    assert _placed_off(task, "meta") == []


# ------------------------------------------------------------------------------------------
# loss scaling


class _Items(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((4,), float(i + 1) / 8)


class _Boosted(nn.Module):
    """A linear model whose loss is multiplied by ``boost``: 1e35 is finite in fp32, but times
    the fp16 loss scale (65536) its gradients overflow."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, rand, *, boost):
        loss = self.lin(x).float().square().mean() * boost
        return loss, {"loss": loss.detach()}


class _OverflowTask(Task):
    stage = "vae"

    def __init__(self, overflow_steps, boost=1e35):
        torch.manual_seed(0)
        self.boost = boost
        self.module = _Boosted()
        self.dataset = _Items()
        self.overflow_steps = set(overflow_steps)
        self.seen: dict[int, torch.Tensor] = {}   # weights at the start of each step

    def loss_kwargs(self, step):
        self.seen[step] = self.module.lin.weight.detach().clone()
        return {"boost": self.boost if step in self.overflow_steps else 1.0}


def _tc(**kw):
    base = load_config("image-tiny").train
    cfg = OmegaConf.merge(base, {"steps": 5, "batch_size": 2, "lr": 1e-2, "save_every": 100,
                                 "log_every": 1, "max_nonfinite": 1, "warmup_steps": 0,
                                 "mixed_precision": "fp16", **kw})
    return cfg


def test_fp16_overflow_halves_the_scale_skips_the_step_and_is_not_divergence(tmp_path):
    task = _OverflowTask(overflow_steps=[2])
    logs = []
    result = train(task, _tc(), tmp_path / "run", seed=0, log=logs.append, progress=False)
    assert result.step == 5                              # max_nonfinite=1, yet no "diverged"
    assert torch.equal(task.seen[2], task.seen[3])       # the overflow step changed nothing
    assert not torch.equal(task.seen[3], task.seen[4])   # the next finite step trained
    assert not torch.equal(task.seen[1], task.seen[2])
    state = ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "run"))
    assert state["scaler"]["scale"] == 2.0 ** 15         # 2^16 halved once
    assert any("overflow" in line and "32768" in line for line in logs)


def test_with_loss_scaling_a_non_finite_loss_is_still_divergence(tmp_path):
    task = _OverflowTask(overflow_steps=[2], boost=float("inf"))
    with pytest.raises(DDMIError, match="diverged"):
        train(task, _tc(), tmp_path / "run", seed=0, log=lambda m: None, progress=False)


def test_fp16_resume_restores_the_loss_scale_exactly(tmp_path):
    straight = _OverflowTask(overflow_steps=[1, 3])
    train(straight, _tc(), tmp_path / "a", seed=0, log=lambda m: None, progress=False)
    first = _OverflowTask(overflow_steps=[1, 3])
    train(first, _tc(steps=2, save_every=2), tmp_path / "b", seed=0, log=lambda m: None, progress=False)
    resumed = _OverflowTask(overflow_steps=[1, 3])
    train(resumed, _tc(), tmp_path / "b", seed=0, log=lambda m: None, progress=False)
    a, b = (ckpt.latest_checkpoint(tmp_path / x) for x in "ab")
    assert ckpt.load_state(a)["scaler"] == ckpt.load_state(b)["scaler"]
    assert ckpt.load_state(b)["scaler"]["scale"] == 2.0 ** 14
    wa, wb = ckpt.load_weights(a / "model.safetensors"), ckpt.load_weights(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path):
    dtypes = []

    class Probe(_OverflowTask):
        def loss_kwargs(self, step):
            dtypes.append(self.module.lin.weight.dtype)
            return super().loss_kwargs(step)

    task = Probe(overflow_steps=[])
    seen_out = []
    task.module.lin.register_forward_hook(lambda m, i, o: seen_out.append(o.dtype))
    train(task, _tc(steps=2, mixed_precision="bf16"), tmp_path / "run", seed=0, log=lambda m: None,
          progress=False)
    assert set(dtypes) == {torch.float32} and set(seen_out) == {torch.bfloat16}
    state = ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "run"))
    assert "scaler" not in state                          # no loss scaling in bf16


def test_channels_last_trains_the_same_function(tmp_path):
    """The memory-format switch changes the layout, not the numbers (within fp32 rounding)."""
    from ddmi.training.tasks import make_vae_task
    from conftest import TINY_IMAGE
    from ddmi.data.synthetic import synth_images
    synth_images(tmp_path / "d", num=8, resolution=16, seed=0)
    cfg = load_config("image-tiny", TINY_IMAGE + [f"data.dir={tmp_path / 'd' / 'train'}", "train.steps=2",
                                                  "train.batch_size=2", "train.save_every=2"])
    losses = {}
    for cl in (False, True):
        torch.manual_seed(cfg.seed)
        task = make_vae_task(cfg, log=lambda m: None)
        tc = OmegaConf.merge(cfg.train, {"channels_last": cl})
        losses[cl] = train(task, tc, tmp_path / f"run{cl}", seed=0, log=lambda m: None,
                           progress=False).last_logs["l1"]
        if cl:
            conv = next(m for m in task.autoencoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1)
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


# ------------------------------------------------------------------------------------------
# the latent cache


def _in_memory_stats(ae, items, batch_size) -> torch.Tensor:
    """What the cache replaces: the float32 posterior statistics of every item, in RAM, encoded
    in batches of ``batch_size`` as the old in-memory cache did."""
    out = []
    for start in range(0, len(items), batch_size):
        x = torch.stack([items[i] for i in range(start, min(len(items), start + batch_size))])
        with torch.inference_mode():
            out.append(torch.stack([torch.stack([p.mean, p.std], 1)
                                    for p in map(ae.encode, ae.encoder_views(x))], 1))
    return torch.cat(out)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_latent_cache_is_a_file_in_the_run_equal_to_the_in_memory_encoding(tmp_path, vae_run, image_data, dtype):
    from ddmi.runs import load_autoencoder
    from ddmi.data.images import ImageFolderDataset
    from ddmi.training.ldm_task import build_latent_cache
    ae = load_autoencoder(vae_run)
    items = ImageFolderDataset(image_data, resolution=16)
    cache = build_latent_cache(ae, items, tmp_path / "latent-cache", signature={"vae": "a"}, dtype=dtype,
                               batch_size=5, log=lambda m: None)
    assert isinstance(cache.stats, np.memmap) and cache.stats.dtype == np.dtype(dtype)
    got = torch.stack([cache[i] for i in range(len(cache))])
    want = _in_memory_stats(ae, items, batch_size=5)
    if dtype == "float32":
        assert torch.equal(got, want)
    else:
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-4)
    assert (tmp_path / "latent-cache" / "latents.npy").stat().st_size < want.numel() * 4 + 1024 * (dtype == "float32")


def test_latent_cache_is_reused_on_resume_and_rebuilt_when_stale(tmp_path, vae_run, image_data, monkeypatch):
    from ddmi.runs import load_autoencoder
    from ddmi.data.images import ImageFolderDataset
    from ddmi.training.ldm_task import build_latent_cache
    ae = load_autoencoder(vae_run)
    items = ImageFolderDataset(image_data, resolution=16)
    calls = {"n": 0}
    real = type(ae).encode

    def counting(self, x):
        calls["n"] += 1
        return real(self, x)

    monkeypatch.setattr(type(ae), "encode", counting)
    folder = tmp_path / "latent-cache"
    build_latent_cache(ae, items, folder, signature={"vae": "a"}, log=lambda m: None)
    first = calls["n"]
    assert first > 0
    logs = []
    build_latent_cache(ae, items, folder, signature={"vae": "a"}, log=logs.append)
    assert calls["n"] == first and "reusing" in logs[0]
    build_latent_cache(ae, items, folder, signature={"vae": "b"}, log=lambda m: None)   # another VAE
    assert calls["n"] > first


def test_ldm_run_keeps_its_latent_cache_in_the_run_folder(ldm_run):
    cache = ldm_run / "latent-cache"
    assert (cache / "latents.npy").is_file() and (cache / "cache.yaml").is_file()
    stats = np.load(cache / "latents.npy", mmap_mode="r")
    assert stats.dtype == np.float16 and stats.shape[:3] == (16, 2, 2)   # 16 images, 2 views


def test_point_cloud_draws_are_distinct_views_of_the_cache(tmp_path):
    from ddmi.data.synthetic_shapes import synth_shapes
    from ddmi.data.shapes import ShapesDataset
    from ddmi.models import build_autoencoder
    from ddmi.training.ldm_task import build_latent_cache
    from test_occupancy_runs import FAST
    synth_shapes(tmp_path / "s", num=3, seed=0, num_points=600, num_surface=600)
    cfg = load_config("shapes-tiny", FAST[:-1] + [f"data.dir={tmp_path / 's'}"])
    ae = build_autoencoder(cfg).eval()
    items = ShapesDataset(tmp_path / "s", num_points=cfg.shapes.num_points, num_queries=1)
    one = build_latent_cache(ae, items, tmp_path / "c1", signature={}, log=lambda m: None, dtype="float32")
    three = build_latent_cache(ae, items, tmp_path / "c3", signature={}, draws=3, log=lambda m: None,
                               dtype="float32")
    assert one.views == 1 and three.views == 3
    assert torch.allclose(three[0][0], one[0][0], atol=1e-6)        # draw 0 is the fixed draw
    assert not torch.allclose(three[0][1], three[0][2])              # later draws differ


def test_shape_dataset_memory_is_capped(tmp_path):
    from ddmi.data.shapes import ShapesDataset
    from ddmi.data.synthetic_shapes import synth_shapes
    synth_shapes(tmp_path / "s", num=4, seed=0, num_points=500, num_surface=500)
    one = sum(a.nbytes for a in ShapesDataset(tmp_path / "s")._read(0))
    capped = ShapesDataset(tmp_path / "s", cache_bytes=int(1.5 * one))
    unbounded = ShapesDataset(tmp_path / "s", cache_bytes=1 << 40)
    for ds in (capped, unbounded):
        for i in range(len(ds)):
            ds[i]
    assert len(capped._cache) == 1 and capped._cache.bytes <= 1.5 * one
    assert len(unbounded._cache) == 4
    assert torch.equal(capped[3], unbounded[3])      # what is not cached is re-read, the same
