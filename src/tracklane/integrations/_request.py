"""What every web integration puts in a request's scope, from framework-neutral parts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

import tracklane

__all__ = ["RequestSettings", "open_scope", "parse_locale", "request_fields", "user_id_of"]

logger = logging.getLogger("tracklane")


@dataclass(frozen=True)
class RequestSettings:
    """How to read a request: where the client's address is, and whether to set ``userId``.

    ``ip_header`` names a header set by a proxy you trust (``X-Forwarded-For``,
    ``X-Real-IP``); ``proxy_count`` is how many proxies append to it, so the client's
    address is that many entries from the right. Without ``ip_header`` the address is the
    connection's peer. Never trust a forwarding header that no proxy of yours rewrites.
    """

    ip_header: Optional[str] = None
    proxy_count: int = 1
    user_id: Any = False

    def __post_init__(self) -> None:
        if self.ip_header is not None and (
            not isinstance(self.ip_header, str) or not self.ip_header.strip()
        ):
            raise tracklane.ConfigurationError(
                "ip_header: must be a header name such as 'X-Forwarded-For'"
            )
        if isinstance(self.proxy_count, bool) or not isinstance(self.proxy_count, int):
            raise tracklane.ConfigurationError("proxy_count: must be a whole number of proxies")
        if self.proxy_count < 1:
            raise tracklane.ConfigurationError("proxy_count: must be at least 1")
        if not (isinstance(self.user_id, (bool, str)) or callable(self.user_id)):
            raise tracklane.ConfigurationError(
                "user_id: True, False, an attribute name of the user, or a function"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> RequestSettings:
        """Settings from a mapping of ``ip_header``, ``proxy_count`` and ``user_id``."""
        try:
            return cls(**dict(values))
        except TypeError as exc:
            raise tracklane.ConfigurationError(f"{where}: {exc}") from None
        except tracklane.ConfigurationError as exc:
            raise tracklane.ConfigurationError(f"{where}: {exc}") from None

    def client_ip(self, peer: Optional[str], header: Optional[str]) -> Optional[str]:
        """The client's address: from the trusted header when configured, else the peer's."""
        if self.ip_header is None:
            return peer or None
        if not header:
            return peer or None
        hops = [hop.strip() for hop in header.split(",") if hop.strip()]
        if not hops:
            return peer or None
        return hops[-self.proxy_count] if len(hops) >= self.proxy_count else hops[0]


def parse_locale(accept_language: Optional[str]) -> Optional[str]:
    """The preferred language tag of an ``Accept-Language`` header (``en-US``), if any."""
    if not accept_language:
        return None
    best: Optional[str] = None
    best_q = 0.0
    for item in accept_language.split(","):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*":
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > best_q:
            best, best_q = tag, quality
    return best


def request_fields(
    *,
    url: str,
    path: str,
    query: str,
    ip: Optional[str],
    user_agent: Optional[str],
    referrer: Optional[str],
    accept_language: Optional[str],
) -> Dict[str, Any]:
    """Segment ``context`` fields for one request: ``ip``, ``userAgent``, ``page``, ``locale``."""
    page: Dict[str, Any] = {"path": path, "url": url, "search": f"?{query}" if query else ""}
    if referrer:
        page["referrer"] = referrer
    fields: Dict[str, Any] = {"page": page}
    if ip:
        fields["ip"] = ip
    if user_agent:
        fields["userAgent"] = user_agent
    locale = parse_locale(accept_language)
    if locale:
        fields["locale"] = locale
    return fields


def user_id_of(user: Any, setting: Any, attribute: str) -> Any:
    """The id of an authenticated ``user`` by the ``user_id`` setting (None if anonymous).

    ``True`` reads ``attribute`` (Django's ``pk``, Starlette's ``identity``), a string
    names another attribute (``"username"``).
    """
    if user is None or setting is False or not getattr(user, "is_authenticated", False):
        return None
    return getattr(user, setting if isinstance(setting, str) else attribute, None)


def open_scope(
    fields: Callable[[], Dict[str, Any]], user_id: Callable[[], Any]
) -> tracklane.context:
    """The request's scope; reading the request or its user never breaks the request.

    What fails is logged and left out (a user lookup that raises, an id of a bad type).
    """
    try:
        found = fields()
    except Exception:
        logger.exception("tracklane: could not read the request's context fields")
        found = {}
    try:
        return tracklane.context(found, user_id=user_id())
    except Exception:
        logger.exception("tracklane: could not read the request's user id; sending none")
        return tracklane.context(found)
