"""Ingest worker processes: ``tracklane serve --workers N``.

One Python process runs its Python under one lock (the GIL), so a collector that parses,
validates and encodes every event itself tops out near one core. With workers, the server
process reads each ingest request (HTTP, authorization header, body limits, gzip) and hands
the raw body to a worker over a socket pair; the worker checks it (``_check.check_request``)
and sends back either the refusal or the rows to store. Everything else stays in the server
process: the read API, the debugger (its refusal log watches the answers as before), the
router and its outbox.

Where the rows are stored depends on the store:

- SQLite allows one writer at a time, and each commit waits for an fsync. The server process
  stores every worker's rows with its one writer thread (``_group_writer``): one transaction
  and one fsync for all the requests checked since the last commit, whichever worker checked
  them. (Before, each worker committed its own requests and the workers took turns on the
  file's write lock, each turn holding it through an fsync: with 4 to 8 clients the lock was
  busy 87% of the time for groups of 2 to 3 requests; docs/performance.md.) Rows travel back
  in :mod:`marshal`'s format (both ends are the same interpreter), about 0.4 µs per event each
  way.
- PostgreSQL commits side by side, so each worker stores its own requests and answers.

Both ends do their I/O on an event loop: the server writes a request and awaits its answer
without a thread of its own per request, and a worker reads its channels, checks requests
and sends answers on its loop.

Durability is unchanged: the 200 goes out only once the rows are committed and fsynced. A
worker whose parent is killed (kill -9) notices within half a second and exits; on a clean
stop the server closes the pipes and waits for each worker to finish its requests in flight.
A worker killed while it holds a request costs that request a 503 (nothing of it was stored
or acknowledged, so the client retries).
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import signal
import socket
import struct
import threading
from datetime import datetime
from multiprocessing.connection import Connection
from typing import FrozenSet, List, Optional, Sequence, Tuple, Union

import orjson

from tracklane.collector._check import check_request, json_error
from tracklane.collector._child import (
    READY,
    Child,
    ChildRefused,
    ChildStartError,
    await_ready,
    start_child,
)
from tracklane.collector._gc import tune_gc_for_serving
from tracklane.collector._group_writer import answer_for
from tracklane.collector._ingest import Prepared, Rejection
from tracklane.collector._ingest_route import Answer
from tracklane.collector.storage import StorageError, StoredMessage, StrPath
from tracklane.collector.stores import EventStore, is_postgres_url, open_store

__all__ = ["MAX_WORKERS", "IngestWorkers", "WorkerError"]

MAX_WORKERS = 64
_log = logging.getLogger("tracklane.collector")
# Requests one worker holds at a time (each waits in a thread of its own for the group commit).
CHANNELS_PER_WORKER = 8
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
_ORPHAN_POLL_SECONDS = 0.5
# Each frame on a channel starts with its length. A request: header length, then a JSON
# header [write key from the header, type, received at (ISO-8601)], then the raw body. An
# answer: status, challenge flag, body; or status 0 (``_CHECKED``), then the checked rows and
# refusals for the server to store (SQLite).
_LENGTH = struct.Struct("!I")
_ANSWER = struct.Struct("!H?")
_CHECKED = 0


class WorkerError(RuntimeError):
    """The ingest workers could not start (their message says why)."""


class _Channel:
    """The server's end of one channel to a worker (a non-blocking socket; None: no worker)."""

    def __init__(self, sock: Optional[socket.socket]) -> None:
        self.sock = sock
        self.worker: Optional[_Worker] = None  # set once the worker is built

    async def exchange(self, frame: bytes) -> bytes:
        """Send one request frame and return the answer frame; EOFError/OSError if it fails."""
        if self.sock is None:
            raise OSError("no ingest worker")
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, frame)
        return await _read_frame(loop, self.sock)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


async def _read_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """Read one length-prefixed frame; raises EOFError when the other end closed."""
    (length,) = _LENGTH.unpack(await _read_exactly(loop, sock, _LENGTH.size))
    return await _read_exactly(loop, sock, length)


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = await loop.sock_recv_into(sock, view[got:])
        if count == 0:
            raise EOFError("the channel was closed")
        got += count
    return bytes(buffer)


def _frame(*parts: bytes) -> bytes:
    return b"".join([_LENGTH.pack(sum(map(len, parts))), *parts])


def _raw_socket(channel: Connection) -> socket.socket:
    """The socket under a multiprocessing Pipe end (a Unix socket pair), non-blocking."""
    sock = socket.socket(fileno=os.dup(channel.fileno()))
    channel.close()
    sock.setblocking(False)
    return sock


class _Worker:
    """One worker process and the server's ends of its channels."""

    def __init__(self, process: Child, channels: List[_Channel]):
        self.process = process
        self.channels = channels


class IngestWorkers:
    """``count`` worker processes storing into ``location``; ``handle`` awaits one request.

    A worker that dies (killed, out of memory) is replaced: the requests it held are answered
    503 (nothing of theirs was acknowledged, so clients retry), later ones go to the new one.
    """

    def __init__(self, count: int, location: StrPath, write_keys: FrozenSet[str]) -> None:
        """Start the workers (fresh interpreters: the server has threads); wait until each is ready.

        Raises WorkerError (or StorageError, when a worker cannot open the store).
        """
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"workers must be from 1 to {MAX_WORKERS}, not {count}")
        self._location = str(location)
        self._write_keys = write_keys
        self._workers: List[_Worker] = []
        self._restart_lock = threading.Lock()
        self._closed = False
        # Created on the event loop at the first request (asyncio.Queue binds to a loop on
        # Python 3.9); until then, the channels wait here in the order they are handed out.
        self._free: Optional[asyncio.Queue[_Channel]] = None
        self._free_channels: List[_Channel] = []
        started: List[Tuple[Child, List[Connection]]] = []
        try:
            for number in range(count):  # all start at once, then each is waited for
                started.append(self._start(number))
            for process, ends in started:
                self._workers.append(self._ready(process, ends))
        except BaseException:
            in_service = {id(worker.process) for worker in self._workers}
            for process, ends in started:
                if id(process) not in in_service:
                    _stop(process, ends)
            self.close()
            raise
        # Interleave the workers' channels so that concurrent requests spread over them.
        for index in range(CHANNELS_PER_WORKER):
            for worker in self._workers:
                self._free_channels.append(worker.channels[index])

    def _spawn(self, number: int) -> _Worker:
        """Start worker ``number`` and wait until it is ready (or raise)."""
        return self._ready(*self._start(number))

    def _start(self, number: int) -> Tuple[Child, List[Connection]]:
        """Start worker ``number``'s process; return it and the server's ends of its pipes."""
        # Started as ``python -m tracklane.collector._child``, not by multiprocessing's
        # ``spawn``: that would re-run an unguarded ``__main__`` of serve_in_thread's caller.
        return start_child(
            "tracklane.collector._workers:_worker_main",
            (self._location, self._write_keys, os.getpid()),
            CHANNELS_PER_WORKER,
            f"tracklane-ingest-worker-{number + 1}",
        )

    def _ready(self, process: Child, ends: List[Connection]) -> _Worker:
        """Wait until a started worker is ready; stop it and raise if it is not."""
        try:
            _await_ready(ends)
        except BaseException:
            _stop(process, ends)
            raise
        worker = _Worker(process, [_Channel(_raw_socket(end)) for end in ends])
        for channel in worker.channels:
            channel.worker = worker
        return worker

    @property
    def pids(self) -> List[int]:
        """The worker processes' ids."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def _queue(self) -> asyncio.Queue[_Channel]:
        if self._free is None:
            self._free = asyncio.Queue()
            for channel in self._free_channels:
                self._free.put_nowait(channel)
            self._free_channels = []
        return self._free

    async def handle(
        self,
        raw: bytes,
        header_key: Optional[str],
        message_type: Optional[str],
        received_at: datetime,
    ) -> Union[Answer, Prepared]:
        """Have a worker check one request (and store it, PostgreSQL): the answer or the rows.

        With SQLite the result is what to store (the caller stores it with the server's
        writer); otherwise, and for every refusal, it is the answer to send.
        """
        free = self._queue()
        channel = await free.get()
        while channel.worker not in self._workers:  # of a replaced worker
            channel = await free.get()
        header = orjson.dumps([header_key, message_type, received_at.isoformat()])
        frame = _frame(_LENGTH.pack(len(header)), header, raw)
        # Shielded: a cancelled request must not leave a channel with an answer unread.
        return await asyncio.shield(self._exchange(free, channel, frame))

    async def _exchange(
        self, free: asyncio.Queue[_Channel], channel: _Channel, frame: bytes
    ) -> Union[Answer, Prepared]:
        try:
            reply = await channel.exchange(frame)
        except (EOFError, OSError):
            worker = channel.worker
            loop = asyncio.get_running_loop()
            if worker is not None:
                for fresh in await loop.run_in_executor(None, self._replace, worker):
                    free.put_nowait(fresh)
            return json_error(503, "storage unavailable: an ingest worker stopped; retry")
        free.put_nowait(channel)
        status, challenge = _ANSWER.unpack_from(reply)
        if status == _CHECKED:
            return _unpack_checked(memoryview(reply)[_ANSWER.size :])
        return Answer(status, reply[_ANSWER.size :], challenge)

    def _replace(self, dead: _Worker) -> List[_Channel]:
        """Start a worker in place of ``dead`` (once, whichever request noticed first).

        Returns the new worker's channels, to hand out (none when another request already
        replaced it, or when the collector is closing).
        """
        with self._restart_lock:
            if self._closed or dead not in self._workers:
                return []
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
            except Exception:
                _log.exception("could not start another ingest worker")
                # Keep the slot, so that the next request tries again.
                worker = _Worker(dead.process, [_Channel(None) for _ in range(CHANNELS_PER_WORKER)])
                for channel in worker.channels:
                    channel.worker = worker
            self._workers[number] = worker
            return list(worker.channels)

    def close(self) -> None:
        """Close the channels and wait for the workers to finish; idempotent."""
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


def _pack_checked(prepared: Prepared) -> bytes:
    """A worker's answer carrying what to store: its rows and refusals, marshalled."""
    rows = [tuple(message) for message in prepared.messages]
    refusals = [(r.index, r.message_id, r.reason) for r in prepared.rejected]
    return _frame(_ANSWER.pack(_CHECKED, False), marshal.dumps((rows, refusals)))


def _unpack_checked(packed: memoryview) -> Prepared:
    rows, refusals = marshal.loads(packed)
    return Prepared(
        [tuple.__new__(StoredMessage, row) for row in rows],
        [Rejection(*refusal) for refusal in refusals],
    )


def _stop(process: Child, ends: List[Connection]) -> None:
    """Stop a worker that is not in service: close its pipes, kill it, reap it."""
    for end in ends:
        end.close()
    if process.is_alive():
        process.kill()
    process.join(STOP_TIMEOUT)


def _await_ready(channels: List[Connection]) -> None:
    try:
        await_ready(channels, "an ingest worker", STARTUP_TIMEOUT)
    except ChildStartError as exc:
        raise WorkerError(str(exc)) from None
    except ChildRefused as exc:  # the worker could not open the store
        raise StorageError(str(exc)) from None


def _worker_main(
    channels: Sequence[Connection], location: str, write_keys: FrozenSet[str], parent: int
) -> None:
    """A worker process: serve its channels on an event loop until the server closes them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the server's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    # SQLite: the server process stores what the workers check (one writer, one fsync a group).
    store: Optional[EventStore] = None
    if is_postgres_url(location):
        try:
            store = open_store(location)
        except Exception as exc:  # told to the server, which reports it and stops
            for channel in channels:
                channel.send_bytes(str(exc).encode("utf-8"))
            return
    try:
        tune_gc_for_serving()
        for channel in channels:
            channel.send_bytes(READY)
        socks = [_raw_socket(channel) for channel in channels]
        asyncio.run(_serve(socks, store, write_keys))
    finally:
        if store is not None:
            store.close()


async def _serve(
    socks: List[socket.socket], store: Optional[EventStore], write_keys: FrozenSet[str]
) -> None:
    await asyncio.gather(*(_serve_channel(sock, store, write_keys) for sock in socks))


async def _serve_channel(
    sock: socket.socket, store: Optional[EventStore], write_keys: FrozenSet[str]
) -> None:
    """Answer the requests of one channel, one at a time, until the server closes it.

    Without a store (SQLite) a checked request is answered with its rows, for the server to
    store; with one (PostgreSQL) the worker stores it and answers as the server would.
    """
    loop = asyncio.get_running_loop()
    with sock:
        while True:
            try:
                request = await _read_frame(loop, sock)
            except (EOFError, OSError):
                return
            (length,) = _LENGTH.unpack_from(request)
            header_key, message_type, received = orjson.loads(request[4 : 4 + length])
            received_at = datetime.fromisoformat(received)
            raw = request[4 + length :]
            checked = check_request(raw, header_key, message_type, received_at, write_keys)
            if isinstance(checked, Answer):
                reply = _frame(_ANSWER.pack(checked.status, checked.challenge), checked.body)
            elif store is None:
                reply = _pack_checked(checked)
            else:  # PostgreSQL: its pool commits requests side by side
                answer = await loop.run_in_executor(None, answer_for, store, checked)
                reply = _frame(_ANSWER.pack(answer.status, answer.challenge), answer.body)
            try:
                await loop.sock_sendall(sock, reply)
            except OSError:
                return


def _exit_when_orphaned(parent: int) -> None:
    # After a kill -9 of the server nobody closes the pipes cleanly for us to notice in every
    # case, so a worker also watches for being re-parented.
    while os.getppid() == parent:
        threading.Event().wait(_ORPHAN_POLL_SECONDS)
    os._exit(0)
