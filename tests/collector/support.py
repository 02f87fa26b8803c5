"""Constants and types shared by the collector tests."""

from __future__ import annotations

from typing import Any, Callable, Dict

KEYS = ("key-alpha", "key-beta")  # the write keys of the ``keyed_server`` fixture
Message = Dict[str, Any]
MakeMessage = Callable[..., Message]
