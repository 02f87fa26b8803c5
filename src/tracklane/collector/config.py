"""The collector's routing config file (TOML): sources, destinations and filters.

Read once at start by :func:`load_config`. Anything wrong (an unknown key, a missing field,
a bad value, a name used twice, a filter naming nothing) raises :class:`ConfigError` whose
message names the file and the key, e.g.
``tracklane.toml: destinations[1].url: must be an http:// or https:// URL, not 'ftp://x'``.
Python 3.11+ reads TOML with :mod:`tomllib`; older versions need ``tomli`` (in the
``collector`` extra).
"""

from __future__ import annotations

import fnmatch
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

from tracklane.collector.destinations import SettingError, destination_class, type_names
from tracklane.collector.destinations.base import Setting, check_settings, int_between
from tracklane.collector.destinations.base import positive_seconds as _seconds
from tracklane.messages import MESSAGE_TYPES

__all__ = [
    "ConfigError",
    "DestinationConfig",
    "FilterConfig",
    "RoutingConfig",
    "SourceConfig",
    "load_config",
    "parse_config",
]

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as _toml  # type: ignore[import-not-found,unused-ignore]

_TOP_LEVEL = ("sources", "destinations", "filters", "outbox")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,100}")
# Keys every destination takes besides its type's own settings.
_COMMON: Dict[str, Setting] = {
    "max_attempts": Setting(int_between(1, 1000), default=10),
    "backoff_base": Setting(_seconds, default=1.0),
    "backoff_cap": Setting(_seconds, default=300.0),
}
# [outbox]: how the PostgreSQL outbox shares work between collectors (docs/routing.md).
_OUTBOX: Dict[str, Setting] = {"lease_seconds": Setting(_seconds, default=30.0)}


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class SourceConfig:
    """A named source and the write keys that send as it."""

    name: str
    write_keys: Tuple[str, ...]


@dataclass(frozen=True)
class DestinationConfig:
    """A destination: its name (as used in ``integrations``), type and checked settings."""

    name: str
    type: str
    settings: Dict[str, Any]
    sources: Optional[FrozenSet[str]] = None  # None: every source
    max_attempts: int = 10
    backoff_base: float = 1.0
    backoff_cap: float = 300.0


@dataclass(frozen=True)
class FilterConfig:
    """Drops applied to one source's or one destination's messages before delivery."""

    source: Optional[str] = None
    destination: Optional[str] = None
    drop_events: Tuple[str, ...] = ()
    drop_types: FrozenSet[str] = frozenset()
    drop_properties: Tuple[str, ...] = ()
    _event_pattern: Optional[re.Pattern[str]] = field(default=None, repr=False, compare=False)

    def drops_event(self, message: Mapping[str, Any]) -> bool:
        """Whether this filter drops ``message`` (by type, or a track's event name)."""
        if message.get("type") in self.drop_types:
            return True
        if self._event_pattern is None or message.get("type") != "track":
            return False
        event = message.get("event")
        return isinstance(event, str) and self._event_pattern.fullmatch(event) is not None


@dataclass(frozen=True)
class RoutingConfig:
    """Everything the config file says, checked."""

    path: str = ""
    sources: Tuple[SourceConfig, ...] = ()
    destinations: Tuple[DestinationConfig, ...] = ()
    filters: Tuple[FilterConfig, ...] = ()
    lease_seconds: float = 30.0  # [outbox]: a claim's lease, renewed while its holder lives

    def write_keys(self) -> Tuple[str, ...]:
        """Every write key of every source."""
        return tuple(key for source in self.sources for key in source.write_keys)

    def source_of(self) -> Dict[str, str]:
        """A map from write key to source name."""
        return {key: source.name for source in self.sources for key in source.write_keys}


def load_config(path: Union[str, Path]) -> RoutingConfig:
    """Read and check the TOML file at ``path``; raises ConfigError."""
    shown = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(shown, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        table = _toml.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(shown, "", "not UTF-8 text") from None
    except _toml.TOMLDecodeError as exc:
        raise ConfigError(shown, "", f"not valid TOML: {exc}") from None
    return parse_config(table, shown)


def parse_config(table: Mapping[str, Any], path: str = "<config>") -> RoutingConfig:
    """Check an already-parsed config table; raises ConfigError naming ``path`` and the key."""
    for key in table:
        if key not in _TOP_LEVEL:
            raise ConfigError(path, key, f"unknown key (expected {', '.join(_TOP_LEVEL)})")
    sources = tuple(
        _source(path, f"sources[{i}]", item)
        for i, item in enumerate(_tables(path, table, "sources"))
    )
    _unique(path, "sources", [source.name for source in sources])
    seen_keys: Dict[str, str] = {}
    for i, source in enumerate(sources):
        for key in source.write_keys:
            if key in seen_keys:
                raise ConfigError(
                    path,
                    f"sources[{i}].write_keys",
                    f"a write key is also given to source {seen_keys[key]!r}",
                )
            seen_keys[key] = source.name
    source_names = frozenset(source.name for source in sources)
    destinations = tuple(
        _destination(path, f"destinations[{i}]", item, source_names)
        for i, item in enumerate(_tables(path, table, "destinations"))
    )
    _unique(path, "destinations", [destination.name for destination in destinations])
    destination_names = frozenset(destination.name for destination in destinations)
    filters = tuple(
        _filter(path, f"filters[{i}]", item, source_names, destination_names)
        for i, item in enumerate(_tables(path, table, "filters"))
    )
    outbox = table.get("outbox", {})
    if not isinstance(outbox, dict):
        raise ConfigError(path, "outbox", "must be a table ([outbox])")
    try:
        limits = check_settings(_OUTBOX, outbox, "outbox")
    except SettingError as exc:
        raise ConfigError(path, exc.key, exc.problem) from None
    return RoutingConfig(path, sources, destinations, filters, **limits)


def _tables(path: str, table: Mapping[str, Any], key: str) -> List[Mapping[str, Any]]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(path, key, f"must be an array of tables ([[{key}]])")
    return value


def _unique(path: str, key: str, names: List[str]) -> None:
    seen: Dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(
                path, f"{key}[{i}].name", f"{name!r} is already the name of {key}[{seen[name]}]"
            )
        seen[name] = i


def _check_keys(path: str, where: str, item: Mapping[str, Any], allowed: Tuple[str, ...]) -> None:
    for key in item:
        if key not in allowed:
            raise ConfigError(
                path, f"{where}.{key}", f"unknown key (expected {', '.join(allowed)})"
            )


def _name(path: str, where: str, item: Mapping[str, Any]) -> str:
    value = item.get("name")
    if value is None:
        raise ConfigError(path, f"{where}.name", "is required")
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value != value.strip():
        raise ConfigError(
            path, f"{where}.name", f"must be 1 to 100 printable characters, not {value!r}"
        )
    return value


def _strings(path: str, key: str, value: Any, *, required: bool = False) -> Tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(path, key, "must be an array of non-empty strings")
    if required and not value:
        raise ConfigError(path, key, "must name at least one")
    return tuple(dict.fromkeys(value))


def _source(path: str, where: str, item: Mapping[str, Any]) -> SourceConfig:
    _check_keys(path, where, item, ("name", "write_keys"))
    name = _name(path, where, item)
    if "write_keys" not in item:
        raise ConfigError(path, f"{where}.write_keys", "is required")
    keys = _strings(path, f"{where}.write_keys", item["write_keys"], required=True)
    return SourceConfig(name, tuple(key.strip() for key in keys))


def _destination(
    path: str, where: str, item: Mapping[str, Any], source_names: FrozenSet[str]
) -> DestinationConfig:
    name = _name(path, where, item)
    kind = item.get("type")
    if kind is None:
        raise ConfigError(path, f"{where}.type", "is required")
    if kind not in type_names():
        raise ConfigError(
            path, f"{where}.type", f"unknown type {kind!r} (one of {', '.join(type_names())})"
        )
    sources: Optional[FrozenSet[str]] = None
    if "sources" in item:
        listed = _strings(path, f"{where}.sources", item["sources"], required=True)
        for source in listed:
            if source not in source_names:
                raise ConfigError(path, f"{where}.sources", f"no source is named {source!r}")
        sources = frozenset(listed)
    own = {k: v for k, v in item.items() if k not in ("name", "type", "sources", *_COMMON)}
    common = {k: v for k, v in item.items() if k in _COMMON}
    cls = destination_class(kind)
    try:
        settings = check_settings(cls.settings, own, where)
        limits = check_settings(_COMMON, common, where)
    except SettingError as exc:
        raise ConfigError(path, exc.key, exc.problem) from None
    return DestinationConfig(name, kind, settings, sources, **limits)


def _filter(
    path: str,
    where: str,
    item: Mapping[str, Any],
    source_names: FrozenSet[str],
    destination_names: FrozenSet[str],
) -> FilterConfig:
    allowed = ("source", "destination", "drop_events", "drop_types", "drop_properties")
    _check_keys(path, where, item, allowed)
    source, destination = item.get("source"), item.get("destination")
    if (source is None) == (destination is None):
        raise ConfigError(path, where, "give exactly one of 'source' or 'destination'")
    if source is not None and source not in source_names:
        raise ConfigError(path, f"{where}.source", f"no source is named {source!r}")
    if destination is not None and destination not in destination_names:
        raise ConfigError(path, f"{where}.destination", f"no destination is named {destination!r}")
    events = _strings(path, f"{where}.drop_events", item.get("drop_events", []))
    types = _strings(path, f"{where}.drop_types", item.get("drop_types", []))
    for kind in types:
        if kind not in MESSAGE_TYPES:
            raise ConfigError(
                path,
                f"{where}.drop_types",
                f"unknown type {kind!r} (one of {', '.join(MESSAGE_TYPES)})",
            )
    properties = _strings(path, f"{where}.drop_properties", item.get("drop_properties", []))
    if not (events or types or properties):
        raise ConfigError(
            path, where, "drops nothing: give drop_events, drop_types or drop_properties"
        )
    pattern = (
        re.compile("|".join(f"(?:{fnmatch.translate(e)})" for e in events)) if events else None
    )
    return FilterConfig(
        source, destination, events, frozenset(types), properties, _event_pattern=pattern
    )
