"""Reading an official configuration (the YAML as a dict, an omegaconf ``DictConfig`` or the
``argparse.Namespace`` of an official ``args`` entry)."""

from __future__ import annotations

from collections.abc import Mapping


def official_entry(official, name: str):
    """``official[name]``, searched one level down too (a YAML may nest ``ddconfig`` or
    ``unetconfig`` under ``model``); attribute access works for an ``argparse.Namespace``; None
    if absent."""
    if official is None:
        return None
    if not isinstance(official, Mapping):
        official = vars(official)
    if name in official:
        return official[name]
    for value in official.values():
        if isinstance(value, Mapping) and name in value:
            return value[name]
    return None
