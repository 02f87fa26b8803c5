"""A local collector that speaks Segment's HTTP Tracking API and stores events in SQLite.

Needs the ``collector`` extra (``pip install 'tracklane[collector]'``). Names are
imported lazily, so ``tracklane.collector.storage`` works without the extra.

    from tracklane.collector import serve_in_thread

    with serve_in_thread("events.db", write_keys=["key"]) as server:
        ...  # send to server.url, read back from server.url + "/v1/events"
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

if TYPE_CHECKING:
    from tracklane.collector._runner import CollectorServer, CollectorStartError, serve_in_thread
    from tracklane.collector.app import create_app
    from tracklane.collector.storage import EventFilter, Storage, StorageError
    from tracklane.collector.storage_pg import PostgresStorage
    from tracklane.collector.stores import EventStore

__all__ = [
    "CollectorServer",
    "CollectorStartError",
    "EventFilter",
    "EventStore",
    "PostgresStorage",
    "Storage",
    "StorageError",
    "create_app",
    "serve_in_thread",
]

_HOMES = {
    "CollectorServer": "tracklane.collector._runner",
    "CollectorStartError": "tracklane.collector._runner",
    "serve_in_thread": "tracklane.collector._runner",
    "create_app": "tracklane.collector.app",
    "EventFilter": "tracklane.collector.storage",
    "Storage": "tracklane.collector.storage",
    "StorageError": "tracklane.collector.storage",
    "PostgresStorage": "tracklane.collector.storage_pg",
    "EventStore": "tracklane.collector.stores",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted({*globals(), *__all__})
