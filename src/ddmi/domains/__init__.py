"""The domain registry: ``get(name)`` -> the :class:`~ddmi.domains.base.Domain` of that name.

The four built-in domains (image, occupancy, nerf, video) are imported on first use. Other
packages add domains through the ``ddmi.domains`` entry-point group (``name = "module:Class"``),
or at run time with :func:`register`; a registered domain is reached by every command exactly as
a built-in one is (see ``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ddmi.domains.base import Domain
from ddmi.errors import ConfigError

ENTRY_POINT_GROUP = "ddmi.domains"
BUILTIN = {"image": "ddmi.domains.image:ImageDomain", "occupancy": "ddmi.domains.occupancy:OccupancyDomain",
           "nerf": "ddmi.domains.nerf:NeRFDomain", "video": "ddmi.domains.video:VideoDomain"}
_registered: dict[str, Domain] = {}


def register(domain: Domain, *, replace: bool = False) -> Domain:
    """Make ``domain`` available under ``domain.name`` (an instance of a Domain subclass)."""
    if not isinstance(domain, Domain) or not domain.name:
        raise TypeError("register() takes a Domain instance with a name")
    if domain.name in _registered and not replace and _registered[domain.name] is not domain:
        raise ValueError(f"a domain named '{domain.name}' is already registered")
    _registered[domain.name] = domain
    return domain


def unregister(name: str) -> None:
    """Forget a domain registered with :func:`register` (a built-in one is loaded again on use)."""
    _registered.pop(name, None)


def _load(target: str) -> Domain:
    module, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    return obj() if isinstance(obj, type) else obj


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every domain name: built-in, registered and installed as a plug-in."""
    return sorted({*BUILTIN, *_registered, *_plugins()})


def get(name: str) -> Domain:
    """The domain ``name``; a ConfigError listing the known ones if there is none."""
    if name not in _registered:
        if name in BUILTIN:
            register(_load(BUILTIN[name]))
        elif name in (plugins := _plugins()):
            domain = plugins[name].load()
            register(domain() if isinstance(domain, type) else domain)
        else:
            raise ConfigError(f"unknown domain '{name}'; known: {', '.join(names())}")
    return _registered[name]
