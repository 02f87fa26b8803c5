"""The debugger's page and JSON API.

- ``GET /``: the page (static HTML; its script and styles under ``/debugger/static/``).
- ``GET /debugger/api/events``: ``{"events": [{"seq", "source", "event"}]}``; with
  routing each item also has ``deliveries`` (see ``_deliveries``).
- ``GET /debugger/api/events/<seq>/deliveries``: ``{"seq", "deliveries"}``, fresh, for the
  payload view (404 when the event is not stored or not the reader's).
- ``GET /debugger/api/rejected``: ``{"rejected": [...], "log"}`` (see ``_rejects``); a new
  ``log`` means the collector restarted and refusal seqs start again from 1.

Both take the cursor shared with ``tracklane tail``: ``after=<seq>`` gives what came
later, oldest first; ``before=<seq>`` what came earlier, newest first; neither gives
the newest. Filters: ``type``, ``event`` (exact name), ``user`` (userId or anonymousId),
``source`` (the label the page shows), ``q`` (text anywhere in the payload), ``limit``.

Live updates are polled with ``after`` (the page asks every 400 ms), not pushed over
server-sent events. Why: an indexed ``id > ?`` query on an idle store answers in well
under a millisecond; polling works unchanged when several collectors share one database
(a push would only see this process's inserts); and an open page never holds a
connection that delays the collector's shutdown (uvicorn waits for open responses).

Who may read: without write keys configured, anyone who can reach the collector (it
binds 127.0.0.1 by default). With write keys, the page and the API ask for one by HTTP
Basic auth (the key as user name, no password), like ``/v1/events``; a reader sees the
events of that key only, and the refusals sent with that key or with a key the collector
does not know (so a mistyped key shows up), never those of another configured key.
"""

from __future__ import annotations

import importlib.resources
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, Optional, Tuple

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from tracklane.collector._auth import basic_user
from tracklane.collector._ingest import MESSAGE_TYPES
from tracklane.collector._json import dumps
from tracklane.collector._rejects import RejectedMessage, RejectLog, source_label
from tracklane.collector.debugger._deliveries import deliveries_of
from tracklane.collector.storage import EventFilter, StorageError
from tracklane.collector.stores import EventStore

if TYPE_CHECKING:
    from tracklane.collector.router import Router

__all__ = ["MAX_LIMIT", "DebuggerAPI", "Query", "parse_debugger_query"]

DEFAULT_LIMIT = 200
MAX_LIMIT = 1_000
MAX_SEQ = 2**63 - 1  # both stores' ids are signed 64-bit integers
_PARAMS = ("after", "before", "limit", "type", "event", "user", "source", "q")
_REALM = {"WWW-Authenticate": 'Basic realm="tracklane collector"'}
# Only this collector's own script, styles and API: an injected payload could not run or
# load anything even if it reached the page as HTML (it does not: values are set as text).
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}
_NEEDS_KEY_PAGE = (
    "<!doctype html><title>tracklane debugger</title><p>This collector accepts only "
    "configured write keys. Reload and enter one as the user name (no password).</p>"
)


class QueryError(ValueError):
    """A query parameter is wrong; ``str(exc)`` names it."""


class Query:
    """The parsed query of an API call."""

    def __init__(self, values: Dict[str, str], cursor: Dict[str, int], limit: int) -> None:
        """Hold the filter ``values``, the cursor and the limit."""
        self.values = values
        self.after = cursor.get("after")
        self.before = cursor.get("before")
        self.limit = limit

    def event_filter(self, reader_key: Optional[str]) -> Optional[EventFilter]:
        """Return the storage filter, or ``None`` when nothing can match."""
        write_key, prefix = reader_key, None
        source = self.values.get("source")
        if source is not None:
            if source == source_label(None):
                wanted = ""
            elif source.endswith("\u2026"):
                prefix, wanted = source[:-1], None
            else:
                wanted = source
            if wanted is not None:
                if reader_key is not None and wanted != reader_key:
                    return None
                write_key = wanted
        return EventFilter(
            write_key=write_key,
            write_key_prefix=prefix,
            type=self.values.get("type"),
            event=self.values.get("event"),
            user=self.values.get("user"),
            text=self.values.get("q"),
            after=self.after,
            before=self.before,
        )

    def matches_reject(self, record: RejectedMessage) -> bool:
        """Whether a refused message passes the filters (fields read from its payload)."""
        payload = record.payload if isinstance(record.payload, dict) else {}
        checks = {
            "type": payload.get("type"),
            "event": payload.get("event"),
            "source": source_label(record.write_key),
        }
        for name, actual in checks.items():
            wanted = self.values.get(name)
            if wanted is not None and wanted != actual:
                return False
        user = self.values.get("user")
        if user is not None and user not in (payload.get("userId"), payload.get("anonymousId")):
            return False
        text = self.values.get("q")
        if text is not None:
            haystack = dumps(record.to_json()).decode("utf-8", errors="replace")
            if text.lower() not in haystack.lower():
                return False
        return True


def parse_debugger_query(items: Iterable[Tuple[str, str]]) -> Query:
    """Parse the query string of an API call; raises QueryError naming the parameter."""
    values: Dict[str, str] = {}
    for name, value in items:
        if name not in _PARAMS:
            raise QueryError(f"unknown query parameter {name!r}; allowed: {', '.join(_PARAMS)}")
        if name in values:
            raise QueryError(f"query parameter {name!r} is given more than once")
        if value != "":  # an empty filter field means "any"
            values[name] = value
    cursor: Dict[str, int] = {}
    for name in ("after", "before"):
        text = values.pop(name, None)
        if text is not None:
            if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEQ:
                raise QueryError(
                    f"{name!r} must be a sequence number (0 to {MAX_SEQ}), not {text[:32]!r}"
                )
            cursor[name] = int(text)
    if len(cursor) == 2:
        raise QueryError("give either 'after' or 'before', not both")
    limit_text = values.pop("limit", str(DEFAULT_LIMIT))
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise QueryError(
            f"'limit' must be a whole number from 1 to {MAX_LIMIT}, not {limit_text!r}"
        )
    kind = values.get("type")
    if kind is not None and kind not in MESSAGE_TYPES:
        raise QueryError(f"unknown type {kind!r}, expected one of {', '.join(MESSAGE_TYPES)}")
    return Query(values, cursor, int(limit_text))


class DebuggerAPI:
    """The debugger's request handlers, reading one store and one RejectLog."""

    def __init__(
        self,
        storage: EventStore,
        rejects: RejectLog,
        write_keys: Iterable[str],
        router: Optional[Router] = None,
    ) -> None:
        """Serve ``storage`` and ``rejects`` to readers holding one of ``write_keys``."""
        self.storage = storage
        self.router = router
        self.rejects = rejects
        self.write_keys: FrozenSet[str] = frozenset(write_keys)
        self._page: Optional[bytes] = None

    def _reader(self, request: Request) -> Tuple[Optional[str], Optional[str]]:
        """Return ``(key, None)`` for an allowed reader, or ``(None, why not)``."""
        try:
            key = basic_user(request.headers.get("authorization"))
        except ValueError as exc:
            return None, str(exc) if self.write_keys else None
        if not self.write_keys:
            return None, None
        if key is None:
            return None, "the debugger needs a write key (HTTP Basic auth, key as user name)"
        if key not in self.write_keys:
            return None, "unknown write key"
        return key, None

    async def page(self, request: Request) -> Response:
        """Serve the page (asking for a write key first when keys are configured)."""
        _key, refused = self._reader(request)
        if refused is not None:
            return HTMLResponse(_NEEDS_KEY_PAGE, 401, _REALM)
        if self._page is None:
            self._page = (
                importlib.resources.files(__package__).joinpath("static/index.html").read_bytes()
            )
        return Response(self._page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def events(self, request: Request) -> Response:
        """Serve stored events under the cursor and filters."""
        return await self._answer(request, self._events)

    async def rejected(self, request: Request) -> Response:
        """Serve refused messages under the cursor and filters."""
        return await self._answer(request, self._rejected)

    async def deliveries(self, request: Request) -> Response:
        """Serve one event's delivery status per destination, read now."""
        key, refused = self._reader(request)
        if refused is not None:
            return _json(401, {"success": False, "error": refused}, _REALM)
        if self.router is None:
            return _json(404, {"success": False, "error": "routing is not configured"})
        router = self.router
        text = request.path_params["seq"]
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_SEQ:
            return _json(400, {"success": False, "error": "'seq' must be a sequence number"})
        seq = int(text)

        def read() -> Dict[str, Any]:
            where = EventFilter(write_key=key, after=seq - 1)
            rows = [row for row in self.storage.rows(where, 1) if row.seq == seq]
            if not rows:
                return {}
            return {"seq": seq, "deliveries": deliveries_of(router, rows).get(seq, [])}

        try:
            body = await run_in_threadpool(read)
        except Exception as exc:
            if not isinstance(exc, StorageError) and type(exc).__module__ != "sqlite3":
                raise
            return _json(503, {"success": False, "error": f"storage unavailable: {exc}"})
        if not body:
            return _json(404, {"success": False, "error": f"no stored event with seq {seq}"})
        return _json(200, body)

    async def _answer(
        self, request: Request, read: Callable[[Query, Optional[str]], Dict[str, Any]]
    ) -> Response:
        key, refused = self._reader(request)
        if refused is not None:
            return _json(401, {"success": False, "error": refused}, _REALM)
        try:
            query = parse_debugger_query(request.query_params.multi_items())
        except QueryError as exc:
            return _json(400, {"success": False, "error": str(exc)})
        try:
            body = await run_in_threadpool(read, query, key)
        except Exception as exc:  # sqlite3.Error, StorageError, or another store's error
            if not isinstance(exc, StorageError) and type(exc).__module__ != "sqlite3":
                raise
            return _json(503, {"success": False, "error": f"storage unavailable: {exc}"})
        return _json(200, body)

    def _events(self, query: Query, key: Optional[str]) -> Dict[str, Any]:
        where = query.event_filter(key)
        rows = [] if where is None else self.storage.rows(where, query.limit)
        found = deliveries_of(self.router, rows) if self.router is not None and rows else {}
        events = []
        for row in rows:
            event = row.to_event()
            del event["seq"]
            item = {"seq": row.seq, "source": source_label(row.write_key), "event": event}
            if self.router is not None:
                item["deliveries"] = found.get(row.seq, [])
            events.append(item)
        return {"events": events}

    def _rejected(self, query: Query, key: Optional[str]) -> Dict[str, Any]:
        def visible(record: RejectedMessage) -> bool:
            if key is not None and record.write_key != key and record.write_key in self.write_keys:
                return False
            return query.matches_reject(record)

        found = self.rejects.page(
            after=query.after, before=query.before, limit=query.limit, visible=visible
        )
        return {"rejected": [record.to_json() for record in found], "log": self.rejects.log_id}


def _json(status: int, body: Dict[str, Any], headers: Optional[Dict[str, str]] = None) -> Response:
    return Response(dumps(body), status, headers, media_type="application/json")
