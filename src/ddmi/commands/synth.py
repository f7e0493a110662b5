"""``ddmi synth KIND OUT``: a synthetic dataset of a domain (its ``synthesize``)."""

from __future__ import annotations

import json
from pathlib import Path

from ddmi import domains
from ddmi.commands.options import check_domain_options, check_out_folder, log
from ddmi.files import atomic_write_text

MANIFEST = ".ddmi-synth.json"    # the files `ddmi synth` wrote here: the only ones it ever deletes


def domain_of(kind: str) -> str:
    """The domain behind a synth kind (``shapes`` is the occupancy domain's)."""
    for name in domains.names():
        d = domains.get(name)
        if kind in (name, getattr(d, "synth_name", None)):
            return name
    return kind


def _previous(out: Path) -> list[Path]:
    try:
        return [out / p for p in json.loads((out / MANIFEST).read_text())["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def run(args) -> int:
    out = Path(args.out_dir)
    check_out_folder(out)
    domain = domains.get(domain_of(args.kind))
    check_domain_options(args, domain, "synth")
    before = _previous(out) if args.overwrite else []
    paths = [Path(p) for p in domain.synthesize(args.out_dir, args)]
    written = {p.resolve() for p in paths}
    stale = [p for p in before if p.resolve() not in written and p.is_file() and not p.is_symlink()]
    for p in stale:                # an earlier, larger dataset of ours: without them it is this one
        p.unlink()
    atomic_write_text(out / MANIFEST, json.dumps({"kind": args.kind, "files": sorted(
        str(p.resolve().relative_to(out.resolve())) for p in paths if p.resolve().is_relative_to(out.resolve()))}))
    log(f"wrote {len(paths)} {args.kind} files under {args.out_dir}"
        + (f" (removed {len(stale)} files of the earlier dataset there)" if stale else ""))
    return 0
