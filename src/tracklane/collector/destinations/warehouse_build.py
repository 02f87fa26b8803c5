"""Rows for the warehouse built in separate processes, off the router's GIL.

The router's process reads, routes and settles events and runs each load's transaction;
decoding the stored messages and turning them into COPY text (``build_rows`` and
``copy_rows``, pure Python: most of a load's CPU) runs in a pool of ``spawn``-ed worker
processes, which get the messages' encoded JSON and send back each table's COPY text.
A worker holds nothing of value: it commits nothing and acknowledges nothing, so when
one dies (or anything goes wrong in it) the caller builds that batch in its own process,
and the next batch gets a new pool.

A worker fits values to the column types it was told (the catalog as last seen) and, for
columns not there yet, to the type the loader will create them with; the loader checks
those types against the catalog inside its transaction (:meth:`Built.fits`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from typing import Dict, List, Mapping, Optional, Sequence

from tracklane.collector._json import loads_stored
from tracklane.collector.destinations.warehouse_rows import (
    FIXED_COLUMNS,
    KIND_TYPES,
    Discard,
    build_rows,
    copy_rows,
)

__all__ = ["Built", "BuiltTable", "RowBuilders", "build_encoded"]

logger = logging.getLogger("tracklane.collector")


@dataclass
class BuiltTable:
    """One table's rows of a batch as COPY text, fitted to ``types``."""

    name: str
    kinds: Dict[str, str]  # column -> kind first seen (what a missing column is created as)
    names: List[str]  # the COPY's columns, in order
    types: List[str]  # the column type each value was fitted to
    data: str  # COPY text data
    discards: List[Discard]


@dataclass
class Built:
    """A batch built by a worker: per table, plus values discarded on the way."""

    tables: Dict[str, BuiltTable]
    discards: List[Discard]

    def fits(self, name: str, columns: Mapping[str, str]) -> bool:
        """Whether table ``name`` was fitted to the column types ``columns`` has."""
        table = self.tables[name]
        return all(columns.get(c) == t for c, t in zip(table.names, table.types))


def build_encoded(
    bodies: Sequence[bytes], uuid_ts: datetime, known: Mapping[str, Mapping[str, str]]
) -> Built:
    """Decode stored messages and build every table's COPY text (runs in a worker).

    ``known`` is the schema's catalog as last seen (table -> column -> type); a column
    not in it is fitted to the type it will be created with.
    """
    messages = [loads_stored(body.decode("utf-8")) for body in bodies]
    rows = build_rows(messages, uuid_ts)
    tables: Dict[str, BuiltTable] = {}
    for name, table in rows.tables.items():
        existing = known.get(name) or FIXED_COLUMNS.get(name, FIXED_COLUMNS["tracks"])
        columns = {c: existing.get(c) or KIND_TYPES[kind] for c, kind in table.kinds.items()}
        names, data, discards = copy_rows(table, columns)
        types = [columns[column] for column in names]
        tables[name] = BuiltTable(name, dict(table.kinds), names, types, data, discards)
    return Built(tables, rows.discards)


_PARENT_POLL = 0.5  # seconds between a worker's looks at whether its parent is alive


def _watch_parent(parent: int) -> None:
    """In a worker: end this process soon after its parent ends (even by ``kill -9``)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)  # a poll: nothing to wait on for another process's end
        os._exit(0)

    threading.Thread(target=watch, name="tracklane.parent-watch", daemon=True).start()


def _ready() -> None:
    """A job that only makes the pool start a worker."""


class RowBuilders:
    """A pool of ``processes`` worker processes building batches (started on first use)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._pool: Optional[ProcessPoolExecutor] = None
        self._closed = False

    def build(
        self, bodies: Sequence[bytes], uuid_ts: datetime, known: Mapping[str, Mapping[str, str]]
    ) -> Optional[Built]:
        """The batch built by a worker; ``None`` if that failed (build it here instead)."""
        pool = self._get()
        if pool is None:
            return None
        try:
            return pool.submit(build_encoded, list(bodies), uuid_ts, known).result()
        except BrokenProcessPool as exc:  # a worker died: the next batch gets a new pool
            logger.warning("a warehouse row builder died (building in process): %s", exc)
            self._discard(pool)
        except Exception:  # a batch a worker could not build (a NUL character, ...)
            pass
        return None

    def _get(self) -> Optional[ProcessPoolExecutor]:
        with self._lock:
            if self._closed:
                return None
            if self._pool is None:
                context = multiprocessing.get_context("spawn")  # no copy of the router's threads
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=context,
                    initializer=_watch_parent,
                    initargs=(os.getpid(),),
                )
                for _ in range(self.processes):  # start them all now, not one per busy moment
                    self._pool.submit(_ready)
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
