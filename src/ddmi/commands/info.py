"""``ddmi info [PRESET]``: a preset's resolved config and parameter counts, or the presets."""

from __future__ import annotations

from omegaconf import OmegaConf

from ddmi.config import domain_view, load_config
from ddmi.models import parameter_counts
from ddmi.preset_files import preset_table


def run(args) -> int:
    if args.list or not args.config:
        print(preset_table())
        return 0
    cfg = load_config(args.config, args.overrides)
    if not args.quiet:
        print(OmegaConf.to_yaml(domain_view(cfg)))   # only this domain's own section
    for name, count in parameter_counts(cfg).items():
        print(f"{name}: {count}")
    return 0
