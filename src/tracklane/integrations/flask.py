"""Flask: configure tracklane from ``app.config`` and scope each request.

::

    from tracklane.integrations.flask import Tracklane

    app.config["TRACKLANE_WRITE_KEY"] = "..."
    Tracklane(app)            # or: tracklane_ext = Tracklane(); tracklane_ext.init_app(app)

Every ``TRACKLANE_<OPTION>`` key of ``app.config`` sets that option of the default
client (``TRACKLANE_HOST``, ``TRACKLANE_BATCH_SIZE``, ...), so ``tracklane.track(...)``
anywhere in the app uses them. ``TRACKLANE_IP_HEADER``, ``TRACKLANE_PROXY_COUNT`` and
``TRACKLANE_USER_ID`` (a function of the request returning the user's id) configure the
request scope.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import flask

import tracklane

from ._config import configure_default
from ._request import RequestSettings, open_scope, request_fields

__all__ = ["Tracklane"]

_PREFIX = "TRACKLANE_"
_REQUEST_KEYS = ("ip_header", "proxy_count", "user_id")
_TOKEN = "_tracklane_scope_token"


class Tracklane:
    """The Flask extension: ``Tracklane(app)`` or ``Tracklane().init_app(app)``."""

    def __init__(self, app: Optional[flask.Flask] = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Configure the default client from ``app.config`` and hook the request scope."""
        options: Dict[str, Any] = {}
        request: Dict[str, Any] = {}
        for key, value in app.config.items():
            if not key.startswith(_PREFIX):
                continue
            name = key[len(_PREFIX) :].lower()
            (request if name in _REQUEST_KEYS else options)[name] = value
        user_id = request.get("user_id")
        if user_id is not None and not callable(user_id):
            raise tracklane.ConfigurationError(
                "app.config['TRACKLANE_USER_ID']: must be a function of the request"
            )
        settings = RequestSettings.from_mapping(request, "app.config")
        if options:
            configure_default(options, "app.config (TRACKLANE_*)")
        app.extensions["tracklane"] = self

        def open_scope() -> None:
            flask.g.setdefault(_TOKEN, []).append(_enter(settings))

        def close_scope(_exc: Optional[BaseException]) -> None:
            tokens = flask.g.get(_TOKEN)
            if tokens:
                tracklane.context.exit(tokens.pop())

        app.before_request(open_scope)
        app.teardown_request(close_scope)


def _enter(settings: RequestSettings) -> Any:
    request = flask.request

    def fields() -> Dict[str, Any]:
        header = request.headers.get(settings.ip_header) if settings.ip_header else None
        return request_fields(
            url=request.url,
            path=request.path,
            query=request.query_string.decode("latin-1"),
            ip=settings.client_ip(request.remote_addr, header),
            user_agent=request.headers.get("User-Agent"),
            referrer=request.headers.get("Referer"),
            accept_language=request.headers.get("Accept-Language"),
        )

    def user_id() -> Any:
        return settings.user_id(request) if callable(settings.user_id) else None

    return open_scope(fields, user_id).enter()
