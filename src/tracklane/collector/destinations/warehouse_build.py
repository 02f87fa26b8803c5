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
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any, Dict, List, Mapping, Optional, Sequence

import orjson

from tracklane.collector._child import start_child
from tracklane.collector._gc import tune_gc_for_serving
from tracklane.collector._json import loads_stored_bytes
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
    messages = _decode(bodies)
    rows = build_rows(messages, uuid_ts)
    tables: Dict[str, BuiltTable] = {}
    for name, table in rows.tables.items():
        existing = known.get(name) or FIXED_COLUMNS.get(name, FIXED_COLUMNS["tracks"])
        columns = {c: existing.get(c) or KIND_TYPES[kind] for c, kind in table.kinds.items()}
        names, data, discards = copy_rows(table, columns)
        types = [columns[column] for column in names]
        tables[name] = BuiltTable(name, dict(table.kinds), names, types, data, discards)
    return Built(tables, rows.discards)


_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN = b"0" * 19


def _decode(bodies: Sequence[bytes]) -> List[Any]:
    """:func:`loads_stored_bytes` of each body, the check for wide integers made once.

    orjson would turn an integer wider than 64 bits into a float: a batch with 19 digits
    in a row anywhere is decoded body by body, each checked (the newlines keep bodies'
    digits apart). One scan instead of one per body: -2.5% of a builder's instructions.
    """
    if _NINETEEN not in b"\n".join(bodies).translate(_DIGITS_TO_ZERO):
        loads = orjson.loads
        try:
            return [loads(body) for body in bodies]
        except orjson.JSONDecodeError:  # a lone surrogate, kept as a \u escape
            pass
    return [loads_stored_bytes(body) for body in bodies]


_PARENT_POLL = 0.5  # seconds between a worker's looks at whether its parent is alive


def _watch_parent(parent: int) -> None:
    """In a worker: end this process soon after its parent ends (even by ``kill -9``)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)  # a poll: nothing to wait on for another process's end
        os._exit(0)

    threading.Thread(target=watch, name="tracklane.parent-watch", daemon=True).start()


def serve_builds(connections: List[Connection], parent: int) -> None:
    """A builder process's life: build each batch it is sent until its channel closes."""
    (channel,) = connections
    _watch_parent(parent)
    tune_gc_for_serving()
    while True:
        try:
            bodies, uuid_ts, known = channel.recv()
        except EOFError:  # the parent closed the channel: stop
            return
        try:
            answer: object = build_encoded(bodies, uuid_ts, known)
        except Exception as exc:  # a batch it cannot build (a NUL character, ...)
            answer = _Failed(f"{type(exc).__name__}: {exc}")
        channel.send(answer)


@dataclass
class _Failed:
    """A builder's answer for a batch it could not build."""

    reason: str


class _Builder:
    """One builder process and the parent's end of its channel."""

    def __init__(self, number: int) -> None:
        self.process, (self.channel,) = start_child(
            "tracklane.collector.destinations.warehouse_build:serve_builds",
            (os.getpid(),),
            1,
            f"tracklane-row-builder-{number + 1}",
        )

    def stop(self, wait: bool) -> None:
        self.channel.close()  # the builder ends when it reads the end of its channel
        if wait:
            self.process.join(_STOP_TIMEOUT)
        self.process.kill()
        self.process.join(_STOP_TIMEOUT)  # reaped: a killed process ends at once


_STOP_TIMEOUT = 10.0


class RowBuilders:
    """``processes`` builder processes (started on first use, each replaced if it dies).

    Each is started as ``python -m tracklane.collector._child`` (not multiprocessing's
    ``spawn``, which would re-run the user's unguarded ``__main__`` in it).
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._lock = threading.RLock()
        self._idle: queue.Queue[Optional[_Builder]] = queue.Queue()
        self._all: List[_Builder] = []
        self._started = False
        self._closed = False

    def build(
        self, bodies: Sequence[bytes], uuid_ts: datetime, known: Mapping[str, Mapping[str, str]]
    ) -> Optional[Built]:
        """The batch built by a worker; ``None`` if that failed (build it here instead)."""
        with self._lock:
            if self._closed:
                return None
            if not self._started:  # start them all now, not one per busy moment
                self._started = True
                for number in range(self.processes):
                    try:
                        self._idle.put(self._start(number))
                    except OSError as exc:  # no process now: its slot retries at its turn
                        logger.warning("could not start a warehouse row builder: %s", exc)
                        self._idle.put(None)
        builder = self._idle.get()
        if self._closed:
            if builder is not None:
                self._forget(builder)
            self._idle.put(None)
            return None
        if builder is None:  # one died before: start its replacement
            try:
                builder = self._start(len(self._all))
            except OSError as exc:
                logger.warning("could not start a warehouse row builder: %s", exc)
                self._idle.put(None)
                return None
        try:
            builder.channel.send((list(bodies), uuid_ts, known))
            answer = builder.channel.recv()
        except (EOFError, OSError) as exc:  # it died: the next batch gets a new one
            if not self._closed:
                logger.warning("a warehouse row builder died (building in process): %s", exc)
            self._forget(builder)
            self._idle.put(None)
            return None
        self._give_back(builder)
        return answer if isinstance(answer, Built) else None

    def _start(self, number: int) -> _Builder:
        builder = _Builder(number)
        with self._lock:
            self._all.append(builder)
        return builder

    def _forget(self, builder: _Builder, wait: bool = False) -> None:
        with self._lock:
            if builder in self._all:
                self._all.remove(builder)
        builder.stop(wait)

    def _give_back(self, builder: _Builder) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            self._forget(builder)
        else:
            self._idle.put(builder)

    @property
    def pids(self) -> List[int]:
        """The builder processes' ids (those started so far)."""
        with self._lock:
            return [b.process.pid for b in self._all if b.process.pid is not None]

    def close(self) -> None:
        """Stop the builders (idempotent); one busy with a batch stops after it."""
        with self._lock:
            self._closed = True
        while True:
            try:
                builder = self._idle.get_nowait()
            except queue.Empty:
                break
            if builder is not None:
                self._forget(builder, wait=True)
        for _ in range(self.processes):
            self._idle.put(None)  # wakes any caller waiting for a builder
