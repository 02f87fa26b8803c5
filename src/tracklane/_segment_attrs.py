"""segment-analytics-python's public ``Client`` attributes, read-only, with its values.

Code written for segment reads ``client.write_key``, ``client.host``, ``client.send`` ... and
calls ``client.log.setLevel(...)``; these properties give it the values segment would:
``host`` and ``on_error`` as they were given (``None`` when not), ``send`` as the opposite
of ``stub``. They are views of the client's validated :class:`~tracklane.Options`, which stay
the one source of truth; changing an option means building a new client, as in segment.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Union

from .config import OnError, Options

__all__ = ["SegmentAttributes"]

_logger = logging.getLogger("tracklane")


class SegmentAttributes:
    """Read-only attributes of segment's ``Client``, for a class that has ``options``."""

    options: Options
    _given: Mapping[str, Any]
    """``host`` and ``on_error`` exactly as the caller gave them."""

    log = _logger
    """The library's logger (``tracklane``); segment's is ``segment``."""

    @property
    def write_key(self) -> str:
        """The write key."""
        return self.options.write_key

    @property
    def host(self) -> Optional[str]:
        """The host as given (``None`` when not given, which means ``https://api.segment.io``)."""
        return self._given.get("host")

    @property
    def debug(self) -> bool:
        """Whether ``debug=True`` was given."""
        return self.options.debug

    @property
    def send(self) -> bool:
        """False when nothing goes over the network (``send=False`` or ``stub=True``)."""
        return self.options.send

    @property
    def sync_mode(self) -> bool:
        """Whether each call delivers inline."""
        return self.options.sync_mode

    @property
    def gzip(self) -> bool:
        """Whether request bodies are compressed."""
        return self.options.gzip

    @property
    def timeout(self) -> float:
        """Seconds allowed for one request."""
        return self.options.timeout

    @property
    def max_retries(self) -> int:
        """Retries of a failing request."""
        return self.options.max_retries

    @property
    def on_error(self) -> Optional[OnError]:
        """The ``on_error`` callback as given (``None`` when not given)."""
        return self._given.get("on_error")

    @property
    def proxies(self) -> Optional[Union[str, Mapping[str, str]]]:
        """The ``proxies`` option."""
        return self.options.proxies

    @property
    def max_total_backoff_duration(self) -> float:
        """segment's name for ``max_total_backoff``."""
        return self.options.max_total_backoff

    @property
    def max_rate_limit_duration(self) -> float:
        """segment's name for ``max_retry_after``."""
        return self.options.max_retry_after
