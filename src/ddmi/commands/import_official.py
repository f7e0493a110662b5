"""``ddmi import-official CKPT --preset P --out RUN_DIR``: an official DDMI checkpoint as a ddmi run
folder (docs/official-checkpoints.md)."""

from __future__ import annotations

from ddmi.commands.options import log, torch_threads
from ddmi.official.importer import import_official


def run(args) -> int:
    torch_threads()
    import_official(args.checkpoint, args.preset, args.out, official_yaml=args.official_config,
                    use_file_sizes=args.use_file_sizes, allow_mismatch=args.allow_mismatch,
                    overwrite=args.overwrite, overrides=args.overrides, log=log)
    return 0
