"""tracklane: a server-side analytics client for Segment's HTTP Tracking API.

A drop-in replacement for segment-analytics-python::

    import tracklane as analytics

    analytics.write_key = "YOUR_WRITE_KEY"
    analytics.track("user-1", "Signed Up", {"plan": "pro"})

Messages are validated and encoded at the call, queued in memory, and delivered in batches
by one background thread per client. Nothing is dropped without being counted in
``stats()`` and reported to ``on_error``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from ._client import Client
from ._context import context
from ._default import DefaultClient
from ._signals import flush_on_signal
from ._stats import DropReason, FlushResult, Stats
from ._version import __version__
from .config import OnError, Options, OverflowPolicy
from .exceptions import (
    AnalyticsError,
    APIError,
    ConfigurationError,
    DeliveryError,
    MessageTooLargeError,
    OAuthError,
    QueueFullError,
    RetriesExhaustedError,
    ShutdownError,
    TransportError,
    ValidationError,
)

if TYPE_CHECKING:
    from ._aio_client import AsyncClient


def __getattr__(name: str) -> Any:
    # AsyncClient is imported on first use: asyncio would add tens of milliseconds to the
    # start of every program that only uses Client.
    if name == "AsyncClient":
        from ._aio_client import AsyncClient

        AsyncClient.__module__ = "tracklane"
        return AsyncClient
    raise AttributeError(f"module 'tracklane' has no attribute {name!r}")


__all__ = [
    "APIError",
    "AnalyticsError",
    "AsyncClient",
    "Client",
    "ConfigurationError",
    "DeliveryError",
    "DropReason",
    "FlushResult",
    "MessageTooLargeError",
    "OAuthError",
    "OnError",
    "Options",
    "OverflowPolicy",
    "QueueFullError",
    "RetriesExhaustedError",
    "ShutdownError",
    "Stats",
    "TransportError",
    "ValidationError",
    "__version__",
    "alias",
    "context",
    "flush",
    "flush_on_signal",
    "get_default_client",
    "group",
    "identify",
    "join",
    "page",
    "screen",
    "shutdown",
    "stats",
    "track",
]

# Settings of the default client, read when it is built (the first module-level call, or
# the first after shutdown()): every option of Client, under the same names. The first group
# are segment-analytics-python's module settings, with its defaults; the rest are None,
# meaning "Client's default". This is the one list: _default reads these names.
write_key: Optional[str] = None
host: Optional[str] = None
on_error: Optional[OnError] = None
debug: bool = False
log_handler: Optional[logging.Handler] = None
send: bool = True
sync_mode: bool = False
max_queue_size: int = 10_000
gzip: bool = False
timeout: float = 15
max_retries: int = 10
oauth_client_id: Optional[str] = None
oauth_client_key: Optional[Union[str, bytes]] = None
oauth_key_id: Optional[str] = None
oauth_auth_server: str = "https://oauth2.segment.io"
oauth_scope: str = "tracking_api:write"
proxies: Optional[Union[str, Mapping[str, str]]] = None
upload_size: Optional[int] = None
upload_interval: Optional[float] = None
max_total_backoff_duration: Optional[float] = None
max_rate_limit_duration: Optional[float] = None
flush_at: Optional[int] = None
batch_size: Optional[int] = None
flush_interval: Optional[float] = None
shutdown_timeout: Optional[float] = None
region: Optional[str] = None
stub: Optional[bool] = None
overflow: Optional[Union[str, OverflowPolicy]] = None
block_timeout: Optional[float] = None
queue_path: Optional[str] = None
queue_fsync: Optional[bool] = None
json_default: Optional[Callable[[Any], Any]] = None
decimal_as: Optional[str] = None
ca_bundle: Optional[str] = None
verify: Optional[str] = None
backoff_base: Optional[float] = None
backoff_cap: Optional[float] = None
max_total_backoff: Optional[float] = None
max_retry_after: Optional[float] = None

default_client: Optional[Client] = None
"""The client the module functions use; built on first use, as in segment-analytics-python.
Set it to ``None`` to have the next call build a new one from the settings."""

_DEFAULT = DefaultClient(globals())
_default_lock = _DEFAULT.lock

identify = _DEFAULT.forward(Client.identify)
track = _DEFAULT.forward(Client.track)
page = _DEFAULT.forward(Client.page)
screen = _DEFAULT.forward(Client.screen)
group = _DEFAULT.forward(Client.group)
alias = _DEFAULT.forward(Client.alias)


def get_default_client() -> Client:
    """The module-level client, built on first use from the module settings and environment."""
    return _DEFAULT.get()


def flush(timeout: Optional[float] = None) -> FlushResult:
    """Send everything the default client holds; wait at most ``timeout`` seconds (30)."""
    return _DEFAULT.flush(timeout)


def shutdown(timeout: Optional[float] = None) -> FlushResult:
    """Flush and stop the default client; the next module-level call builds a new one."""
    return _DEFAULT.shutdown(timeout)


def join(timeout: Optional[float] = None) -> FlushResult:
    """segment-analytics-python's name for :func:`shutdown`."""
    return _DEFAULT.shutdown(timeout)


def stats() -> Optional[Stats]:
    """The default client's counters (None if it was never used)."""
    client = default_client
    return None if client is None else client.stats()


for _name in __all__:
    _value = globals().get(_name)  # AsyncClient: set in __getattr__
    if isinstance(_value, type):
        _value.__module__ = "tracklane"
del _name, _value
