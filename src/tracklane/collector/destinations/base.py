"""What every destination is: settings it declares, a batch it delivers, an outcome it reports.

A destination type is a class with a ``type_name``, a table of ``settings`` (checked when
the config file is read, so a bad value stops the server naming the file and the key) and a
``deliver(envelopes)`` method. The router hands it a batch of :class:`Envelope`: a stored
message (wire-form dict with ``receivedAt``), the name of its source and the options object
the call's ``integrations`` gave this destination, if any. It acknowledges what the returned
:class:`Outcome` says was delivered. Anything not delivered is retried with backoff; a
permanent failure is dead-lettered at once. ``deliver`` must not raise for a delivery
problem; an exception that escapes anyway is taken as a retryable failure of the whole
batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

__all__ = [
    "Destination",
    "Envelope",
    "Failure",
    "Outcome",
    "Setting",
    "SettingError",
    "check_settings",
]

Message = Dict[str, Any]


class SettingError(ValueError):
    """A destination setting is invalid; ``key`` names it (dotted below the destination)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Setting:
    """One key a destination's config table may hold.

    ``check`` turns the TOML value into the value used (or raises ValueError saying what
    is wrong with it). ``required`` settings have no default.
    """

    check: Callable[[Any], Any]
    required: bool = False
    default: Any = None
    help: str = ""


class Envelope(NamedTuple):
    """One stored message on its way to a destination (a named tuple: one per message)."""

    message: Message  # wire form, with receivedAt
    source: str  # the source's name (its write key when no config names it)
    options: Optional[Dict[str, Any]] = None  # ``integrations[<destination>]`` if an object
    # The message's JSON as it is to be sent, for a destination that ``accepts_wire``; its
    # ``message`` then holds only the messageId (decoding it was saved).
    wire: Optional[bytes] = None


@dataclass(frozen=True)
class Failure:
    """Why one message (or a whole batch) was not delivered."""

    error: str
    permanent: bool = False
    retry_after: Optional[float] = None  # seconds the destination asked us to wait
    no_answer: bool = False  # the request got no response (connection error, timeout)


@dataclass
class Outcome:
    """What ``deliver`` achieved: messages not listed in ``failed`` were delivered.

    ``failed`` maps a message's index in the batch to its failure.
    """

    failed: Dict[int, Failure] = field(default_factory=dict)

    @classmethod
    def all_failed(cls, count: int, failure: Failure) -> Outcome:
        """Every one of ``count`` messages failed the same way."""
        return cls(dict.fromkeys(range(count), failure))


class Destination:
    """Base class of destination types; subclasses set ``type_name`` and ``settings``.

    ``claim_size`` is how many messages the router hands over at once (a webhook with
    ``batch_size`` 1 still gets a claim of many, and sends them in parallel).
    A destination that sets ``accepts_wire`` gets, for each message no filter had to
    edit, the encoded JSON in ``Envelope.wire`` and a ``message`` holding only its
    ``messageId``. ``claims_in_flight`` above 1 lets the router read and route the next claims while
    earlier ones are delivered: ``deliver`` is then called from that many threads at once
    and must be thread-safe.
    """

    type_name: ClassVar[str] = ""
    settings: ClassVar[Mapping[str, Setting]] = {}
    claim_size: int = 500
    claims_in_flight: int = 1
    accepts_wire: ClassVar[bool] = False

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        """Keep the destination's name and its checked settings."""
        self.name = name
        self.config = dict(config)

    def deliver(self, envelopes: Sequence[Envelope]) -> Outcome:
        """Send the messages; report which failed. Must not raise for delivery problems."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and threads; called once when the router stops."""


def check_settings(
    settings: Mapping[str, Setting], table: Mapping[str, Any], prefix: str
) -> Dict[str, Any]:
    """Check a destination's own keys in ``table``; raises SettingError naming the key."""
    checked: Dict[str, Any] = {}
    for key in table:
        if key not in settings:
            known = ", ".join(sorted(settings)) or "none"
            raise SettingError(f"{prefix}.{key}", f"unknown key (this type takes: {known})")
    for key, setting in settings.items():
        if key not in table:
            if setting.required:
                raise SettingError(f"{prefix}.{key}", "is required")
            checked[key] = setting.default
            continue
        try:
            checked[key] = setting.check(table[key])
        except (TypeError, ValueError) as exc:
            raise SettingError(f"{prefix}.{key}", str(exc)) from None
    return checked


# -- checkers shared by destination types ------------------------------------------------

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value


def http_url(value: Any) -> str:
    """An ``http://`` or ``https://`` URL with a host."""
    url = text(value)
    match = re.fullmatch(r"(https?)://([^/?#\s]+)([^\s]*)", url)
    if match is None:
        raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
    return url


def int_between(low: int, high: int) -> Callable[[Any], int]:
    """An integer from ``low`` to ``high``."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}, not {value!r}")
        return value

    return check


def positive_seconds(value: Any) -> float:
    """A number of seconds above zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"must be a number of seconds above 0, not {value!r}")
    return float(value)


def headers(value: Any) -> Tuple[Tuple[str, str], ...]:
    """A table of header names to string values (no line breaks)."""
    if not isinstance(value, dict):
        raise ValueError("must be a table of header names to strings")
    result: List[Tuple[str, str]] = []
    for name, item in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if not isinstance(item, str) or "\r" in item or "\n" in item:
            raise ValueError(f"the value of {name!r} must be a string on one line")
        result.append((name, item))
    return tuple(result)
