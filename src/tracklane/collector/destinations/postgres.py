"""The ``postgres`` destination type: the router's side of the warehouse loader.

Wraps :class:`~tracklane.collector.destinations.warehouse.PostgresWarehouse`: each claim is
loaded source by source (a schema per source), one transaction per source; a failed load
is retried as a whole (loading is idempotent by messageId, so a retry never duplicates).
The messages come as their stored JSON (``accepts_wire``) and are decoded and turned into
rows by ``row_builders`` worker processes, so that building rows does not compete with
routing for the router's GIL (docs/performance.md); the transaction stays here, and the
outbox is settled only after it committed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Mapping, Sequence

from tracklane.collector._json import dumps
from tracklane.collector.destinations.base import (
    Destination,
    Envelope,
    Failure,
    Outcome,
    Setting,
    int_between,
    positive_seconds,
    text,
)

__all__ = ["WarehouseDestination"]


class WarehouseDestination(Destination):
    """Loads messages into Segment's warehouse schema in PostgreSQL."""

    type_name = "postgres"
    settings: ClassVar[Mapping[str, Setting]] = {
        "dsn": Setting(text, required=True, help="postgresql://user@host:5432/database"),
        "schema": Setting(text, help="schema name; {source} is the snake_cased source name"),
        "connect_timeout": Setting(positive_seconds, default=10.0, help="seconds"),
        "row_builders": Setting(
            int_between(0, 16),
            default=2,
            help="worker processes building rows (0: build them in the router's process)",
        ),
    }
    # Events per load (one transaction): each load costs about ten statements (a COPY per
    # table), a round trip to a row builder and the outbox's claim and settle whatever its
    # size; at 2,000 instead of 1,000, PostgreSQL used 2-3 µs less CPU per event and the
    # collector's process about 2 less (docs/performance.md).
    claim_size = 2000
    # Loads at once, each on its own connection: one more than there are row builders, so
    # that every builder has a claim to build while another claim's COPY and commit run in
    # PostgreSQL (two without builders: one built here while the other loads).
    # docs/performance.md measures it.
    claims_in_flight = 2
    accepts_wire = True

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        """Prepare the loader (it connects on the first batch)."""
        super().__init__(name, config)
        from tracklane.collector.destinations.warehouse import PostgresWarehouse

        self._warehouse = PostgresWarehouse(
            self.config["dsn"],
            schema=self.config["schema"],
            connect_timeout=self.config["connect_timeout"],
            row_builders=self.config["row_builders"],
        )
        self.claims_in_flight = max(2, self.config["row_builders"] + 1)

    def deliver(self, envelopes: Sequence[Envelope]) -> Outcome:
        """Load each source's messages in one transaction; a failure fails that source's."""
        by_source: Dict[str, List[int]] = {}
        for index, envelope in enumerate(envelopes):
            by_source.setdefault(envelope.source, []).append(index)
        outcome = Outcome()
        for source, indexes in by_source.items():
            try:
                bodies = [_encoded(envelopes[i]) for i in indexes]
                self._warehouse.load_encoded(source, bodies)
            except Exception as exc:
                failure = Failure(f"{type(exc).__name__}: {exc}")
                outcome.failed.update(dict.fromkeys(indexes, failure))
        return outcome

    def close(self) -> None:
        """Close the loader's connection."""
        self._warehouse.close()


def _encoded(envelope: Envelope) -> bytes:
    """The message's JSON: as stored, or encoded again where a filter edited it."""
    return envelope.wire if envelope.wire is not None else dumps(envelope.message)
