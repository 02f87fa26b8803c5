"""The collector's ASGI app: Segment's HTTP Tracking API in, SQLite out, and a read API.

Routes:

- ``POST /v1/batch`` (also ``/v1/import`` and ``/v1/b``): ``{"batch": [...], "sentAt": ...}``
- ``POST /v1/track|identify|page|screen|group|alias``: one message, typed by the path
- ``GET /v1/events`` and ``GET /v1/events/count``: stored events, newest first
- ``GET /health``: ``{"ok": true}``
- ``GET /``: the debugger page, and its API under ``/debugger/`` (``collector/debugger``)
- with a router: ``GET /v1/destinations`` and the dead-letter routes (``_destinations_api``)
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    Mapping,
    Optional,
    Union,
)

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracklane._iso import utc_now
from tracklane.collector._auth import basic_user
from tracklane.collector._body import read_limited
from tracklane.collector._check import check_request, json_error, unauthorized
from tracklane.collector._group_writer import GroupWriter, answer_body, answer_for
from tracklane.collector._ingest import (
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    MESSAGE_TYPES,
    Prepared,
    RequestError,
)
from tracklane.collector._ingest_route import CHALLENGE, Answer, IngestRoute
from tracklane.collector._json import dumps
from tracklane.collector._query import COUNT_PARAMS, EVENTS_PARAMS, parse_query
from tracklane.collector._workers import IngestWorkers
from tracklane.collector._writer_process import WriterProcess, WriterProcesses
from tracklane.collector.debugger import install_debugger
from tracklane.collector.storage import Storage, StorageError, StrPath
from tracklane.collector.stores import EventStore, open_store

if TYPE_CHECKING:
    from tracklane.collector.router import Router

__all__ = ["BATCH_PATHS", "create_app"]

BATCH_PATHS = ("/v1/batch", "/v1/import", "/v1/b")
# Bodies up to this size are parsed and checked on the event loop (about 1 ms for 64 KB,
# less than handing them to a thread and back); bigger ones in the insert thread.
INLINE_CHECK_BYTES = 128 * 1024
INSERT_THREADS = 16
Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    storage: Union[StrPath, EventStore],
    write_keys: Iterable[str] = (),
    router: Optional[Router] = None,
    workers: int = 0,
) -> Starlette:
    """Build the collector app storing into ``storage`` (a path, a postgresql:// URL, a store).

    With ``write_keys`` given, only those keys may send or read events. A database
    opened from a path here is closed at the app's lifespan shutdown; a Storage
    passed in stays open (its owner closes it). ``app.state.storage`` is the store.
    A ``router`` (on the same store) is started and stopped with the app's lifespan.
    ``workers`` > 0 starts that many ingest worker processes (``--workers``, ``_workers``).
    With SQLite, the app's lifespan starts a process committing what requests bring
    (``_writer_process``); until it is ready, or if it cannot start or dies, a thread of this
    process commits them (``_group_writer``).
    """
    owned = isinstance(storage, (str, os.PathLike))
    store = open_store(storage) if isinstance(storage, (str, os.PathLike)) else storage
    try:
        location: StrPath = (
            storage
            if isinstance(storage, (str, os.PathLike))
            else getattr(store, "dsn", store.path)
        )
        collector = _Collector(store, write_keys, workers, location)
    except BaseException:
        if owned:
            store.close()
        raise

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if collector.writer_processes is not None:
            collector.writer_processes.start()
        if router is not None:
            await run_in_threadpool(router.start)
        try:
            yield
        finally:
            if router is not None:
                await run_in_threadpool(router.stop)
            if collector.writer_processes is not None:
                await collector.writer_processes.stop()
            await run_in_threadpool(collector.close)
            if owned:
                store.close()

    routes = [Route(path, collector.batch, methods=["POST"]) for path in BATCH_PATHS]
    routes += [
        Route(f"/v1/{kind}", collector.single_endpoint(kind), methods=["POST"])
        for kind in MESSAGE_TYPES
    ]
    routes += [
        Route("/v1/events", collector.events, methods=["GET"]),
        Route("/v1/events/count", collector.count, methods=["GET"]),
        Route("/health", collector.health, methods=["GET"]),
    ]
    if router is not None:
        from tracklane.collector._destinations_api import destination_routes

        routes += destination_routes(router, collector.write_keys)
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.storage = store
    # POSTs to the ingest paths skip Starlette's router (added first: the debugger's refusal
    # recorder, added next, wraps it).
    ingest_types: Dict[str, Optional[str]] = dict.fromkeys(BATCH_PATHS)
    ingest_types.update({f"/v1/{kind}": kind for kind in MESSAGE_TYPES})
    app.add_middleware(IngestRoute, ingest=collector.ingest, paths=ingest_types)
    # The debugger: its page at /, its API, and the recorder of refused messages.
    ingest_paths = [*BATCH_PATHS, *(f"/v1/{kind}" for kind in MESSAGE_TYPES)]
    install_debugger(app, store, collector.write_keys, ingest_paths, router)
    return app


class _Collector:
    """Request handlers sharing one store and one set of accepted write keys."""

    def __init__(
        self,
        storage: EventStore,
        write_keys: Iterable[str],
        workers: int = 0,
        location: Optional[StrPath] = None,
    ) -> None:
        self.storage = storage
        self.write_keys = frozenset(write_keys)
        self._workers = (
            IngestWorkers(workers, location or storage.path, self.write_keys)
            if workers > 0
            else None
        )
        # SQLite: one writer thread commits every request checked since its last commit
        # (_group_writer), whether this process or an ingest worker checked it. Other stores
        # (PostgreSQL), and bodies too big to check on the loop: each insert blocks in a thread
        # of its own until its (group) commit is durable. A plain executor costs less per
        # request than Starlette's run_in_threadpool.
        self._writer = GroupWriter(storage) if isinstance(storage, Storage) else None
        # SQLite, on the serving event loop: a process of its own commits (_writer_process).
        self.writer_processes = (
            WriterProcesses(storage.path) if isinstance(storage, Storage) else None
        )
        self._inserts = ThreadPoolExecutor(INSERT_THREADS, thread_name_prefix="tracklane-ingest")

    def close(self) -> None:
        """Stop the insert threads (and worker processes) once requests in flight are answered."""
        self._inserts.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()
        if self._workers is not None:
            self._workers.close()

    async def batch(self, request: Request) -> Response:
        """Store a batch, keeping its valid messages and reporting the others."""
        return _response(await self.ingest(request.headers.get, request.stream(), None))

    def single_endpoint(self, message_type: str) -> Endpoint:
        """Return the handler of ``POST /v1/<message_type>``."""

        async def endpoint(request: Request) -> Response:
            answer = await self.ingest(request.headers.get, request.stream(), message_type)
            return _response(answer)

        return endpoint

    async def ingest(
        self,
        header: Callable[[str], Optional[str]],
        chunks: AsyncIterator[bytes],
        message_type: Optional[str],
    ) -> Answer:
        """Read, check and store one ingest request; return the answer to send.

        Shared by the Starlette routes and the plain ASGI route (``_ingest_route``).
        """
        try:
            header_key = basic_user(header("authorization"))
        except ValueError as exc:
            if self.write_keys:
                return unauthorized(str(exc))
            header_key = None
        if header_key is not None and self.write_keys and header_key not in self.write_keys:
            return unauthorized("unknown write key")
        try:
            raw = await read_limited(
                chunks,
                content_encoding=header("content-encoding"),
                content_length=header("content-length"),
                limit=MAX_REQUEST_BYTES if message_type is None else MAX_MESSAGE_BYTES,
                what="request body" if message_type is None else "message",
            )
        except RequestError as exc:
            return json_error(400, str(exc))
        received_at = utc_now()
        if self._workers is not None:  # a worker process checks it (and stores it: PostgreSQL)
            checked = await self._workers.handle(raw, header_key, message_type, received_at)
        elif len(raw) > INLINE_CHECK_BYTES:  # a big body, checked off the event loop
            return await asyncio.get_running_loop().run_in_executor(
                self._inserts, self._store, raw, header_key, message_type, received_at
            )
        else:
            checked = check_request(raw, header_key, message_type, received_at, self.write_keys)
        if isinstance(checked, Answer):
            return checked
        if not checked.messages:  # every message refused: nothing to store
            return answer_body(checked, 0)
        if self._writer is not None:
            process = self._writer_process()
            if process is not None and not self._writer.storage.closed:  # closed: a 503
                return await process.store(checked)
            return await self._writer.store(checked)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._inserts, self._insert, checked)

    def _store(
        self,
        raw: bytes,
        header_key: Optional[str],
        message_type: Optional[str],
        received_at: datetime,
    ) -> Answer:
        """Check and store one request (blocking; a thread)."""
        checked = check_request(raw, header_key, message_type, received_at, self.write_keys)
        return checked if isinstance(checked, Answer) else self._insert(checked)

    def _insert(self, prepared: Prepared) -> Answer:
        """Store what a request brought (blocking: returns once it is durable)."""
        return answer_for(self.storage, prepared)

    async def events(self, request: Request) -> Response:
        """Serve ``GET /v1/events``: ``{"events": [...]}``, newest first."""
        return await self._read(request, counting=False)

    async def count(self, request: Request) -> Response:
        """Serve ``GET /v1/events/count``: ``{"count": n}``."""
        return await self._read(request, counting=True)

    async def _read(self, request: Request, *, counting: bool) -> Response:
        try:
            key = basic_user(request.headers.get("authorization"))
        except ValueError as exc:
            if self.write_keys:
                return _response(unauthorized(str(exc)))
            key = None
        if self.write_keys and key is None:
            return _response(unauthorized("reading events needs a write key (HTTP Basic auth)"))
        if self.write_keys and key not in self.write_keys:
            return _response(unauthorized("unknown write key"))
        try:
            where, limit = parse_query(
                request.query_params.multi_items(),
                COUNT_PARAMS if counting else EVENTS_PARAMS,
                key,
            )
        except RequestError as exc:
            return _response(json_error(400, str(exc)))
        try:
            if counting:
                return _json_response(
                    200, {"count": await run_in_threadpool(self.storage.count, where)}
                )
            events = await run_in_threadpool(self.storage.query, where, limit)
        except (sqlite3.Error, StorageError) as exc:
            return _response(json_error(503, f"storage unavailable: {exc}"))
        return _json_response(200, {"events": events})

    async def health(self, _request: Request) -> Response:
        """Serve ``GET /health``: ``{"ok": true}``, and the SQLite writer process's pid.

        ``writer_process`` is the pid of the process committing this loop's ingest requests,
        or null while this process commits them (before it starts, after it died, PostgreSQL).
        """
        process = self._writer_process()
        pid = None if process is None else process.pid
        return _json_response(200, {"ok": True, "writer_process": pid})

    def _writer_process(self) -> Optional[WriterProcess]:
        """The process committing this event loop's SQLite inserts now, if not this one."""
        if self.writer_processes is None:
            return None
        return self.writer_processes.serving(asyncio.get_running_loop())


def _json_response(
    status: int, body: Dict[str, Any], headers: Optional[Mapping[str, str]] = None
) -> Response:
    return Response(dumps(body), status, headers, media_type="application/json")


def _response(answer: Answer) -> Response:
    headers = {"WWW-Authenticate": CHALLENGE} if answer.challenge else None
    return Response(answer.body, answer.status, headers, media_type="application/json")


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Render routing errors (404, 405) as JSON like every other error."""
    assert isinstance(exc, HTTPException)
    return _json_response(exc.status_code, {"success": False, "error": exc.detail}, exc.headers)
