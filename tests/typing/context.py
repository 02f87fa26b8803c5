"""Usage of tracklane.context and the framework-free integrations, checked by mypy --strict."""

from __future__ import annotations

from typing import Any, Dict

import tracklane
from tracklane.integrations.asgi import ClientLifespan, TracklaneMiddleware, lifespan
from tracklane.integrations.serverless import flush_after


@tracklane.context(app={"name": "billing"})
def charge(amount: int) -> int:
    tracklane.track("u", "Charged", {"amount": amount})
    return amount


@tracklane.context(app={"name": "billing"})
async def refund(amount: int) -> int:
    return amount


@flush_after
def handler(event: Dict[str, Any], context: Any) -> str:
    return "ok"


@flush_after(timeout=2.0, margin=0.5)
async def async_handler(event: Dict[str, Any], context: Any) -> str:
    return "ok"


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    pass


def usage() -> None:
    with tracklane.context({"my-field": 1}, ip="1.2.3.4", user_id=42) as scope:
        assert isinstance(scope, tracklane.context)
    token = tracklane.context(locale="en-GB").enter()
    tracklane.context.exit(token)
    total: int = charge(3)
    print(total, refund, handler({}, None), async_handler)
    wrapped = TracklaneMiddleware(asgi_app, ip_header="X-Forwarded-For", user_id=True)
    ClientLifespan(wrapped, tracklane.Client("k", stub=True), timeout=2.0)
    print(lifespan(lambda: tracklane.Client("k", stub=True)))
    tracklane.flush_on_signal()
