"""``ddmi synth KIND OUT``: a synthetic dataset of a domain (its ``synthesize``)."""

from __future__ import annotations

from ddmi import domains
from ddmi.commands.options import log


def domain_of(kind: str) -> str:
    """The domain behind a synth kind (``shapes`` is the occupancy domain's)."""
    for name in domains.names():
        d = domains.get(name)
        if kind in (name, getattr(d, "synth_name", None)):
            return name
    return kind


def run(args) -> int:
    paths = domains.get(domain_of(args.kind)).synthesize(args.out_dir, args)
    log(f"wrote {len(paths)} {args.kind} files under {args.out_dir}")
    return 0
