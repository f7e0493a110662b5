"""The package's layout rules, read from its imports (with ``ast``: imports inside functions count
too), and the proof that a domain is a plug-in: a toy domain defined in this file alone trains
both stages and samples through the ``ddmi`` command."""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

import ddmi
from ddmi import domains
from ddmi.cli import main
from ddmi.config import load_config
from ddmi.domains.base import Domain
from ddmi.errors import ConfigError
from ddmi.vae.posterior import DiagonalGaussian

from conftest import TINY_IMAGE

PACKAGE = Path(ddmi.__file__).parent
BUILTIN = ("image", "occupancy", "nerf", "video")
DRIVERS = ("ddmi.training", "ddmi.commands", "ddmi.cli", "ddmi.runs", "ddmi.generate", "ddmi.models",
           "ddmi.pipeline")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in the file)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                targets = []
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("ddmi"):
                    graph[name].add(t)
    return {m: graph[m] for m in modules}


def _cycles(graph) -> list[list[str]]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_anywhere_in_the_package():
    assert _cycles(import_graph()) == []


def test_relative_imports_are_not_used():
    """Every package import is absolute, which the graph above reads exactly."""
    relative = [str(p) for p in PACKAGE.rglob("*.py")
                if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))]
    assert relative == []


def test_domains_never_import_the_layers_that_drive_them():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if t.startswith(DRIVERS))
           for m, ts in graph.items() if m.startswith("ddmi.domains")}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_training_and_commands_reach_a_domain_only_through_the_registry():
    graph = import_graph()
    direct = {m: sorted(t for t in ts if any(t.startswith(f"ddmi.domains.{d}") for d in BUILTIN))
              for m, ts in graph.items() if not m.startswith("ddmi.domains")}
    assert {m: ts for m, ts in direct.items() if ts} == {}


def test_a_domain_does_not_import_another_domain():
    graph = import_graph()
    crossing = {m: sorted(t for t in ts if t.startswith("ddmi.domains.") and t.split(".")[2] != m.split(".")[2]
                          and t.split(".")[2] != "base")
                for m, ts in graph.items() if m.startswith("ddmi.domains.") and m.split(".")[2] in BUILTIN}
    assert {m: ts for m, ts in crossing.items() if ts} == {}


# ------------------------------------------------------------------------------------------
# a fifth domain from outside the package: 1-D signals


class Signals(Dataset):
    def __init__(self, folder):
        self.x = torch.from_numpy(np.load(Path(folder) / "signals.npy")).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


class SignalAutoencoder(nn.Module):
    """64 samples <-> a (4, 8, 8) Gaussian latent, through linear maps."""

    latent_shape = (4, 8, 8)

    def __init__(self):
        super().__init__()
        self.vae = nn.ModuleDict({"enc": nn.Linear(64, 2 * 256), "dec": nn.Linear(256, 64)})

    def components(self):
        return {"encoder": self.vae["enc"], "decoder": self.vae["dec"]}

    def encode(self, x):
        return DiagonalGaussian(self.vae["enc"](x).view(-1, 8, 8, 8))

    def decode(self, z):
        return self.vae["dec"](z.flatten(1))

    def encoder_views(self, batch):
        return [batch]

    def random_inputs(self, generator, n, *, hflip=False):
        return {"noise": torch.randn((n, *self.latent_shape), generator=generator)}

    def forward(self, x, rand, *, kl_weight, sn_weight, perceptual=None, perceptual_weight=1.0):
        post = self.encode(x)
        rec = self.decode(post.mean + post.std * rand["noise"])
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean()
        return l1 + 1e-4 * kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


@dataclass
class SignalConfig:
    """The toy domain's own config section, ``signal``."""

    length: int = 64


class SignalDomain(Domain):
    name = "signal-1d"
    description = "1-D signals of 64 samples (a test domain)"
    section = "signal"
    section_schema = SignalConfig
    command_options = {"sample": {"gain": {"type": float, "help": "multiply the written signals"}}}

    def validate(self, cfg, check):
        check(cfg.signal.length == 64, "signal.length", "this toy autoencoder reads 64 samples")

    def build_autoencoder(self, cfg):
        return SignalAutoencoder()

    def training_dataset(self, cfg, log):
        return Signals(cfg.data.dir)

    def encoder_dataset(self, cfg):
        return Signals(cfg.data.dir)

    def sample_targets(self, args, ae, count):
        return [Path(args.out) / f"signal_{i:05d}.npy" for i in range(count)]

    def write_samples(self, args, ae, batches, count, shard, log):
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for i, z in batches:
            for j, signal in enumerate(ae.decode(z).cpu().numpy()):
                np.save(Path(args.out) / f"signal_{i + j:05d}.npy", signal * (args.gain or 1.0))
        return f"wrote {count} signals to {args.out}"


def test_a_domain_registered_from_outside_trains_both_stages_and_samples(tmp_path):
    domains.register(SignalDomain(), replace=True)
    try:
        _train_and_sample_the_toy_domain(tmp_path)
    finally:
        domains.unregister("signal-1d")     # later configs of this process must not carry its section


def _train_and_sample_the_toy_domain(tmp_path):
    assert "signal-1d" in domains.names()
    t = np.linspace(0, 2 * np.pi, 64, dtype=np.float32)
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "signals.npy", np.stack([np.sin(t * (1 + k % 3) + k) for k in range(12)]).astype(np.float32))
    cfg = OmegaConf.to_container(load_config("image-tiny", TINY_IMAGE))
    cfg["domain"] = "signal-1d"
    (tmp_path / "signal.yaml").write_text(OmegaConf.to_yaml(cfg))
    common = [str(tmp_path / "signal.yaml"), f"data.dir={data}", "--no-progress"]
    assert main(["train", "vae", *common, f"run_dir={tmp_path / 'vae'}", "train.steps=3",
                 "train.batch_size=4"]) == 0
    assert main(["train", "ldm", *common, f"vae={tmp_path / 'vae'}", f"run_dir={tmp_path / 'ldm'}",
                 "train.steps=3", "train.batch_size=4", "ldm.ema_after=1"]) == 0
    assert main(["sample", str(tmp_path / "ldm"), "--num", "3", "--steps", "2", "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--gain", "2"]) == 0     # the domain's own option
    signals = [np.load(p) for p in sorted((tmp_path / "out").glob("signal_*.npy"))]
    assert len(signals) == 3 and all(s.shape == (64,) and np.isfinite(s).all() for s in signals)
    assert "signal:\n  length: 64" in (tmp_path / "ldm" / "config.yaml").read_text()
    assert "signal" not in load_config("image-tiny")          # other domains' configs do not carry it
    with pytest.raises(ConfigError, match="signal.length"):   # the domain validates its own section
        load_config(str(tmp_path / "signal.yaml"), ["signal.length=3"])
    assert (tmp_path / "ldm" / "latent-cache" / "latents.npy").is_file()


def test_unknown_domain_names_the_known_ones(tmp_path, capsys):
    cfg = OmegaConf.to_container(load_config("image-tiny"))
    cfg["domain"] = "audio"
    (tmp_path / "a.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert main(["info", str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unknown domain 'audio'" in err and "image" in err and "occupancy" in err


def _state_dict_digest(module) -> str:
    import hashlib
    return hashlib.sha256("\n".join(f"{n}:{tuple(t.shape)}" for n, t in sorted(module.state_dict().items()))
                          .encode()).hexdigest()[:16]


def test_state_dict_keys_are_those_of_the_release_before_the_layout_change():
    """tests/data/state_dict_keys.json was written by ddmi at a5d973d (before the layout change;
    the entry of image-demo, a later preset, when it was added):
    every preset's autoencoder, discriminator and (CPU presets) diffusion model has the same keys
    and shapes, so existing run folders and checkpoints load unchanged."""
    import json

    from ddmi.config import list_presets
    from ddmi.models import build_autoencoder, build_diffusion, build_discriminator
    want = json.loads((Path(__file__).parent / "data" / "state_dict_keys.json").read_text())
    assert set(want) == set(list_presets())
    for preset, digests in want.items():
        cfg = load_config(preset)
        with torch.device("meta"):
            ae = build_autoencoder(cfg)
            got = {"autoencoder": _state_dict_digest(ae)}
            if cfg.gan.enabled:
                got["discriminator"] = _state_dict_digest(build_discriminator(cfg))
        if "diffusion" in digests:
            got["diffusion"] = _state_dict_digest(build_diffusion(cfg, ae.latent_shape))
        assert got == digests, preset
