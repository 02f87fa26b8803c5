"""Which destination gets which message, and in what shape (pure: no I/O).

``integrations`` is applied as Segment applies it: every destination is on by default;
``"All": false`` turns all off except those named ``true`` or given an options object;
``false`` turns one off; names are case-sensitive; unknown names are ignored. Then the
filters of the message's source and of the destination drop by type or event name, and
remove the named property keys.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

from tracklane.collector.config import DestinationConfig, FilterConfig

__all__ = ["Route", "Verdict", "integration_choice", "route"]


class Verdict(str, enum.Enum):
    """What happens to one message for one destination."""

    DELIVER = "deliver"
    SKIPPED = "skipped"  # not for this destination: integrations or its sources say so
    FILTERED = "filtered"  # a filter dropped it (counted)


class Route(NamedTuple):
    """The decision for one message: the verdict and, when delivered, what to send."""

    verdict: Verdict
    message: Optional[Dict[str, Any]] = None
    options: Optional[Dict[str, Any]] = None


def integration_choice(integrations: Any, name: str) -> Tuple[bool, Optional[Dict[str, Any]]]:
    """Whether ``integrations`` lets ``name`` have the message, and its options object."""
    if not isinstance(integrations, dict):
        return True, None
    if name in integrations:
        value = integrations[name]
        if isinstance(value, dict):
            return True, value
        return value is not False and value is not None, None
    return integrations.get("All", True) is not False, None


def route(
    message: Dict[str, Any],
    source: str,
    destination: DestinationConfig,
    filters: Sequence[FilterConfig],
) -> Route:
    """Decide what ``destination`` gets of ``message`` (from ``source``).

    ``filters`` are those of the source and of the destination. ``message`` is never
    changed: a copy is made when properties are removed.
    """
    if destination.sources is not None and source not in destination.sources:
        return Route(Verdict.SKIPPED)
    enabled, options = integration_choice(message.get("integrations"), destination.name)
    if not enabled:
        return Route(Verdict.SKIPPED)
    removed: Tuple[str, ...] = ()
    for rule in filters:
        if rule.drops_event(message):
            return Route(Verdict.FILTERED)
        removed += rule.drop_properties
    if removed:
        message = _without(message, removed)
    return Route(Verdict.DELIVER, message, options)


def filters_for(
    filters: Sequence[FilterConfig], source: str, destination: str
) -> Tuple[FilterConfig, ...]:
    """The filters that apply to messages from ``source`` going to ``destination``."""
    return tuple(
        rule for rule in filters if rule.source == source or rule.destination == destination
    )


def _without(message: Dict[str, Any], keys: Tuple[str, ...]) -> Dict[str, Any]:
    copy = dict(message)
    for field in ("properties", "traits"):
        value = copy.get(field)
        if isinstance(value, Mapping) and any(key in value for key in keys):
            copy[field] = {k: v for k, v in value.items() if k not in keys}
    return copy
