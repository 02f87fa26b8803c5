"""Ingest worker processes: ``tracklane serve --workers N``.

One Python process runs its Python under one lock (the GIL), so a collector that parses,
validates, encodes and binds every event itself tops out near one core (about 20,000 to
26,000 events/s on a 2-core machine). With workers, the server process reads each ingest
request (HTTP, authorization header, body limits, gzip) and hands the raw body to a worker
over a pipe; the worker checks it (``_check.check_request``), inserts its rows into the same
store (its own connection; group commit among the requests it holds) and returns the answer
bytes, which the server sends. Everything else stays in the server process: the read API,
the debugger (its refusal log watches the answers as before), the router and its outbox.

Durability is unchanged: a worker answers only after its rows are committed and fsynced,
and the 200 goes out only then. SQLite allows one writer at a time; the processes take turns
through a lock file beside the database (``Storage``), so a waiting writer wakes as soon as
the other commits instead of sleeping in SQLite's busy handler. Rows get their ``seq`` when
inserted under that lock, so seq order stays commit order. A worker whose parent is killed
(kill -9) notices within half a second and exits; on a clean stop the server closes the
pipes and waits for each worker to finish its requests in flight.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sqlite3
import struct
import threading
from datetime import datetime
from multiprocessing.connection import Connection
from typing import FrozenSet, List, Optional, Sequence, Tuple

import orjson

from tracklane.collector._check import check_request, json_error
from tracklane.collector._ingest import Prepared
from tracklane.collector._ingest_route import Answer
from tracklane.collector._json import dumps
from tracklane.collector.storage import StorageError, StrPath
from tracklane.collector.stores import EventStore, open_store

__all__ = ["MAX_WORKERS", "IngestWorkers", "WorkerError", "answer_body", "answer_for"]

MAX_WORKERS = 64
_log = logging.getLogger("tracklane.collector")
# Requests one worker holds at a time (each waits in a thread of its own for the group commit).
CHANNELS_PER_WORKER = 8
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
_ORPHAN_POLL_SECONDS = 0.5
_READY = b"ready"
# A request: header length, then a JSON header [write key from the header, type, received
# at (ISO-8601)], then the raw body. An answer: status, challenge flag, body.
_LENGTH = struct.Struct("!I")
_ANSWER = struct.Struct("!H?")


class WorkerError(RuntimeError):
    """The ingest workers could not start (their message says why)."""


def answer_for(store: EventStore, prepared: Prepared) -> Answer:
    """Store what a request brought (blocking: returns once durable); the answer to send."""
    try:
        stored = store.insert(prepared.messages)
    except (sqlite3.Error, StorageError) as exc:
        return json_error(503, f"storage unavailable: {exc}")
    return answer_body(prepared, stored)


def answer_body(prepared: Prepared, stored: int) -> Answer:
    """The answer to a request whose messages were stored (``stored`` of them new)."""
    body = {
        "success": True,
        "stored": stored,
        "duplicates": len(prepared.messages) - stored,
        "rejected": [rejection.to_json() for rejection in prepared.rejected],
    }
    if prepared.rejected and not prepared.messages:
        body["success"] = False
        body["error"] = f"all {len(prepared.rejected)} messages were rejected"
        return Answer(400, dumps(body))
    return Answer(200, dumps(body))


class _Worker:
    """One worker process and the server's ends of its channels."""

    def __init__(self, process: multiprocessing.process.BaseProcess, channels: List[Connection]):
        self.process = process
        self.channels = channels


class IngestWorkers:
    """``count`` worker processes storing into ``location``; ``handle`` blocks per request.

    A worker that dies (killed, out of memory) is replaced: the requests it held are answered
    503 (nothing of theirs was acknowledged, so clients retry), later ones go to the new one.
    """

    def __init__(self, count: int, location: StrPath, write_keys: FrozenSet[str]) -> None:
        """Start the workers (spawned: the server has threads) and wait until each is ready.

        Raises WorkerError (or StorageError, when a worker cannot open the store).
        """
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"workers must be from 1 to {MAX_WORKERS}, not {count}")
        self._context = multiprocessing.get_context("spawn")
        self._location = str(location)
        self._write_keys = write_keys
        self._free: queue.Queue[Tuple[_Worker, Connection]] = queue.Queue()
        self._workers: List[_Worker] = []
        self._restart_lock = threading.Lock()
        self._closed = False
        try:
            for number in range(count):
                self._workers.append(self._spawn(number))
            for worker in self._workers:
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise
        # Interleave the workers' channels so that concurrent requests spread over them.
        for index in range(CHANNELS_PER_WORKER):
            for worker in self._workers:
                self._free.put((worker, worker.channels[index]))

    def _spawn(self, number: int) -> _Worker:
        ends = [self._context.Pipe() for _ in range(CHANNELS_PER_WORKER)]
        process = self._context.Process(
            target=_worker_main,
            args=(self._location, self._write_keys, [end for _, end in ends], os.getpid()),
            name=f"tracklane-ingest-worker-{number + 1}",
            daemon=True,
        )
        process.start()
        for _, end in ends:
            end.close()  # the worker's ends live in the worker only
        return _Worker(process, [mine for mine, _ in ends])

    @property
    def pids(self) -> List[int]:
        """The worker processes' ids."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def _await_ready(self, worker: _Worker) -> None:
        for channel in worker.channels:
            if not channel.poll(STARTUP_TIMEOUT):
                raise WorkerError(f"an ingest worker did not start within {STARTUP_TIMEOUT:.0f} s")
            try:
                said = channel.recv_bytes()
            except (EOFError, OSError):
                raise WorkerError("an ingest worker stopped while starting") from None
            if said != _READY:
                raise StorageError(said.decode("utf-8", "replace"))

    def handle(
        self,
        raw: bytes,
        header_key: Optional[str],
        message_type: Optional[str],
        received_at: datetime,
    ) -> Answer:
        """Have a worker check and store one request; return its answer (blocking)."""
        worker, channel = self._free.get()
        while worker not in self._workers:  # a channel of a worker replaced since: dropped
            worker, channel = self._free.get()
        try:
            header = orjson.dumps([header_key, message_type, received_at.isoformat()])
            channel.send_bytes(b"".join([_LENGTH.pack(len(header)), header, raw]))
            reply = channel.recv_bytes()
        except (EOFError, OSError):
            self._replace(worker)
            return json_error(503, "storage unavailable: an ingest worker stopped; retry")
        self._free.put((worker, channel))
        status, challenge = _ANSWER.unpack_from(reply)
        return Answer(status, reply[_ANSWER.size :], challenge)

    def _replace(self, dead: _Worker) -> None:
        """Start a worker in place of ``dead`` (once, whichever request noticed first)."""
        with self._restart_lock:
            if self._closed or dead not in self._workers:
                return
            number = self._workers.index(dead)
            _log.error(
                "ingest worker %d (pid %s) stopped (exit code %s); starting another",
                number + 1,
                dead.process.pid,
                dead.process.exitcode,
            )
            for channel in dead.channels:
                channel.close()
            dead.process.join(STOP_TIMEOUT)
            try:
                worker = self._spawn(number)
                self._await_ready(worker)
            except Exception:
                _log.exception("could not start another ingest worker")
                # Keep the slot, so that the next request tries again.
                worker = _Worker(dead.process, [])
                self._workers[number] = worker
                for _ in range(CHANNELS_PER_WORKER):
                    self._free.put((worker, _DeadChannel()))  # type: ignore[arg-type]
                return
            self._workers[number] = worker
        for channel in worker.channels:
            self._free.put((worker, channel))

    def close(self) -> None:
        """Close the pipes and wait for the workers to finish; idempotent."""
        with self._restart_lock:
            self._closed = True
        for worker in self._workers:
            for channel in worker.channels:
                channel.close()
        for worker in self._workers:
            worker.process.join(STOP_TIMEOUT)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(STOP_TIMEOUT)


class _DeadChannel:
    """Stands for a channel of a worker that could not be restarted: every use fails."""

    def send_bytes(self, _data: bytes) -> None:
        raise OSError("no ingest worker")

    def recv_bytes(self) -> bytes:
        raise OSError("no ingest worker")

    def close(self) -> None:
        pass


def _worker_main(
    location: str, write_keys: FrozenSet[str], channels: Sequence[Connection], parent: int
) -> None:
    """A worker process: serve each channel in a thread until the server closes it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the server's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    try:
        store = open_store(location)
    except Exception as exc:  # told to the server, which reports it and stops
        for channel in channels:
            channel.send_bytes(str(exc).encode("utf-8"))
        return
    try:
        threads = [
            threading.Thread(target=_serve_channel, args=(channel, store, write_keys))
            for channel in channels
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        store.close()


def _serve_channel(channel: Connection, store: EventStore, write_keys: FrozenSet[str]) -> None:
    channel.send_bytes(_READY)
    while True:
        try:
            request = channel.recv_bytes()
        except (EOFError, OSError):
            return
        (length,) = _LENGTH.unpack_from(request)
        header_key, message_type, received = orjson.loads(request[4 : 4 + length])
        received_at = datetime.fromisoformat(received)
        raw = request[4 + length :]
        checked = check_request(raw, header_key, message_type, received_at, write_keys)
        answer = checked if isinstance(checked, Answer) else answer_for(store, checked)
        try:
            channel.send_bytes(_ANSWER.pack(answer.status, answer.challenge) + answer.body)
        except (EOFError, OSError):
            return


def _exit_when_orphaned(parent: int) -> None:
    # After a kill -9 of the server nobody closes the pipes cleanly for us to notice in every
    # case, so a worker also watches for being re-parented.
    while os.getppid() == parent:
        threading.Event().wait(_ORPHAN_POLL_SECONDS)
    os._exit(0)
