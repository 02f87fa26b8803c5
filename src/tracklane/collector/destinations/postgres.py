"""The ``postgres`` destination type: the router's side of the warehouse loader.

Wraps :class:`~tracklane.collector.destinations.warehouse.PostgresWarehouse`: each claim is
loaded source by source (a schema per source), one transaction per source; a failed load
is retried as a whole (loading is idempotent by messageId, so a retry never duplicates).
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Mapping, Sequence

from tracklane.collector.destinations.base import (
    Destination,
    Envelope,
    Failure,
    Outcome,
    Setting,
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
    }
    claim_size = 1000
    # Two loads at once, each on its own connection: one claim's rows are built (Python)
    # while the other's COPY and commit run in PostgreSQL (docs/performance.md).
    claims_in_flight = 2

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        """Prepare the loader (it connects on the first batch)."""
        super().__init__(name, config)
        from tracklane.collector.destinations.warehouse import PostgresWarehouse

        self._warehouse = PostgresWarehouse(
            self.config["dsn"],
            schema=self.config["schema"],
            connect_timeout=self.config["connect_timeout"],
        )

    def deliver(self, envelopes: Sequence[Envelope]) -> Outcome:
        """Load each source's messages in one transaction; a failure fails that source's."""
        by_source: Dict[str, List[int]] = {}
        for index, envelope in enumerate(envelopes):
            by_source.setdefault(envelope.source, []).append(index)
        outcome = Outcome()
        for source, indexes in by_source.items():
            try:
                self._warehouse.load(source, [envelopes[i].message for i in indexes])
            except Exception as exc:
                failure = Failure(f"{type(exc).__name__}: {exc}")
                outcome.failed.update(dict.fromkeys(indexes, failure))
        return outcome

    def close(self) -> None:
        """Close the loader's connection."""
        self._warehouse.close()
