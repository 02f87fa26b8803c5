"""What the collector needs from an event store, and choosing one from ``--db``.

``--db FILE`` opens the embedded SQLite store (:class:`~tracklane.collector.storage.Storage`);
``--db postgresql://...`` (or ``postgres://``) opens the PostgreSQL store
(:class:`~tracklane.collector.storage_pg.PostgresStorage`), which several collector
processes can share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Protocol, Sequence, Union

from tracklane.collector.storage import EventFilter, EventRow, Storage, StoredMessage, StrPath

__all__ = ["POSTGRES_SCHEMES", "EventStore", "is_postgres_url", "open_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class EventStore(Protocol):
    """An event store: blocking calls, safe from several threads, errors as StorageError."""

    @property
    def path(self) -> Union[Path, str]:
        """Where the events are (a file, or a URL without its password)."""

    def insert(self, messages: Sequence[StoredMessage]) -> int:
        """Store durably; ignore (write key, messageId) pairs already stored; return new rows."""

    def query(self, where: EventFilter, limit: int) -> List[Dict[str, Any]]:
        """Return up to ``limit`` matching events as the read API serves them (with ``seq``).

        Newest first, or oldest first when ``where.after`` is set.
        """

    def rows(self, where: EventFilter, limit: int) -> List[EventRow]:
        """Return up to ``limit`` matching rows, ordered as :meth:`query` orders them.

        ``seq`` only grows, in commit order: a reader following ``after=<seq>`` sees
        every event exactly once, whichever process stored it.
        """

    def count(self, where: EventFilter) -> int:
        """Return how many stored events match ``where``."""

    def close(self) -> None:
        """Release the store; idempotent."""


def is_postgres_url(location: StrPath) -> bool:
    """Whether ``location`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(location, str) and location.lower().startswith(POSTGRES_SCHEMES)


def open_store(location: StrPath) -> EventStore:
    """Open the store ``location`` names (raises StorageError when it cannot be used)."""
    if is_postgres_url(location):
        from tracklane.collector.storage_pg import PostgresStorage

        return PostgresStorage(str(location))
    return Storage(os.fspath(location))
