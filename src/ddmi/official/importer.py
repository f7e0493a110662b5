"""``ddmi import-official``: an official DDMI checkpoint as a normal ddmi run folder.

Steps (nothing is written before every check has passed):

1. :func:`~ddmi.official.checkpoint_file.read_official_file` reads the file without running code;
2. :func:`recognise` tells stage 1 (``model-*.pt``) from stage 2 (``ldm-*.pt``) by the top-level
   keys and the domain by the sections (fixtures README 2.1/2.2);
3. :func:`import_config`: the preset + the domain's :meth:`~ddmi.domains.base.Domain.official_config`
   (+ the denoiser's ``official_ldm_config`` for stage 2). Architecture sizes that the file's shapes
   contradict are an error unless ``use_file_sizes``;
4. the domain hooks map every key (:func:`map_autoencoder`, :func:`map_diffusion`); unused official
   keys, unfilled ddmi keys and shape mismatches are listed by name and stop the import unless
   ``allow_mismatch``;
5. :func:`write_run` writes the run folder through a temporary folder and a rename.

Run folder written (layout of :mod:`ddmi.checkpoint`)::

    RUN/config.yaml, RUN/run.yaml                stage vae | ldm
    RUN/official-import.yaml                     source file, sha256, official step, args, what was skipped
    RUN/checkpoints/step-00000000/               model.safetensors (+ ema.safetensors), state.pt, COMPLETE
    RUN/vae/                                     (stage 2) config.yaml, run.yaml, model.safetensors, SOURCE

The domain is reached only through :func:`ddmi.domains.get`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from ddmi import __version__, domains
from ddmi import checkpoint as ckpt
from ddmi.config import load_config, parse_overrides
from ddmi.diffusion import LatentDiffusion
from ddmi.errors import CheckpointError, ConfigError
from ddmi.models import build_diffusion
from ddmi.official.checkpoint_file import read_official_file

#: top-level entries that are training state, not model weights (README 2.1/2.2): not imported
TRAINING_STATE = ("opt", "scaler", "opt_sched", "sn", "opt_d", "criterion_2d", "criterion", "dae_opt")
#: top-level entries that are counters or the run's arguments
BOOKKEEPING = ("step", "current_iters", "args")
RECORD = "official-import.yaml"
#: config keys that are architecture sizes (the domain's own section: its int / int-list keys)
ARCHITECTURE = ("data.resolution", "vae.", "mlp.", "ldm.unet.")


@dataclass
class OfficialFile:
    """What an official checkpoint holds, recognised."""

    path: Path
    stage: str                                       # "vae" (model-*.pt) | "ldm" (ldm-*.pt)
    domain: str
    sections: dict[str, dict[str, torch.Tensor]]     # the stage-1 modules: model/vaemodel, mlp, pointnet
    diffusion: dict[str, torch.Tensor] | None = None  # the online DDPM
    ema: dict[str, torch.Tensor] | None = None        # ema_pytorch.EMA state
    args: dict | None = None                          # the official argparse Namespace, as a dict
    step: Any = None
    current_iters: Any = None
    training_state: list[str] = field(default_factory=list)   # non-empty entries not imported


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def recognise(top: dict, path: Path) -> OfficialFile:
    """Stage and domain of an official checkpoint's top-level dict ``top``.

    Stage 2 has ``diffusion`` and ``ema``; stage 1 has neither. Domain: a ``pointnet`` section whose
    first layer ``fc_pos.weight`` (hidden, D) reads D = 3 (xyz: occupancy) or 6 (xyz + rgb: NeRF);
    else a TimeSformer VAE (``xy_token``, ``xt_token``, ``yt_token``: video) or the conv VAE
    (``encoder.conv_in.weight``: image; stored as ``model`` in the image stage-1 file)."""
    keys = list(top)
    vae_key = "vaemodel" if "vaemodel" in top else "model" if "model" in top else None
    if vae_key is None or "mlp" not in top:
        raise CheckpointError(f"{path} is not an official DDMI checkpoint "
                              f"(top-level keys: {', '.join(map(str, keys[:12]))})")
    known = {"model", "vaemodel", "mlp", "pointnet", "diffusion", "ema", *TRAINING_STATE, *BOOKKEEPING}
    other = [str(k) for k in keys if k not in known]
    if other:
        raise CheckpointError(f"{path} has top-level entries no official DDMI checkpoint has: {', '.join(other)}")
    sections = {k: top[k] for k in ("model", "vaemodel", "mlp", "pointnet") if k in top}
    for name, sd in sections.items():
        if not _is_state_dict(sd):
            raise CheckpointError(f"{path}: entry '{name}' is not a state dict of tensors")
    stage = "ldm" if "diffusion" in top or "ema" in top else "vae"
    if stage == "ldm":
        for name in ("diffusion", "ema"):
            if not _is_state_dict(top.get(name)):
                raise CheckpointError(f"{path}: a stage-2 checkpoint needs a '{name}' state dict")
    vae = sections[vae_key]
    if "pointnet" in sections:
        w = sections["pointnet"].get("fc_pos.weight")
        width = w.shape[1] if w is not None and w.dim() == 2 else None
        domain = {3: "occupancy", 6: "nerf"}.get(width)
        if domain is None:
            raise CheckpointError(f"{path}: pointnet.fc_pos.weight has input width {width}; "
                                  "official files have 3 (occupancy) or 6 (NeRF)")
    elif all(k in vae for k in ("xy_token", "xt_token", "yt_token")):
        domain = "video"
    elif "encoder.conv_in.weight" in vae:
        domain = "image"
    else:
        raise CheckpointError(f"{path}: the '{vae_key}' section is neither the image, 3-D nor video VAE")
    args = top.get("args")
    return OfficialFile(path=path, stage=stage, domain=domain, sections=sections,
                        diffusion=top.get("diffusion"), ema=top.get("ema"),
                        args=args if isinstance(args, dict) else None,
                        step=top.get("step"), current_iters=top.get("current_iters"),
                        training_state=[k for k in TRAINING_STATE if top.get(k) is not None])


# ------------------------------------------------------------------------------------------
# configuration


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _is_size(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def is_architecture_key(key: str, value: Any, domain_section: str | None) -> bool:
    """Whether override ``key`` is an architecture size (vs. a compatibility switch or a setting)."""
    if key.startswith(ARCHITECTURE):
        return True
    return domain_section is not None and key.startswith(f"{domain_section}.") and _is_size(value)


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


@dataclass
class ImportConfig:
    cfg: DictConfig
    sizes_from_file: list[str]        # "key: preset X -> file Y"
    settings: dict[str, Any]          # every other override (compatibility switches, sampler, EMA)


def _ema_model(ema: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("ema_model."):]: v for k, v in ema.items() if k.startswith("ema_model.")}


def import_config(off: OfficialFile, preset: str, *, official: dict | None = None,
                  use_file_sizes: bool = False, out: Path | None = None,
                  overrides: list[str] | None = None) -> ImportConfig:
    """The ddmi config of the imported run: ``preset`` + the overrides under which ddmi computes
    the official functions. ``official``: the official YAML as a dict (default: the file's
    ``args``). Architecture sizes of the preset that the file contradicts are a
    :class:`CheckpointError` listing them, unless ``use_file_sizes``."""
    base = load_config(preset, parse_overrides(list(overrides or [])))
    if base.domain != off.domain:
        raise CheckpointError(f"{off.path} is an official {off.domain} checkpoint, but preset '{preset}' "
                              f"is for the {base.domain} domain")
    domain = domains.get(off.domain)
    official = official if official is not None else off.args
    found = domain.official_config(off.sections, base, official)
    if off.stage == "ldm":   # the denoiser's sizes are checked against the latent of the imported VAE
        from ddmi.official.denoiser import official_ldm_config
        with_vae = _load(_merge(OmegaConf.to_container(base, resolve=True), found), off.path)
        found = _merge(found, official_ldm_config(_ema_model(off.ema), with_vae, official))
    flat = _flatten(found)
    differing, settings = [], {}
    for key, value in flat.items():
        try:
            current = OmegaConf.select(base, key, throw_on_missing=False)
        except Exception:  # noqa: BLE001 - a key the schema lacks is reported by load_config below
            current = None
        current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        if is_architecture_key(key, value, domain.section):
            if _normalise(current) != _normalise(value):
                differing.append(f"{key}: preset {current} -> file {value}")
        else:
            settings[key] = value
    if differing and not use_file_sizes:
        raise CheckpointError(
            f"{off.path} does not have the architecture of preset '{preset}' ({len(differing)} sizes differ: "
            f"{'; '.join(differing)}); pass --use-file-sizes to take the file's sizes, or choose the matching preset")
    tree = _merge(OmegaConf.to_container(base, resolve=True), found)
    tree.update(vae_run=None, init=None, run_dir=None if out is None else str(out))
    return ImportConfig(cfg=_load(tree, off.path), sizes_from_file=differing, settings=settings)


def _load(tree: dict, path: Path) -> DictConfig:
    try:
        return load_config(tree)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the imported configuration is invalid: {exc}") from None


# ------------------------------------------------------------------------------------------
# key mapping


@dataclass
class Mapping:
    """The result of mapping one official model onto one ddmi module."""

    what: str
    state: dict[str, torch.Tensor]
    unused: list[str]            # official keys with no place in ddmi
    missing: list[str]           # ddmi keys the mapping did not fill
    unexpected: list[str]        # keys the mapping produced that ddmi does not have
    shapes: list[str]            # "key: official (..) vs ddmi (..)"

    @property
    def problems(self) -> list[str]:
        parts = []
        for label, names in (("official keys with no place in ddmi", self.unused),
                             ("ddmi keys not filled", self.missing),
                             ("mapped keys ddmi does not have", self.unexpected),
                             ("shape mismatches", self.shapes)):
            if names:
                parts.append(f"{len(names)} {label}: {', '.join(names)}")
        return parts


def compare(what: str, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], unused: list[str]) -> Mapping:
    """Check a mapped ``state`` against a module's own state dict ``own`` (names and shapes)."""
    return Mapping(what=what, state=state, unused=sorted(unused),
                   missing=[k for k in own if k not in state],
                   unexpected=sorted(k for k in state if k not in own),
                   shapes=[f"{k}: official {tuple(state[k].shape)} vs ddmi {tuple(own[k].shape)}"
                           for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)])


def map_autoencoder(off: OfficialFile, cfg: DictConfig, *, device: str | torch.device = "cpu"):
    """``(ae, Mapping)``: ddmi's autoencoder for ``cfg`` built on ``device`` (``"meta"``: shapes
    only) and the official stage-1 sections mapped onto it by the domain."""
    domain = domains.get(cfg.domain)
    with torch.device(device):
        ae = domain.build_autoencoder(cfg)
    state, unused = domain.official_autoencoder_state(off.sections, cfg)
    return ae, compare("autoencoder", ae.state_dict(), state, list(unused))


def map_diffusion(off: OfficialFile, cfg: DictConfig, latent_shape: tuple[int, ...], *,
                  device: str | torch.device = "cpu"):
    """``(diffusion, online Mapping, EMA Mapping, ema_step)``: the online ``diffusion`` section and
    the EMA's ``ema_model.*`` mapped onto ddmi's diffusion model; ``ema.online_model.*`` must be
    the online weights (the official EMA wraps the trained object: the same tensors)."""
    domain = domains.get(cfg.domain)
    if torch.device(device).type == "meta":   # the schedule and its checks stay on the CPU
        with torch.device("meta"):
            net = domain.build_denoiser(cfg, latent_shape)
        diffusion = LatentDiffusion(net, latent_channels=latent_shape[0], mixed_prediction=cfg.ldm.mixed_prediction,
                                    mixed_init=cfg.ldm.mixed_init)
    else:
        with torch.device(device):
            diffusion = build_diffusion(cfg, latent_shape)
    own = diffusion.state_dict()
    online, unused = domain.official_denoiser_state(off.diffusion, cfg)
    online_map = compare("diffusion (online)", own, online, [f"diffusion.{k}" for k in unused])
    ema = off.ema
    other = [f"ema.{k}" for k in ema
             if not k.startswith(("ema_model.", "online_model.")) and k not in ("initted", "step")]
    copy = {k[len("online_model."):]: v for k, v in ema.items() if k.startswith("online_model.")}
    if copy:
        differs = sorted(set(copy) ^ set(off.diffusion)) or [
            k for k, v in copy.items() if v.device.type != "meta" and not torch.equal(v, off.diffusion[k])]
        if differs:
            other += [f"ema.online_model.{k} (differs from diffusion.{k})" for k in differs]
    if "initted" in ema and ema["initted"].device.type != "meta" and float(ema["initted"].reshape(-1)[0]) != 1.0:
        raise CheckpointError(f"{off.path}: the official EMA was never initialised (ema.initted = 0)")
    ema_state, ema_unused = domain.official_denoiser_state(_ema_model(ema), cfg)
    ema_map = compare("EMA (ema.ema_model)", own, ema_state, [f"ema.ema_model.{k}" for k in ema_unused] + other)
    step = 0
    if "step" in ema and ema["step"].device.type != "meta":
        step = int(ema["step"].reshape(-1)[0])
    return diffusion, online_map, ema_map, step


def _fill(module: torch.nn.Module, m: Mapping) -> None:
    """Load ``m.state`` into ``module`` (with ``--allow-mismatch``, what does not fit keeps the fresh
    initialisation)."""
    own = module.state_dict()
    fitting = {k: v for k, v in m.state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict({**own, **fitting}, strict=True)


# ------------------------------------------------------------------------------------------
# writing


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fresh_training_state(params: list[torch.nn.Parameter], tc) -> dict:
    """The training state of step 0 (a fresh AdamW of ``tc``): re-running ``ddmi train`` on the
    imported folder fine-tunes from the official weights."""
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    return {"step": 0, "optimizer": opt.state_dict(), "extra": {}}


def check_destination(out: Path, overwrite: bool) -> None:
    """``out`` must not exist, or (``overwrite``) be an earlier import or an empty folder: a user's
    own run or files are never replaced."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise CheckpointError(f"{out} exists; pass --overwrite to replace an earlier import, or choose another --out")
    if out.is_symlink() or not out.is_dir() or not ((out / RECORD).is_file() or not any(out.iterdir())):
        raise CheckpointError(f"{out} exists and is not a folder written by `ddmi import-official`: "
                              "it is never replaced (choose another --out)")


def write_run(out: Path, cfg: DictConfig, stage: str, *, vae_weights: dict[str, torch.Tensor],
              vae_state: dict | None, record: dict, ldm_weights: dict[str, dict[str, torch.Tensor]] | None = None,
              ldm_state: dict | None = None, overwrite: bool = False) -> None:
    """Write the run folder ``out`` (layout: module docstring) into a temporary folder beside it,
    then rename it into place; an earlier import there is replaced only with ``overwrite``."""
    from ddmi.training.ldm_task import VAE_COPY_MARKER, check_vae_destination
    out = Path(out)
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.import-"))
    try:
        ckpt.init_run_dir(tmp, cfg, stage)
        if stage == "vae":
            ckpt.save_checkpoint(tmp, 0, weights={"model": vae_weights}, state=vae_state or {"step": 0})
        else:
            vae = tmp / "vae"
            ckpt.init_run_dir(vae, cfg, "vae")
            from safetensors.torch import save_file
            save_file(vae_weights, str(vae / "model.safetensors"), metadata={"ddmi_version": __version__})
            (vae / VAE_COPY_MARKER).write_text(f"{record['source']} official sha256:{record['sha256']}\n")
            check_vae_destination(tmp)
            ckpt.save_checkpoint(tmp, 0, weights=ldm_weights, state=ldm_state)
        ckpt.atomic_write_text(tmp / RECORD, yaml.safe_dump(record, sort_keys=False))
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _yaml_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_yaml_safe(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def import_official(path: str | Path, preset: str, out: str | Path, *, official_yaml: str | Path | None = None,
                    use_file_sizes: bool = False, allow_mismatch: bool = False, overwrite: bool = False,
                    overrides: list[str] | None = None, log: Callable[[str], None] = print) -> Path:
    """Import the official checkpoint ``path`` as the run folder ``out`` (see the module docstring).
    Returns ``out``."""
    path, out = Path(path), Path(out)
    check_destination(out, overwrite)
    official = None
    if official_yaml is not None:
        try:
            official = yaml.safe_load(Path(official_yaml).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CheckpointError(f"{official_yaml}: cannot read the official YAML "
                                  f"({str(exc).splitlines()[0]})") from None
        if not isinstance(official, dict):
            raise CheckpointError(f"{official_yaml} is not a YAML mapping (an official config file)")
    off = recognise(read_official_file(path), path)
    ic = import_config(off, preset, official=official, use_file_sizes=use_file_sizes, out=out,
                       overrides=overrides)
    cfg = ic.cfg
    ae, ae_map = map_autoencoder(off, cfg)
    maps = [ae_map]
    if off.stage == "ldm":
        diffusion, online_map, ema_map, ema_step = map_diffusion(off, cfg, tuple(ae.latent_shape))
        maps += [online_map, ema_map]
    problems = [f"{m.what}: {p}" for m in maps for p in m.problems]
    if problems and not allow_mismatch:
        raise CheckpointError(f"{path} does not map onto ddmi's {cfg.domain} model ({'; '.join(problems)}); "
                              "nothing was written (--allow-mismatch imports anyway, keeping ddmi's fresh "
                              "initialisation for what does not fit)")
    for p in problems:
        log(f"warning (--allow-mismatch): {p}")
    _fill(ae, ae_map)
    record = {
        "source": str(path.resolve()), "sha256": sha256_of(path), "bytes": path.stat().st_size,
        "stage": off.stage, "domain": off.domain, "preset": preset, "overrides": list(overrides or []),
        "ddmi_version": __version__,
        "official_step": _yaml_safe(off.step), "official_current_iters": _yaml_safe(off.current_iters),
        "official_yaml": None if official_yaml is None else str(Path(official_yaml).resolve()),
        "sizes_from_file": ic.sizes_from_file, "settings": _yaml_safe(ic.settings),
        "not_imported_training_state": off.training_state,
        "mismatches_allowed": problems,
        "official_args": _yaml_safe(off.args),
    }
    vae_weights = ckpt.state_dict_for_saving(ae)
    if off.stage == "vae":
        state = None if cfg.gan.enabled else _fresh_training_state(
            [p for p in ae.parameters() if p.requires_grad], cfg.train)
        write_run(out, cfg, "vae", vae_weights=vae_weights, vae_state=state, record=record, overwrite=overwrite)
        summary = f"{len(vae_weights)} autoencoder tensors"
    else:
        from ddmi.training.ema import EMA
        _fill(diffusion, online_map)
        ema = EMA(diffusion, beta=cfg.ldm.ema_decay, update_every=cfg.ldm.ema_every,
                  update_after_step=cfg.ldm.ema_after)
        _fill(ema.ema_model, ema_map)
        ema.step.fill_(ema_step)
        record["official_ema_step"] = ema_step
        weights = {"model": ckpt.state_dict_for_saving(diffusion), "ema": ckpt.state_dict_for_saving(ema)}
        state = _fresh_training_state([p for p in diffusion.parameters() if p.requires_grad], cfg.ldm_train)
        write_run(out, cfg, "ldm", vae_weights=vae_weights, vae_state=None, record=record,
                  ldm_weights=weights, ldm_state=state, overwrite=overwrite)
        summary = f"{len(vae_weights)} autoencoder tensors, diffusion + EMA {len(weights['model'])} tensors each"
    if ic.sizes_from_file:
        log(f"sizes taken from the file: {'; '.join(ic.sizes_from_file)}")
    if off.training_state:
        log(f"not imported (training state, not weights): {', '.join(off.training_state)}")
    log(f"imported {path} (official {off.domain} {'stage 2' if off.stage == 'ldm' else 'stage 1'}, "
        f"step {off.step}) into {out}: {summary}")
    return out
