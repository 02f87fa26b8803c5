"""The ingest endpoints as a plain ASGI route, in front of Starlette's router.

``POST /v1/batch`` and friends are most of the collector's traffic. Starlette's routing
(matching every route's pattern), its ``Request``/``Response`` objects and its exception
middleware cost about as much per request as storing a batch of 10 events, so POSTs to the
ingest paths are answered here, from the raw ASGI scope; everything else (and other
methods on these paths, which get Starlette's 405) goes on to the app. The answers are the
same bytes as before: this module only reads headers and body chunks and sends the answer
that ``app._Collector.ingest`` builds. Measured in docs/performance.md.
"""

from __future__ import annotations

from typing import (
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
)

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CHALLENGE", "Answer", "IngestRoute"]

CHALLENGE = 'Basic realm="tracklane collector"'
_JSON = (b"content-type", b"application/json")
_CHALLENGE_HEADER = (b"www-authenticate", CHALLENGE.encode("latin-1"))


class Answer(NamedTuple):
    """An ingest answer: status, JSON body, and whether it asks for credentials (401)."""

    status: int
    body: bytes
    challenge: bool = False


Ingest = Callable[
    [Callable[[str], Optional[str]], AsyncIterator[bytes], Optional[str]], Awaitable[Answer]
]


class IngestRoute:
    """ASGI middleware answering POSTs to ``paths`` (path -> forced message type or None)."""

    def __init__(self, app: ASGIApp, ingest: Ingest, paths: Mapping[str, Optional[str]]) -> None:
        """Serve ``paths`` with ``ingest``; pass every other request on to ``app``."""
        self.app = app
        self.ingest = ingest
        self.paths: Dict[str, Optional[str]] = dict(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path not in self.paths:
            await self.app(scope, receive, send)
            return
        headers: List[Tuple[bytes, bytes]] = scope["headers"]

        def header(name: str) -> Optional[str]:
            wanted = name.encode("latin-1")
            for key, value in headers:
                if key == wanted:  # ASGI servers lower-case header names
                    return value.decode("latin-1")
            return None

        try:
            answer = await self.ingest(header, _body(receive), self.paths[path])
        except _ClientGone:
            return  # nothing was stored, and nobody is left to answer
        response_headers = [_JSON, (b"content-length", str(len(answer.body)).encode("latin-1"))]
        if answer.challenge:
            response_headers.append(_CHALLENGE_HEADER)
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": response_headers}
        )
        await send({"type": "http.response.body", "body": answer.body})


class _ClientGone(Exception):
    """The client disconnected before sending its whole body."""


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body's chunks; raises _ClientGone if the client goes away first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body: bytes = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return
