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

import os
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from ._client import Client
from ._context import context
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
    QueueFullError,
    RetriesExhaustedError,
    ShutdownError,
    TransportError,
    ValidationError,
)

__all__ = [
    "APIError",
    "AnalyticsError",
    "Client",
    "ConfigurationError",
    "DeliveryError",
    "DropReason",
    "FlushResult",
    "MessageTooLargeError",
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

# Settings of the default client, read when it is first needed. The first group are
# segment-analytics-python's module settings, with its defaults; the rest are tracklane's
# options, where None means "the default".
write_key: Optional[str] = None
host: Optional[str] = None
on_error: Optional[OnError] = None
debug: bool = False
log_handler: Any = None
send: bool = True
sync_mode: bool = False
max_queue_size: int = 10_000
gzip: bool = False
timeout: float = 15.0
max_retries: int = 10
proxies: Optional[Union[str, Mapping[str, str]]] = None
oauth_client_id: Optional[str] = None
oauth_client_key: Optional[str] = None
oauth_key_id: Optional[str] = None
oauth_auth_server: Optional[str] = None
oauth_scope: Optional[str] = None
upload_size: Optional[int] = None
upload_interval: Optional[float] = None
batch_size: Optional[int] = None
flush_interval: Optional[float] = None
shutdown_timeout: Optional[float] = None
region: Optional[str] = None
stub: Optional[bool] = None
overflow: Optional[str] = None
block_timeout: Optional[float] = None
queue_path: Optional[str] = None
queue_fsync: Optional[bool] = None
json_default: Optional[Callable[[Any], Any]] = None
ca_bundle: Optional[str] = None
backoff_base: Optional[float] = None
backoff_cap: Optional[float] = None
max_total_backoff: Optional[float] = None
max_retry_after: Optional[float] = None

default_client: Optional[Client] = None
_default_lock = threading.Lock()
_SETTINGS = (
    "host",
    "on_error",
    "debug",
    "log_handler",
    "send",
    "sync_mode",
    "max_queue_size",
    "gzip",
    "timeout",
    "max_retries",
    "proxies",
    "oauth_client_id",
    "oauth_client_key",
    "oauth_key_id",
    "oauth_auth_server",
    "oauth_scope",
    "upload_size",
    "upload_interval",
    "batch_size",
    "flush_interval",
    "shutdown_timeout",
    "region",
    "stub",
    "overflow",
    "block_timeout",
    "queue_path",
    "queue_fsync",
    "json_default",
    "ca_bundle",
    "backoff_base",
    "backoff_cap",
    "max_total_backoff",
    "max_retry_after",
)

Result = Tuple[bool, Dict[str, Any]]


def get_default_client() -> Client:
    """The module-level client, built on first use from the module settings and environment."""
    global default_client
    client = default_client
    if client is not None:
        return client
    with _default_lock:
        if default_client is None:
            settings = globals()
            env = Options.from_env(os.environ)
            options: Dict[str, Any] = {
                name: settings[name] for name in _SETTINGS if settings[name] is not None
            }
            if "host" not in options and "region" not in options and "host" in env:
                options["host"] = env["host"]
            if "sync_mode" in env and not sync_mode:
                options["sync_mode"] = env["sync_mode"]
            key = write_key or env.get("write_key")
            default_client = Client(key, **options)
        return default_client


def identify(*args: Any, **kwargs: Any) -> Result:
    """``identify`` on the default client."""
    return get_default_client().identify(*args, **kwargs)


def track(*args: Any, **kwargs: Any) -> Result:
    """``track`` on the default client."""
    return get_default_client().track(*args, **kwargs)


def page(*args: Any, **kwargs: Any) -> Result:
    """``page`` on the default client."""
    return get_default_client().page(*args, **kwargs)


def screen(*args: Any, **kwargs: Any) -> Result:
    """``screen`` on the default client."""
    return get_default_client().screen(*args, **kwargs)


def group(*args: Any, **kwargs: Any) -> Result:
    """``group`` on the default client."""
    return get_default_client().group(*args, **kwargs)


def alias(*args: Any, **kwargs: Any) -> Result:
    """``alias`` on the default client."""
    return get_default_client().alias(*args, **kwargs)


def flush(timeout: Optional[float] = None) -> Optional[FlushResult]:
    """Flush the default client (nothing to do if it was never used)."""
    client = default_client
    return None if client is None else client.flush(timeout)


def shutdown(timeout: Optional[float] = None) -> Optional[FlushResult]:
    """Flush and stop the default client; the next call builds a new one."""
    global default_client
    with _default_lock:
        client, default_client = default_client, None
    return None if client is None else client.shutdown(timeout)


def join(timeout: Optional[float] = None) -> Optional[FlushResult]:
    """segment-analytics-python's name for :func:`shutdown`."""
    return shutdown(timeout)


def stats() -> Optional[Stats]:
    """The default client's counters (None if it was never used)."""
    client = default_client
    return None if client is None else client.stats()


for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type):
        _value.__module__ = "tracklane"
del _name, _value
