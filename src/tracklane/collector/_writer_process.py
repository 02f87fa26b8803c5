"""The SQLite writer in a process of its own: ingest commits that never wait for the GIL.

In one process, the thread committing a group of requests hands the GIL back while SQLite
inserts and fsyncs, then needs it again to go on; while the event loop is checking requests
it gets it only when the loop lets go, or after the interpreter's switch interval (5 ms).
Measured: a thread inserting 200 rows per statement beside a busy Python thread spent 43 µs
of wall time per row for 9.4 µs of CPU; in the collector, a group commit took 4.7 ms for
2.3 ms of the writer's CPU (docs/performance.md). Here the writer is a process of its own
(``python -m tracklane.collector._child``), so neither waits for the other's GIL:

- the server process checks each request on its event loop, sends the rows to store over a
  socket pair (:mod:`marshal`'s format: both ends are the same interpreter) and reads the
  answers on the same loop, with no thread in between;
- the writer takes every request waiting on the socket, stores them all in one transaction
  (``Storage.insert_gathered``: one ``COMMIT``, one fsync) and answers how many rows of each
  were new, or why they could not be stored.

Durability is unchanged: a request is answered 200 only once the writer has committed and
fsynced its rows. If the writer process dies, the requests waiting for it get a 503 (nothing
of theirs was acknowledged, so clients send them again), the collector stores in its own
process (``_group_writer``) and says so in its log, and a new writer starts a second later.
The writer exits when the server
closes the socket pair, or dies (the socket reads end of file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import signal
import socket
import sqlite3
import struct
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from tracklane.collector._check import json_error
from tracklane.collector._child import (
    READY,
    Child,
    ChildRefused,
    ChildStartError,
    await_ready,
    start_child,
)
from tracklane.collector._gc import tune_gc_for_serving
from tracklane.collector._group_writer import answer_body
from tracklane.collector._ingest import Prepared
from tracklane.collector._ingest_route import Answer
from tracklane.collector.storage import Storage, StorageError, StrPath, bind_none_directly

__all__ = ["WriterProcess", "WriterProcessError", "WriterProcesses"]

_log = logging.getLogger("tracklane.collector")
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
RESTART_DELAY = 1.0
_RECEIVE_BYTES = 1 << 20
# A frame: its length, then marshal's form of (request id, rows) from the server, or of a
# list of (request id, outcome) from the writer. An outcome is how many rows were new (int),
# why the store refused them (str: a 503), or None (a bug, logged by the writer: a 500).
_LENGTH = struct.Struct("!I")
_Outcome = Union[int, str, None]


class WriterProcessError(RuntimeError):
    """The writer process could not start (the message says why)."""


class WriterProcess:
    """The server's side: sends checked requests to the writer process, answers them."""

    def __init__(self, path: StrPath, on_lost: Callable[[WriterProcess], None]) -> None:
        """Start the writer on the database at ``path`` and wait until it has opened it.

        Blocks (up to a minute); raises WriterProcessError if the writer cannot start.
        ``on_lost`` is called (on the event loop) if the writer stops before :meth:`close`.
        """
        self._on_lost = on_lost
        self._process, (channel,) = start_child(
            "tracklane.collector._writer_process:serve", (str(path),), 1, "tracklane-writer"
        )
        try:
            try:
                await_ready([channel], "the writer process", STARTUP_TIMEOUT)
            except (ChildStartError, ChildRefused) as exc:
                raise WriterProcessError(str(exc)) from None
            self._sock = socket.socket(fileno=os.dup(channel.fileno()))
        except BaseException:
            self._process.kill()
            self._process.join(STOP_TIMEOUT)
            raise
        finally:
            channel.close()
        self._sock.setblocking(False)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._transport: Optional[asyncio.Transport] = None
        self._waiting: Dict[int, Tuple[asyncio.Future[Answer], Prepared]] = {}
        self._next_id = 0
        self.running = False

    @property
    def pid(self) -> Optional[int]:
        """The writer process's id."""
        return self._process.pid

    @property
    def child(self) -> Child:
        """The writer process."""
        return self._process

    async def attach(self) -> None:
        """Serve requests of the running event loop (only that loop's: see :meth:`serves`)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(lambda: _Answers(self), self._sock)
        self._loop = loop
        self._transport = transport
        self.running = True

    def serves(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether requests on ``loop`` go to the writer process (else: store in-process)."""
        return self.running and loop is self._loop

    async def store(self, prepared: Prepared) -> Answer:
        """Store what a request brought; return its answer once durable (or the refusal)."""
        loop, transport = self._loop, self._transport
        assert loop is not None
        assert transport is not None
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Answer] = loop.create_future()
        self._waiting[request_id] = (future, prepared)
        rows = [tuple(message) for message in prepared.messages]
        payload = marshal.dumps((request_id, rows))
        transport.writelines((_LENGTH.pack(len(payload)), payload))  # no 65 KB concatenation
        return await future

    async def close(self) -> None:
        """Close the socket pair (the writer then exits) and reap the process."""
        self.running = False
        if self._transport is not None:
            self._transport.close()
        else:
            self._sock.close()
        process = self._process
        await asyncio.get_running_loop().run_in_executor(None, _reap, process)

    def _answered(self, answers: List[Tuple[int, _Outcome]]) -> None:
        for request_id, outcome in answers:
            future, prepared = self._waiting.pop(request_id, (None, None))
            if future is None or prepared is None or future.done():
                continue  # cancelled: the client went away
            if isinstance(outcome, int):
                future.set_result(answer_body(prepared, outcome))
            elif isinstance(outcome, str):
                future.set_result(json_error(503, f"storage unavailable: {outcome}"))
            else:
                future.set_exception(RuntimeError("storing the request failed (see the log)"))

    def _lost(self) -> None:
        """The socket pair closed: fail every request still waiting (nothing was acknowledged)."""
        unexpected = self.running
        self.running = False
        waiting, self._waiting = self._waiting, {}
        refusal = json_error(503, "storage unavailable: the store's writer process stopped")
        for future, _ in waiting.values():
            if not future.done():
                future.set_result(refusal)
        if unexpected:
            self._on_lost(self)


class WriterProcesses:
    """A writer process for one event loop's requests, kept running while the app serves.

    Started in the background (a quarter of a second: a new interpreter importing
    tracklane), started again :data:`RESTART_DELAY` after one dies; meanwhile, and if it
    cannot start, the server process commits (``_group_writer``).
    """

    def __init__(self, path: StrPath) -> None:
        """Prepare writer processes for the database at ``path`` (none runs yet)."""
        self._path = path
        self.current: Optional[WriterProcess] = None
        self._starting: Optional[asyncio.Task[None]] = None
        self._stopping: Optional[asyncio.Event] = None

    def start(self) -> None:
        """Start a writer process for the running event loop's requests, in the background."""
        if self._stopping is None:
            self._stopping = asyncio.Event()
            self._starting = asyncio.get_running_loop().create_task(self._start(0.0))

    def serving(self, loop: asyncio.AbstractEventLoop) -> Optional[WriterProcess]:
        """The writer process taking ``loop``'s requests now, if any."""
        process = self.current
        return process if process is not None and process.serves(loop) else None

    async def stop(self) -> None:
        """Stop the writer process (and any start in progress); idempotent."""
        if self._stopping is None:
            return
        self._stopping.set()
        if self._starting is not None:
            await self._starting  # a start in progress ends within STARTUP_TIMEOUT
        process, self.current = self.current, None
        if process is not None:
            await process.close()

    async def _start(self, delay: float) -> None:
        stopping = self._stopping
        assert stopping is not None
        if delay:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        if stopping.is_set():
            return
        try:
            process = await asyncio.get_running_loop().run_in_executor(
                None, WriterProcess, self._path, self._lost
            )
        except Exception as exc:  # no process of its own (Windows, no fork): commit here
            _log.warning("the store's writer process did not start (%s): storing in this one", exc)
            return
        try:
            if not stopping.is_set():
                await process.attach()
        except Exception:
            _log.exception("the store's writer process could not be reached: storing in this one")
        if not process.running:
            await process.close()
            return
        self.current = process

    def _lost(self, process: WriterProcess) -> None:
        if self.current is process:
            self.current = None
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, _reap, process.child)  # no zombie left behind
        _log.error(
            "the store's writer process (pid %s) stopped; storing in the collector's own"
            " process until a new one starts",
            process.pid,
        )
        if self._stopping is not None and not self._stopping.is_set():
            self._starting = loop.create_task(self._start(RESTART_DELAY))


class _Answers(asyncio.Protocol):
    """Reads the writer's answer frames on the server's event loop."""

    def __init__(self, owner: WriterProcess) -> None:
        self._owner = owner
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for answers in _take_frames(self._buffer):
            self._owner._answered(answers)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._owner._lost()


def _take_frames(buffer: bytearray) -> List[Any]:
    """Remove every whole frame from the start of ``buffer``; return their contents."""
    frames = []
    start = 0
    size = len(buffer)
    while size - start >= _LENGTH.size:
        (length,) = _LENGTH.unpack_from(buffer, start)
        end = start + _LENGTH.size + length
        if end > size:
            break
        frames.append(marshal.loads(memoryview(buffer)[start + _LENGTH.size : end]))
        start = end
    if start:
        del buffer[:start]
    return frames


def _reap(process: Child) -> None:
    process.join(STOP_TIMEOUT)
    if process.is_alive():  # stuck (a commit that never ends): nothing of it was answered
        process.kill()
        process.join(STOP_TIMEOUT)


# -- in the writer process ------------------------------------------------------------------


def serve(channels: Sequence[Connection], path: str) -> None:
    """The writer process: store the server's requests until it closes the socket pair."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the server's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (channel,) = channels
    try:
        storage = Storage(path)
    except (StorageError, sqlite3.Error) as exc:  # told to the server, which reports it
        channel.send_bytes(str(exc).encode("utf-8"))
        return
    try:
        tune_gc_for_serving()
        bind_none_directly()
        channel.send_bytes(READY)
        sock = socket.socket(fileno=os.dup(channel.fileno()))
        channel.close()
        with sock:
            _serve(sock, storage)
    finally:
        storage.close()


def _serve(sock: socket.socket, storage: Storage) -> None:
    buffer = bytearray()
    while True:
        requests: List[Tuple[int, List[Tuple[Any, ...]]]] = _take_frames(buffer)
        if not requests:
            try:
                data = sock.recv(_RECEIVE_BYTES)
            except OSError:
                return
            if not data:
                return  # the server closed the socket pair, or died
            buffer += data
            continue
        outcomes = _store(storage, sock, buffer, requests)
        answer = marshal.dumps(
            [(request[0], outcome) for request, outcome in zip(requests, outcomes)]
        )
        try:
            sock.sendall(_LENGTH.pack(len(answer)) + answer)
        except OSError:
            return
        storage.maintain()  # after answering, so no request waits for it


def _store(
    storage: Storage,
    sock: socket.socket,
    buffer: bytearray,
    requests: List[Tuple[int, List[Tuple[Any, ...]]]],
) -> List[_Outcome]:
    """Store ``requests`` and those arriving until the write locks are held: one commit."""

    def gather() -> List[List[Tuple[Any, ...]]]:
        # Requests sent while this process waited for the locks join this commit.
        while True:
            try:
                more = sock.recv(_RECEIVE_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not more:
                break
            buffer.extend(more)
        requests.extend(_take_frames(buffer))
        return [rows for _, rows in requests]

    try:
        return list(storage.insert_gathered(gather))  # type: ignore[arg-type]  # plain tuples
    except (sqlite3.Error, StorageError) as exc:
        return [str(exc)] * len(requests)
    except Exception:  # a bug: these requests fail (500), the writer carries on
        _log.exception("storing a group of ingest requests failed")
        return [None] * len(requests)
