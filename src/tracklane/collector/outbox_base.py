"""What every outbox is: the claims, settlements and status rows the router works with.

The router needs of an outbox only the :class:`Outbox` protocol below; the SQLite outbox
(:mod:`tracklane.collector.outbox`) and the PostgreSQL one
(:mod:`tracklane.collector.outbox_pg`) both build on this module and never on each other.
docs/routing.md describes the model: per destination, claims held under a lease until
they are settled in one transaction, failures retried or dead-lettered.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Protocol, Sequence, Tuple

import orjson

from tracklane.collector._json import dumps, loads_stored

__all__ = [
    "Claim",
    "DeadLetter",
    "DeliveryTrace",
    "DestinationStatus",
    "Outbox",
    "PendingRow",
    "Retry",
    "Settlement",
    "StoredEvent",
    "WireEvent",
    "build_traces",
    "collector_id",
    "iso_now",
    "lag_seconds",
    "spliced_wire",
    "stored_event",
    "wire_events",
    "wire_integrations",
]


def collector_id() -> str:
    """This process's collector id (host, pid and a random part): the owner of its leases."""
    return f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def iso_now() -> str:
    """Now as the outbox records it (``dead_at``, ``last_delivered_at``): ISO-8601 UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lag_seconds(received_at: Optional[str], now: float) -> float:
    """Seconds since ``received_at`` (a stored ``...Z`` time); 0 for ``None`` or the future."""
    if received_at is None:
        return 0.0
    moment = datetime.fromisoformat(str(received_at).replace("Z", "+00:00"))
    return max(0.0, now - moment.timestamp())


class PendingRow(NamedTuple):
    """A claimed outbox row: events ``first..last`` (one event when they are equal).

    A named tuple: the PostgreSQL outbox makes one per claimed event.
    """

    id: int
    first: int
    last: int
    attempts: int


@dataclass(frozen=True)
class Claim:
    """Rows one collector holds for one destination until it settles them."""

    destination: str
    rows: Tuple[PendingRow, ...]
    owner: str
    # The events as read with the claim, by an outbox that reads them in the same
    # statement (PostgreSQL); empty when they are read afterwards (SQLite).
    records: Tuple[Any, ...] = field(default=(), compare=False, repr=False)


class StoredEvent(NamedTuple):
    """A stored event as a destination receives it (a named tuple: one per event)."""

    id: int
    write_key: str
    message: Dict[str, Any]  # wire form with receivedAt, timestamp, originalTimestamp
    attempts: int  # failed attempts so far for this destination


class WireEvent(NamedTuple):
    """A stored event as bytes ready to send: its wire-form JSON, and what routing reads."""

    id: int
    write_key: str
    message_id: str
    wire: bytes  # the wire form (receivedAt, timestamp, originalTimestamp set) as JSON
    integrations: Optional[Dict[str, Any]]  # the message's integrations object, if it has one
    attempts: int


def stored_event(
    event_id: int,
    write_key: str,
    received_at: str,
    timestamp: str,
    original_timestamp: Optional[str],
    body: str,
    attempts: int,
) -> StoredEvent:
    """Decode a stored event's row into the wire form a destination receives."""
    message: Dict[str, Any] = loads_stored(body)
    message["receivedAt"] = received_at
    message["timestamp"] = timestamp
    message["originalTimestamp"] = original_timestamp
    return StoredEvent(event_id, write_key, message, attempts)


def _json_text(value: Optional[str]) -> bytes:
    return b"null" if value is None else orjson.dumps(value)


def spliced_wire(
    body: str, received_at: str, timestamp: str, original_timestamp: Optional[str]
) -> Optional[bytes]:
    """The wire form of a stored body, made by editing its text; ``None`` when unsure.

    Gives the bytes decoding the body, setting ``receivedAt``, ``timestamp`` and
    ``originalTimestamp`` and encoding would (SQLite's ``json_set`` gives the same): a
    top-level ``timestamp`` is replaced where it stands, the others are appended. It
    relies on what ingest stores: compact JSON whose top-level ``timestamp`` is the
    ``original_timestamp`` column. Every other case (the key text seen anywhere else, a
    ``receivedAt`` or ``originalTimestamp`` key, another layout) returns ``None``, and the
    caller decodes and encodes instead.
    """
    if len(body) < 3 or body[-1] != "}" or '"receivedAt"' in body:
        return None
    if '"originalTimestamp"' in body:
        return None
    try:
        raw = body.encode("utf-8")
        return _splice(raw, received_at, timestamp, original_timestamp)
    except (UnicodeEncodeError, orjson.JSONEncodeError):  # a lone surrogate
        return None


def _splice(
    raw: bytes, received_at: str, timestamp: str, original_timestamp: Optional[str]
) -> Optional[bytes]:
    count = raw.count(b'"timestamp":')
    received = b',"receivedAt":' + _json_text(received_at)
    if original_timestamp is None:
        if count:  # "timestamp": null at the top, or the key deeper down
            return None
        return (
            raw[:-1]
            + received
            + b',"timestamp":'
            + _json_text(timestamp)
            + b',"originalTimestamp":null}'
        )
    if count != 1:  # the top-level key is there: any other occurrence makes it ambiguous
        return None
    start = raw.index(b'"timestamp":') + 12
    old = _json_text(original_timestamp)
    if not raw.startswith(old, start):
        return None
    return (
        raw[:start]
        + _json_text(timestamp)
        + raw[start + len(old) : -1]
        + received
        + b',"originalTimestamp":'
        + old
        + b"}"
    )


def wire_integrations(wire: bytes) -> Optional[Dict[str, Any]]:
    """The message's ``integrations`` object, or ``None`` when it has none.

    orjson alone reads it (without :func:`loads_stored`'s scan for wide integers, which
    cost as much as the parse); an object holding a float, which may be such an integer
    orjson rounded, or a body orjson refuses is read again exactly.
    """
    try:
        value = orjson.loads(wire).get("integrations")
    except orjson.JSONDecodeError:  # a lone surrogate kept as an escape
        value = loads_stored(wire.decode("utf-8")).get("integrations")
    if not isinstance(value, dict):
        return None
    if _holds_float(value):
        value = loads_stored(wire.decode("utf-8")).get("integrations")
    return value if isinstance(value, dict) else None


_SCALARS = (bool, int, str, type(None))


def _holds_float(value: Any) -> bool:
    """Whether a decoded JSON value holds a float anywhere (a loop: most are flat)."""
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        if type(item) in _SCALARS:
            continue
        if type(item) is float or (isinstance(item, (dict, list)) and _holds_float(item)):
            return True
    return False


def wire_events(events: Sequence[StoredEvent]) -> List[WireEvent]:
    """Encode decoded events (for an outbox that cannot build the wire form itself)."""
    result = []
    for event in events:
        message = event.message
        integrations = message.get("integrations")
        result.append(
            WireEvent(
                event.id,
                event.write_key,
                str(message.get("messageId", "")),
                dumps(message),
                integrations if isinstance(integrations, dict) else None,
                event.attempts,
            )
        )
    return result


@dataclass(frozen=True)
class Retry:
    """An event to try again at ``due_at`` (unix time)."""

    event_id: int
    attempts: int
    due_at: float
    error: str


@dataclass(frozen=True)
class DeadLetter:
    """An event given up on for a destination."""

    event_id: int
    attempts: int
    error: str
    message_id: Optional[str] = None
    type: Optional[str] = None
    event: Optional[str] = None
    dead_at: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        """The wire form served by ``GET /v1/destinations/<name>/dead-letters``."""
        return {
            "eventId": self.event_id,
            "messageId": self.message_id,
            "type": self.type,
            "event": self.event,
            "attempts": self.attempts,
            "lastError": self.error,
            "deadAt": self.dead_at,
        }


@dataclass
class Settlement:
    """What became of a claim.

    Every event of the claim not listed as filtered, skipped, retried or dead was
    delivered. ``filtered_ids`` and ``skipped_ids`` name the events counted in
    ``filtered`` and ``skipped``: an outbox shared by collectors counts only the rows the
    settling collector still held (another may have taken them over and counted them).
    """

    delivered: int = 0
    filtered: int = 0
    skipped: int = 0
    retries: List[Retry] = field(default_factory=list)
    dead: List[DeadLetter] = field(default_factory=list)
    filtered_ids: List[int] = field(default_factory=list)
    skipped_ids: List[int] = field(default_factory=list)


@dataclass(frozen=True)
class DestinationStatus:
    """Counters and state of one destination (``GET /v1/destinations``)."""

    name: str
    type: str
    delivered: int
    pending: int
    failed: int  # messages waiting for a retry after a failed attempt
    dead_lettered: int
    filtered: int
    skipped: int
    last_error: Optional[str]
    last_error_at: Optional[str]
    last_delivered_at: Optional[str]
    lag_seconds: float  # age of the oldest message not yet handled; 0 when none

    @classmethod
    def from_counters(
        cls,
        name: str,
        kind: str,
        counters: Sequence[Any],
        pending: int,
        failed: int,
        dead_lettered: int,
        lag_seconds: float,
    ) -> DestinationStatus:
        """Build from a counters row: (delivered, filtered, skipped, last error, its time,
        last delivery time), as both outboxes keep them, and the counts read beside it."""
        delivered, filtered, skipped, last_error, last_error_at, last_delivered_at = counters
        return cls(
            name,
            kind,
            int(delivered),
            int(pending),
            int(failed),
            int(dead_lettered),
            int(filtered),
            int(skipped),
            last_error,
            last_error_at,
            last_delivered_at,
            lag_seconds,
        )

    def to_json(self) -> Dict[str, Any]:
        """The wire form."""
        return {
            "name": self.name,
            "type": self.type,
            "delivered": self.delivered,
            "pending": self.pending,
            "failed": self.failed,
            "deadLettered": self.dead_lettered,
            "filtered": self.filtered,
            "skipped": self.skipped,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            "lastDeliveredAt": self.last_delivered_at,
            "lagSeconds": round(self.lag_seconds, 3),
        }


@dataclass(frozen=True)
class DeliveryTrace:
    """What the outbox still holds about some events for one destination (the debugger)."""

    destination: str
    position: int  # events with id <= position have been claimed
    start: int  # events with id <= start were stored before the destination was added
    pending: Dict[int, Tuple[int, float, Optional[str]]]  # id -> (attempts, due_at, error)
    dead: Dict[int, Tuple[int, str]]  # id -> (attempts, last error)


def build_traces(
    cursors: Sequence[Tuple[Any, ...]],
    pending: Sequence[Tuple[Any, ...]],
    dead: Sequence[Tuple[Any, ...]],
    wanted: Sequence[int],
) -> List[DeliveryTrace]:
    """Each destination's trace among ``wanted`` ids, from rows read by an outbox.

    ``cursors`` are (name, position, start), ``pending`` (name, first, last, attempts,
    due_at, error) and ``dead`` (name, event id, attempts, error).
    """
    ids = set(wanted)
    result = []
    for name, position, start in cursors:
        waiting: Dict[int, Tuple[int, float, Optional[str]]] = {}
        for dest, first, last, attempts, due_at, error in pending:
            if dest == name:
                for event_id in ids.intersection(range(int(first), int(last) + 1)):
                    waiting[event_id] = (int(attempts), float(due_at), error)
        given_up = {int(r[1]): (int(r[2]), str(r[3])) for r in dead if r[0] == name}
        result.append(DeliveryTrace(str(name), int(position), int(start), waiting, given_up))
    return result


class Outbox(Protocol):
    """What the router needs of an outbox (SQLite here, PostgreSQL in ``outbox_pg``)."""

    def register(self, destinations: Iterable[str]) -> None:
        """Start queueing stored events for each new destination."""

    def claim(self, destination: str, limit: int, now: Optional[float] = None) -> Optional[Claim]:
        """Lease up to ``limit`` events due for ``destination``; ``None`` when idle."""

    def events(self, claim: Claim) -> List[StoredEvent]:
        """The stored events a claim covers, oldest first."""

    def wire_events(self, claim: Claim) -> List[WireEvent]:
        """The stored events a claim covers, oldest first, encoded as they are sent."""

    def settle(self, claim: Claim, outcome: Settlement) -> None:
        """Record a claim's outcome in one transaction and release it."""

    def status(self, destinations: Sequence[Tuple[str, str]]) -> List[DestinationStatus]:
        """The status of each ``(name, type)``."""

    def dead_letters(self, destination: str, limit: int = 100) -> List[DeadLetter]:
        """The newest dead letters of ``destination``."""

    def replay(self, destination: str, now: Optional[float] = None) -> int:
        """Send every dead letter of ``destination`` again; return how many."""

    def traces(self, event_ids: Sequence[int]) -> List[DeliveryTrace]:
        """Each destination's cursor, pending rows and dead letters among ``event_ids``."""

    def close(self) -> None:
        """Release what the outbox holds."""
