"""Django: configure tracklane from ``settings.TRACKLANE`` and scope each request.

::

    INSTALLED_APPS += ["tracklane.integrations.django"]
    MIDDLEWARE += ["tracklane.integrations.django.TracklaneMiddleware"]
    TRACKLANE = {"write_key": "...", "host": "https://api.segment.io", "user_id": True}

``TRACKLANE`` holds the default client's options (``write_key``, ``host``,
``batch_size``, ...) and the middleware's: ``ip_header`` and ``proxy_count`` (read the
client's address from a trusted proxy's header) and ``user_id`` (``True`` for
``request.user.pk``, an attribute name, or a function of the request; off by default).
Works under WSGI and ASGI, with sync and async views.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Tuple, Union, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase

import tracklane
from tracklane.integrations._request import (
    RequestSettings,
    open_scope,
    request_fields,
    user_id_of,
)

__all__ = ["REQUEST_KEYS", "TracklaneMiddleware", "split_settings"]

REQUEST_KEYS = ("ip_header", "proxy_count", "user_id")
"""Keys of ``settings.TRACKLANE`` that configure the middleware, not the client."""

logger = logging.getLogger("tracklane")

Handler = Callable[[HttpRequest], Union[HttpResponseBase, Awaitable[HttpResponseBase]]]


def split_settings(values: Any) -> Tuple[Dict[str, Any], RequestSettings]:
    """``settings.TRACKLANE`` as (client options, middleware settings), checked."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise tracklane.ConfigurationError(
            f"settings.TRACKLANE: must be a dict of options, not {type(values).__name__}"
        )
    request = {key: values[key] for key in REQUEST_KEYS if key in values}
    client = {key: value for key, value in values.items() if key not in REQUEST_KEYS}
    return client, RequestSettings.from_mapping(request, "settings.TRACKLANE")


def _settings() -> RequestSettings:
    from django.conf import settings

    return split_settings(getattr(settings, "TRACKLANE", None))[1]


class TracklaneMiddleware:
    """Open a :func:`tracklane.context` scope for each request.

    Sets ``ip``, ``userAgent``, ``page`` (``url``, ``path``, ``search``, ``referrer``)
    and ``locale``; with ``user_id`` configured, also the authenticated user's id as the
    ``userId`` of calls that give none. Put it after ``AuthenticationMiddleware``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        self.settings = _settings()
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._call_async(request)
        with open_scope(lambda: self.fields(request), lambda: self._user_id(request)):
            return self.get_response(request)

    async def _call_async(self, request: HttpRequest) -> HttpResponseBase:
        user_id: Any = None
        if self.settings.user_id is not False:
            try:  # the user may need the database: never from the event loop
                user_id = await sync_to_async(self._user_id)(request)
            except Exception:
                logger.exception("tracklane: could not read the request's user id; sending none")
        token = open_scope(lambda: self.fields(request), lambda: user_id).enter()
        try:
            return await cast(Awaitable[HttpResponseBase], self.get_response(request))
        finally:
            tracklane.context.exit(token)

    def fields(self, request: HttpRequest) -> Dict[str, Any]:
        """The request's Segment ``context`` fields."""
        meta = request.META
        try:
            url = request.build_absolute_uri()
        except Exception:  # a Host that ALLOWED_HOSTS refuses: Django answers 400 itself
            url = request.get_full_path()
        header: Optional[str] = None
        if self.settings.ip_header is not None:
            header = meta.get("HTTP_" + self.settings.ip_header.upper().replace("-", "_"))
        return request_fields(
            url=url,
            path=request.path,
            query=meta.get("QUERY_STRING", ""),
            ip=self.settings.client_ip(meta.get("REMOTE_ADDR"), header),
            user_agent=meta.get("HTTP_USER_AGENT"),
            referrer=meta.get("HTTP_REFERER"),
            accept_language=meta.get("HTTP_ACCEPT_LANGUAGE"),
        )

    def _user_id(self, request: HttpRequest) -> Any:
        setting = self.settings.user_id
        if setting is False:
            return None
        if callable(setting) and not isinstance(setting, bool):
            return setting(request)
        return user_id_of(getattr(request, "user", None), setting, "pk")
