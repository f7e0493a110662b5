"""The preset YAML files shipped in ``ddmi/presets`` (read without importing torch, so that
``ddmi --help`` and ``ddmi info --list`` stay fast)."""

from __future__ import annotations

from importlib import resources


def list_presets() -> list[str]:
    folder = resources.files("ddmi") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """The preset's one-line description: the first line of its leading comment."""
    first = (resources.files("ddmi") / "presets" / f"{name}.yaml").read_text().splitlines()[0]
    return first.lstrip("#").strip().rstrip(".") if first.startswith("#") else ""


def preset_table() -> str:
    """``name  description`` lines of every preset."""
    names = list_presets()
    pad = max(map(len, names))
    return "\n".join(f"  {n:<{pad}}  {preset_description(n)}" for n in names)
