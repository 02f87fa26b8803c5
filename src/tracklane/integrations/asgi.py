"""ASGI (Starlette, FastAPI, any ASGI app): a request scope middleware and a lifespan helper.

::

    from tracklane.integrations.asgi import TracklaneMiddleware, lifespan

    app = FastAPI(lifespan=lifespan())          # shuts the default client down at exit
    app.add_middleware(TracklaneMiddleware)     # or: app = TracklaneMiddleware(app)

    application = ClientLifespan(get_asgi_application())   # Django, or any ASGI app

Plain ASGI: no framework is imported. Why the lifespan matters: uvicorn (0.29 and later)
ends its process by raising the stop signal again after a graceful shutdown, so
``atexit``, where tracklane flushes by itself, never runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    MutableMapping,
    Optional,
    Union,
)

import tracklane

from ._request import RequestSettings, open_scope, request_fields, user_id_of

__all__ = ["ClientLifespan", "TracklaneMiddleware", "lifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TracklaneMiddleware:
    """Open a :func:`tracklane.context` scope for each HTTP request and WebSocket.

    Sets ``ip``, ``userAgent``, ``page`` and ``locale``. ``ip_header`` and
    ``proxy_count`` read the client's address from a trusted proxy's header;
    ``user_id=True`` takes ``scope["user"].identity`` when authenticated (Starlette's
    ``AuthenticationMiddleware`` must run first), a string names another attribute of the
    user, and a function of the ASGI scope returns the id itself.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        ip_header: Optional[str] = None,
        proxy_count: int = 1,
        user_id: Union[bool, str, Callable[[Scope], Any]] = False,
    ) -> None:
        self.app = app
        self.settings = RequestSettings(ip_header, proxy_count, user_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = open_scope(lambda: self.fields(scope), lambda: self._user_id(scope)).enter()
        try:
            await self.app(scope, receive, send)
        finally:
            tracklane.context.exit(token)

    def fields(self, scope: Scope) -> Dict[str, Any]:
        """The request's Segment ``context`` fields."""
        headers: Dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        client = scope.get("client")
        peer = client[0] if client else None
        header = headers.get(self.settings.ip_header.lower()) if self.settings.ip_header else None
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and not path.startswith(root):  # servers differ on whether path includes it
            path = root + path
        query = (scope.get("query_string") or b"").decode("latin-1")
        return request_fields(
            url=_url(scope, headers, path, query),
            path=path,
            query=query,
            ip=self.settings.client_ip(peer, header),
            user_agent=headers.get("user-agent"),
            referrer=headers.get("referer"),
            accept_language=headers.get("accept-language"),
        )

    def _user_id(self, scope: Scope) -> Any:
        setting = self.settings.user_id
        if setting is False:
            return None
        if callable(setting) and not isinstance(setting, bool):
            return setting(scope)
        return user_id_of(scope.get("user"), setting, "identity")


def _url(scope: Scope, headers: Dict[str, str], path: str, query: str) -> str:
    scheme = scope.get("scheme") or ("ws" if scope["type"] == "websocket" else "http")
    host = headers.get("host")
    if host is None and scope.get("server"):
        server_host, port = scope["server"]
        default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)
        host = server_host if port in (None, default) else f"{server_host}:{port}"
    url = f"{scheme}://{host or ''}{path}"
    return f"{url}?{query}" if query else url


ClientOrFactory = Union[Any, Callable[[], Any], None]


def lifespan(
    client: ClientOrFactory = None,
    *,
    timeout: Optional[float] = None,
    state_key: str = "tracklane",
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Dict[str, Any]]]:
    """A lifespan for Starlette and FastAPI (``FastAPI(lifespan=lifespan(...))``).

    ``client`` is a ``tracklane.Client``, a ``tracklane.AsyncClient``, a function that
    builds one (called, and awaited if it is a coroutine function, at start-up), or
    ``None`` for the default client. A given client is in the lifespan state as
    ``request.state.tracklane``. At exit it is shut down within ``timeout`` seconds
    (default: its ``shutdown_timeout``): awaited for an ``AsyncClient``, in a worker
    thread for a ``Client`` so that the event loop keeps running.
    """

    @contextlib.asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[Dict[str, Any]]:
        made = await _resolve(client)
        try:
            yield {} if made is None else {state_key: made}
        finally:
            await _shutdown(made, timeout)

    return run


async def _resolve(client: ClientOrFactory) -> Any:
    if client is None:
        return None
    if not callable(client) or hasattr(client, "track"):
        return client
    made = client()
    return await made if inspect.isawaitable(made) else made


async def _shutdown(client: Any, timeout: Optional[float]) -> None:
    if client is None:
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(tracklane.shutdown, timeout)
        )
        return
    shutdown = client.shutdown
    if inspect.iscoroutinefunction(shutdown):
        await shutdown(timeout)
        return
    await asyncio.get_running_loop().run_in_executor(None, functools.partial(shutdown, timeout))


class ClientLifespan:
    """Wrap any ASGI app so that the server's lifespan shutdown shuts the client down.

    For apps without a ``lifespan=`` parameter of their own (Django's ASGI handler, which
    refuses lifespan events, or a bare ASGI callable). Lifespan events still reach the
    app when it handles them; when it refuses them, this wrapper answers them itself.
    ``client`` and ``timeout`` are as for :func:`lifespan`.
    """

    def __init__(
        self, app: ASGIApp, client: ClientOrFactory = None, *, timeout: Optional[float] = None
    ) -> None:
        self.app = app
        self._client_or_factory = client
        self._timeout = timeout
        self.client: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        received: List[Message] = []

        async def tracked_receive() -> Message:
            message = await receive()
            received.append(message)
            if message["type"] == "lifespan.startup":
                self.client = await _resolve(self._client_or_factory)
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await _shutdown(self.client, self._timeout)
            await send(message)

        try:
            await self.app(scope, tracked_receive, tracked_send)
        except Exception:
            if received:  # the app took part in the lifespan, then failed: not ours to hide
                raise
            await self._answer(receive, send)

    async def _answer(self, receive: Receive, send: Send) -> None:
        """The lifespan protocol for an app that refuses it: start, then stop the client."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.client = await _resolve(self._client_or_factory)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _shutdown(self.client, self._timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return
