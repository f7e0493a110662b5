"""The Domain protocol: everything that knows what a pixel, a frame, a ray or an occupancy is.

Training, generation and the commands are domain-agnostic; they reach a domain only through
:func:`ddmi.domains.get` and the methods below. A domain imports only the layers under it
(``fields``, ``nn``, ``vae``, ``diffusion``, ``data``, ``render``, ``metrics``, ``losses``,
``files``, ``errors``) and never the layers that drive it (``training``, ``commands``, ``runs``,
``generate``): what it needs from them (latents to write, a function that generates more) is
passed in.

Shapes: ``z`` is a batch of latents ``(B, *ae.latent_shape)``; ``ae`` is the domain's
autoencoder (:meth:`Domain.build_autoencoder`): ``encode(x) -> DiagonalGaussian``,
``decode(z) -> Field``, ``latent_shape``, ``encoder_views(batch)``, ``random_inputs(g, n, ...)``,
``forward(batch, rand, **loss_kwargs) -> (loss, logs)``.

A third-party domain subclasses :class:`Domain` and registers an instance, either by calling
:func:`ddmi.domains.register` or through the ``ddmi.domains`` entry-point group of its package::

    [project.entry-points."ddmi.domains"]
    audio = "my_package.audio:AudioDomain"
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from ddmi.errors import ConfigError, DataError

Log = Callable[[str], None]
# ``generate(num) -> (batches, sampler, steps)``: this process's share of ``num`` latents sampled by
# the run's EMA denoiser, ``batches`` yielding ``(start, z)``
Generate = Callable[[int], tuple]


class Domain:
    """Defaults shared by the built-in domains; override what differs."""

    name: str = ""
    description: str = ""
    #: name of the domain's own config section (``cfg[section]``) and its dataclass schema
    section: str | None = None
    section_schema: type | None = None
    #: metrics ``ddmi eval`` knows for run folders of this domain, and the defaults per stage
    run_metrics: tuple[str, ...] = ()
    default_metrics: dict[str, tuple[str, ...]] = {}
    #: whether stage 1 can be fine-tuned adversarially (``gan.enabled``)
    adversarial: bool = False
    #: whether items are point clouds whose draws stage 2 may vary (``ldm.point_draws``)
    point_clouds: bool = False
    #: appended to "no training data: set data.dir=FOLDER"
    data_hint: str = ""

    # --- configuration -------------------------------------------------------------------
    def validate(self, cfg: DictConfig, check: Callable[[bool, str, str], None]) -> None:
        """Check the domain's own keys: ``check(ok, key, why)``."""

    # --- models ---------------------------------------------------------------------------
    def build_autoencoder(self, cfg: DictConfig) -> nn.Module:
        raise NotImplementedError

    def build_denoiser(self, cfg: DictConfig, latent_shape: tuple[int, ...]) -> nn.Module:
        """The stage-2 denoiser of latents ``latent_shape``: an ADM UNet over the latent grid."""
        from ddmi.nn.unet import UNet
        return UNet(**unet_arguments(cfg, latent_shape))

    def build_discriminator(self, cfg: DictConfig) -> nn.Module:
        """The critic of adversarial fine-tuning: ``disc(x, cond) -> (logits list, features)``."""
        raise NotImplementedError(f"the {self.name} domain has no adversarial fine-tuning")

    # --- stage 1 --------------------------------------------------------------------------
    def training_dataset(self, cfg: DictConfig, log: Log) -> Dataset:
        """Stage-1 training items (a positional dataset may take ``(index, position)`` keys)."""
        raise NotImplementedError

    def preview_items(self, cfg: DictConfig, train: Dataset) -> Any:
        """A few held-out items for the reconstruction previews and probes (a tensor, or
        anything :meth:`write_preview` and :meth:`probe` understand)."""
        return torch.stack([train[i] for i in range(min(8, len(train)))])

    def uses_perceptual_loss(self, cfg: DictConfig) -> bool:
        return False

    def start_notice(self, cfg: DictConfig) -> str | None:
        """One line printed when stage 1 starts (a known limitation of a setting), or None."""
        return None

    def write_preview(self, ae: nn.Module, preview: Any, path: Path) -> list[Path]:
        """A picture of the reconstructions of ``preview`` (stage-1 periodic samples)."""
        return []

    def probe(self, ae: nn.Module, preview: Any) -> dict[str, float]:
        """Cheap held-out metrics of the reconstructions of ``preview`` (seconds on a CPU)."""
        return {}

    # --- stage 2 --------------------------------------------------------------------------
    def encoder_dataset(self, cfg: DictConfig) -> Dataset:
        """The items whose latents stage 2 learns (one fixed draw per item at index ``i``)."""
        raise NotImplementedError

    def write_latent_preview(self, ae: nn.Module, z: torch.Tensor, path: Path) -> list[Path]:
        """A picture of generated latents ``z`` (stage-2 periodic samples)."""
        return []

    # --- Python rendering -----------------------------------------------------------------
    def render(self, ae: nn.Module, z: torch.Tensor, **options) -> Any:
        """Latents ``z`` -> the domain's rendered output (:meth:`ddmi.DDMIPipeline.render`).
        Default: the autoencoder's own ``render(z, **options)`` (images: ``resolution=``;
        videos: ``resolution=``, ``frames=``), values in [-1, 1]."""
        if not hasattr(ae, "render"):
            raise ConfigError(f"the {self.name} domain renders nothing from Python; query the field of decode(z)")
        return ae.render(z, **options)

    # --- commands -------------------------------------------------------------------------
    #: the options of ``ddmi synth`` / ``sample`` / ``reconstruct`` that this domain reads beyond
    #: the common ones: ``{command: {name: argparse keywords}}`` (e.g. ``{"sample": {"frames":
    #: {"type": int, "action": "append", "help": "..."}}}``). The parser offers the union over
    #: all domains (an option's default is None, or False for a flag); an option given on a run
    #: of a domain that does not read it is an error.
    command_options: dict[str, dict[str, dict]] = {}

    def sample_targets(self, args: argparse.Namespace, ae: nn.Module, count: int) -> list[Path]:
        """Every file :meth:`write_samples` would write for ``count`` samples (checked before any
        compute)."""
        return []

    def sample_groups(self, args: argparse.Namespace, ae: nn.Module, count: int) -> dict[str, list[Path]]:
        """The measurable files among :meth:`sample_targets`, by group (e.g. one group per
        resolution; never grids or sheets): ``ddmi sample`` records them in
        ``OUT/ddmi-samples.json`` and ``ddmi eval OUT --ref REF`` measures each group separately.
        Empty: the folder is measured as a whole."""
        return {}

    def write_samples(self, args: argparse.Namespace, ae: nn.Module, batches: Iterable[tuple[int, torch.Tensor]],
                      count: int, shard: Any, log: Log) -> str:
        """Write ``ddmi sample``'s files: ``batches`` yields ``(start, z)`` for this process's share
        of the ``count`` samples (``shard``: :class:`ddmi.devices.Shard`, which gathers what the
        main process writes alone, such as grids). Returns a one-line summary."""
        raise NotImplementedError

    #: file suffixes ``ddmi reconstruct`` reads (a folder among its inputs stands for these files in it)
    input_suffixes: tuple[str, ...] = ()

    def reconstruct_inputs(self, paths: list[Path]) -> list[Path]:
        """``ddmi reconstruct``'s inputs with folders expanded to the files of
        :attr:`input_suffixes` in them (recursively, sorted)."""
        out = []
        for p in map(Path, paths):
            if p.is_dir():
                found = sorted(f for f in p.rglob("*") if f.suffix.lower() in self.input_suffixes and f.is_file()
                               and not any(part.startswith(".") for part in f.relative_to(p).parts))
                if not found:
                    raise DataError(f"{p} holds no {self.name} inputs ({', '.join(self.input_suffixes)})")
                out += found
            else:
                out.append(p)
        return out

    def reconstruct_targets(self, args: argparse.Namespace, ae: nn.Module) -> list[Path]:
        """Every file :meth:`reconstruct` would write (checked before any compute)."""
        return []

    def reconstruct(self, args: argparse.Namespace, ae: nn.Module, log: Log) -> int:
        """``ddmi reconstruct``: encode ``args.inputs`` and write what they decode to."""
        raise NotImplementedError(f"reconstruct is not available for the {self.name} domain")

    def evaluate_run(self, run_dir: Path, cfg: DictConfig, stage: str, ae: nn.Module, generate: Generate, *,
                     metrics: list[str], num: int | None, resolution: int | None, batch_size: int,
                     ref: str | None, seed: int, shard: Any, log: Log, **options) -> dict[str, Any]:
        """Figures of ``metrics`` for a run folder; ``generate(num) -> (batches, sampler, steps)``
        draws this process's share of ``num`` samples of an LDM run."""
        raise NotImplementedError(f"`ddmi eval` of {self.name} run folders is not available")

    # --- official checkpoints (``ddmi import-official``; docs/official-checkpoints.md) ------------
    def official_config(self, sections: dict[str, dict[str, torch.Tensor]], cfg: DictConfig,
                        official: dict | None = None) -> dict:
        """Config overrides (a nested dict of ddmi keys) under which :meth:`build_autoencoder`
        computes the official function of the official stage-1 ``sections`` (``{"vaemodel" or
        "model", "mlp", "pointnet": state dict}``): architecture sizes inferred from the tensor
        shapes (or taken from ``official``, the official YAML as a dict, when given), and the
        official-compatibility switches of this domain's config section turned on. A shape that
        contradicts ``official`` is a :class:`~ddmi.errors.CheckpointError`."""
        raise NotImplementedError(f"official checkpoints of the {self.name} domain cannot be imported")

    def official_autoencoder_state(self, sections: dict[str, dict[str, torch.Tensor]],
                                   cfg: DictConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The official stage-1 ``sections`` as the state dict of ``build_autoencoder(cfg)``
        (``cfg`` carries :meth:`official_config`'s overrides): ``(state, unused)``, where
        ``unused`` names every official key (``"section.key"``) that has no place in ddmi."""
        raise NotImplementedError(f"official checkpoints of the {self.name} domain cannot be imported")

    def official_denoiser_state(self, diffusion: dict[str, torch.Tensor],
                                cfg: DictConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
        """An official ``DDPM`` state dict (``mixing_logit``, schedule buffers, ``model.*``) as the
        state dict of ddmi's diffusion model for ``cfg``: ``(state, unused)``."""
        from ddmi.official.denoiser import ddpm_state
        return ddpm_state(diffusion, cfg)

    def synthesize(self, out: Path, args: argparse.Namespace) -> list[Path]:
        """``ddmi synth NAME OUT``: a synthetic dataset this domain trains on."""
        raise NotImplementedError(f"no synthetic data for the {self.name} domain")


def unet_arguments(cfg: DictConfig, latent_shape: tuple[int, ...]) -> dict:
    """Constructor arguments of the ADM UNet of ``cfg.ldm.unet`` for latents ``latent_shape``."""
    u = cfg.ldm.unet
    c = latent_shape[0]
    return dict(in_channels=c, out_channels=c, model_channels=u.model_channels,
                channel_mult=tuple(u.channel_mult), num_res_blocks=u.num_res_blocks,
                attention_resolutions=tuple(u.attention_resolutions),
                num_head_channels=u.num_head_channels, dropout=u.dropout,
                norm_groups=min(32, u.model_channels))
