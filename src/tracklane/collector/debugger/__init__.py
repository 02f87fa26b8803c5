"""The debugger: a live page of what the collector receives, served at ``/``.

``install_debugger(app, ...)`` adds the page, its static assets (shipped inside this
package: no CDN, no build step) and its JSON API under ``/debugger/api/``, and wraps
the app so that refused messages are recorded for the page (see ``_capture``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tracklane.collector._rejects import RejectLog
from tracklane.collector.debugger._api import DebuggerAPI
from tracklane.collector.debugger._capture import RejectCapture
from tracklane.collector.stores import EventStore

if TYPE_CHECKING:
    from tracklane.collector.router import Router

__all__ = ["ASSETS_PACKAGE", "install_debugger"]

ASSETS_PACKAGE = ("tracklane.collector.debugger", "static")


def install_debugger(
    app: Starlette,
    storage: EventStore,
    write_keys: Iterable[str],
    ingest_paths: Iterable[str],
    router: Optional[Router] = None,
) -> RejectLog:
    """Serve the debugger from ``app`` and record refusals on ``ingest_paths``.

    Returns the RejectLog (also ``app.state.rejects``).
    """
    rejects = RejectLog()
    api = DebuggerAPI(storage, rejects, write_keys, router)
    app.router.routes.extend(
        [
            Route("/", api.page, methods=["GET"]),
            Route("/debugger/api/events", api.events, methods=["GET"]),
            Route("/debugger/api/events/{seq}/deliveries", api.deliveries, methods=["GET"]),
            Route("/debugger/api/rejected", api.rejected, methods=["GET"]),
            Mount("/debugger/static", StaticFiles(packages=[ASSETS_PACKAGE]), name="static"),
        ]
    )
    app.add_middleware(RejectCapture, log=rejects, paths=tuple(ingest_paths))
    app.state.rejects = rejects
    return rejects
