"""HTTP routes about destinations: status, dead letters and replay.

- ``GET /v1/destinations``: ``{"destinations": [{name, type, delivered, pending, failed,
  deadLettered, filtered, skipped, lastError, lastErrorAt, lastDeliveredAt, lagSeconds}]}``
- ``GET /v1/destinations/{name}/dead-letters?limit=N``: the newest dead letters
- ``POST /v1/destinations/{name}/replay``: send every dead letter again;
  ``{"replayed": N}``

With write keys configured, each route needs one of them as HTTP Basic user name.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Optional

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracklane.collector._auth import basic_user
from tracklane.collector._json import dumps
from tracklane.collector.router import Router

__all__ = ["destination_routes"]


def destination_routes(router: Router, write_keys: FrozenSet[str]) -> List[Route]:
    """The routes, reading from and acting on ``router``."""

    def refused(request: Request) -> Optional[Response]:
        if not write_keys:
            return None
        user = _basic_user(request.headers.get("authorization"))
        if user in write_keys:
            return None
        return _json(
            401,
            {"success": False, "error": "this needs a write key (HTTP Basic auth)"},
            {"WWW-Authenticate": 'Basic realm="tracklane collector"'},
        )

    def known(name: str) -> Optional[Response]:
        if name in router.destinations:
            return None
        return _json(404, {"success": False, "error": f"no destination is named {name!r}"})

    async def status(request: Request) -> Response:
        problem = refused(request)
        if problem is not None:
            return problem
        found = await run_in_threadpool(router.status)
        return _json(200, {"destinations": [item.to_json() for item in found]})

    async def dead_letters(request: Request) -> Response:
        name = request.path_params["name"]
        problem = refused(request) or known(name)
        if problem is not None:
            return problem
        text = request.query_params.get("limit", "100")
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 10_000:
            return _json(400, {"success": False, "error": "'limit' must be from 1 to 10000"})
        found = await run_in_threadpool(router.outbox.dead_letters, name, int(text))
        return _json(200, {"destination": name, "deadLetters": [d.to_json() for d in found]})

    async def replay(request: Request) -> Response:
        name = request.path_params["name"]
        problem = refused(request) or known(name)
        if problem is not None:
            return problem
        count = await run_in_threadpool(router.outbox.replay, name)
        return _json(200, {"success": True, "destination": name, "replayed": count})

    return [
        Route("/v1/destinations", status, methods=["GET"]),
        Route("/v1/destinations/{name}/dead-letters", dead_letters, methods=["GET"]),
        Route("/v1/destinations/{name}/replay", replay, methods=["POST"]),
    ]


def _basic_user(header: Optional[str]) -> Optional[str]:
    """The write key of usable Basic credentials; None for none or unusable ones."""
    try:
        return basic_user(header)
    except ValueError:
        return None


def _json(status: int, body: object, headers: Optional[Dict[str, str]] = None) -> Response:
    return Response(dumps(body), status, headers, media_type="application/json")
