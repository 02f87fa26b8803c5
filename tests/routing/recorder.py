"""A destination type for tests, registered as ``recorder``: it keeps what it is handed."""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Dict, List, Mapping, Sequence

from tracklane.collector._json import loads_stored
from tracklane.collector.destinations import Destination, Envelope, Outcome, Setting, register


@register
class RecorderDestination(Destination):
    """Records every envelope, per destination name, in ``RecorderDestination.seen``."""

    type_name = "recorder"
    settings: ClassVar[Mapping[str, Setting]] = {}
    seen: ClassVar[Dict[str, List[Envelope]]] = {}
    lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        with self.lock:
            self.seen.setdefault(name, [])

    def deliver(self, envelopes: Sequence[Envelope]) -> Outcome:
        """Keep every envelope; all are delivered."""
        with self.lock:
            self.seen[self.name].extend(envelopes)
        return Outcome()

    @classmethod
    def ids(cls, name: str) -> List[str]:
        """The messageIds handed to destination ``name``."""
        with cls.lock:
            return [e.message["messageId"] for e in cls.seen.get(name, [])]


@register
class WireRecorderDestination(RecorderDestination):
    """A recorder handed the encoded JSON (``accepts_wire``), as the webhook is."""

    type_name = "wire-recorder"
    accepts_wire = True


def received(envelope: Envelope) -> Dict[str, Any]:
    """The message a destination means by ``envelope``, whichever form it came in."""
    if envelope.wire is None:
        return envelope.message
    message: Dict[str, Any] = loads_stored(envelope.wire.decode("utf-8"))
    return message  # typed: loads_stored returns Any
