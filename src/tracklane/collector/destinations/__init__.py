"""Destination types the collector routes to, by the ``type`` used in the config file.

Adding a type: subclass :class:`~tracklane.collector.destinations.base.Destination`, give it
a ``type_name``, its ``settings`` and ``deliver``, and list it in ``_BUILT_IN`` (or call
:func:`register`). Modules load lazily, so a type's dependencies are imported only when a
config uses it.
"""

from __future__ import annotations

import importlib
from typing import Dict, List, Type

from tracklane.collector.destinations.base import (
    Destination,
    Envelope,
    Failure,
    Outcome,
    Setting,
    SettingError,
)

__all__ = [
    "Destination",
    "Envelope",
    "Failure",
    "Outcome",
    "Setting",
    "SettingError",
    "destination_class",
    "register",
    "type_names",
]

# type name -> "module:Class"
_BUILT_IN: Dict[str, str] = {
    "webhook": "tracklane.collector.destinations.webhook:WebhookDestination",
    "relay": "tracklane.collector.destinations.relay:RelayDestination",
    "postgres": "tracklane.collector.destinations.postgres:WarehouseDestination",
}
_registered: Dict[str, Type[Destination]] = {}


def register(cls: Type[Destination]) -> Type[Destination]:
    """Make ``cls`` available as ``type = cls.type_name`` (usable as a class decorator)."""
    if not cls.type_name:
        raise ValueError(f"{cls.__name__} has no type_name")
    _registered[cls.type_name] = cls
    return cls


def type_names() -> List[str]:
    """Every known destination type, sorted."""
    return sorted({*_BUILT_IN, *_registered})


def destination_class(type_name: str) -> Type[Destination]:
    """The class for ``type_name``; raises KeyError when the type is unknown."""
    cls = _registered.get(type_name)
    if cls is not None:
        return cls
    home = _BUILT_IN[type_name]
    module_name, _, class_name = home.partition(":")
    loaded: Type[Destination] = getattr(importlib.import_module(module_name), class_name)
    _registered[type_name] = loaded
    return loaded
