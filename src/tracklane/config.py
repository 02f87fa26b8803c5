"""Client options: defaults, aliases from the peers' names, validation and environment."""

from __future__ import annotations

import enum
import ipaddress
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union
from urllib.parse import urlsplit

from .exceptions import ConfigurationError

__all__ = [
    "DEFAULT_HOST",
    "EU_HOST",
    "OnError",
    "Options",
    "OverflowPolicy",
    "normalize_host",
]

DEFAULT_HOST = "https://api.segment.io"
DEFAULT_OAUTH_AUTH_SERVER = "https://oauth2.segment.io"
DEFAULT_OAUTH_SCOPE = "tracking_api:write"
DECIMAL_FORMATS = ("string", "number")
EU_HOST = "https://events.eu1.segmentapis.com"
REGIONS = {"us": DEFAULT_HOST, "eu": EU_HOST}

MAX_MESSAGE_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500_000
MAX_BATCH_MESSAGES = 2_500

DEFAULT_FLUSH_TIMEOUT = 30.0
"""How long ``flush()`` waits when it is given no timeout."""

OnError = Callable[[BaseException, List[Dict[str, Any]]], Any]
"""``on_error(exc, batch)``: told about every dropped message, with the messages."""


class OverflowPolicy(str, enum.Enum):
    """What ``track()`` does when the queue already holds ``max_queue_size`` messages."""

    DROP_NEWEST = "drop_newest"
    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


# Names accepted from segment-analytics-python and posthog, mapped to ours.
ALIASES = {
    "upload_size": "batch_size",
    "flush_at": "batch_size",
    "upload_interval": "flush_interval",
    "max_total_backoff_duration": "max_total_backoff",
    "max_rate_limit_duration": "max_retry_after",
    "verify": "ca_bundle",
}
# Accepted for drop-in compatibility; they change nothing here (one worker per client).
IGNORED = frozenset({"thread"})
OAUTH_CREDENTIALS = ("oauth_client_id", "oauth_client_key", "oauth_key_id")
OAUTH_EXTRA_HINT = "pip install 'tracklane[oauth]'"


@dataclass(frozen=True)
class Options:
    """Validated settings of one client. Build it with :meth:`Options.build`."""

    write_key: str
    host: str = DEFAULT_HOST
    debug: bool = False
    max_queue_size: int = 10_000
    send: bool = True
    on_error: Optional[OnError] = None
    gzip: bool = False
    max_retries: int = 10
    sync_mode: bool = False
    timeout: float = 15.0
    proxies: Optional[Union[str, Mapping[str, str]]] = None
    batch_size: int = 100
    flush_interval: float = 0.5
    shutdown_timeout: float = 5.0
    overflow: OverflowPolicy = OverflowPolicy.DROP_NEWEST
    block_timeout: float = 1.0
    queue_path: Optional[str] = None
    queue_fsync: bool = False
    json_default: Optional[Callable[[Any], Any]] = None
    ca_bundle: Optional[Union[str, bool]] = None
    backoff_base: float = 0.5
    backoff_cap: float = 10.0
    max_total_backoff: float = 300.0
    max_retry_after: float = 60.0
    log_handler: Any = None
    decimal_as: str = "string"
    oauth_client_id: Optional[str] = None
    oauth_client_key: Optional[Union[str, bytes]] = field(default=None, repr=False)
    oauth_key_id: Optional[str] = None
    oauth_auth_server: str = DEFAULT_OAUTH_AUTH_SERVER
    oauth_scope: str = DEFAULT_OAUTH_SCOPE

    @property
    def stub(self) -> bool:
        """True when nothing may go over the network (``stub=True`` or ``send=False``)."""
        return not self.send

    @property
    def oauth(self) -> bool:
        """True when batches authenticate with an OAuth access token instead of Basic auth."""
        return self.oauth_client_id is not None

    @property
    def batch_url(self) -> str:
        """The URL batches are posted to."""
        return self.host + "/v1/batch"

    @classmethod
    def build(cls, write_key: Optional[str] = None, **given: Any) -> Options:
        """Validate the keyword options of ``Client`` (with the peers' aliases) once."""
        values: Dict[str, Any] = {}
        for name, value in given.items():
            if name in IGNORED:
                continue
            if name in ("on_error", "log_handler", *OAUTH_CREDENTIALS) and not value:
                value = None  # segment-analytics-python reads a falsy value as "none"
            if name in ("host", "oauth_auth_server", "oauth_scope") and value in (None, ""):
                continue  # not given: the default
            target = ALIASES.get(name, name)
            if target in values and values[target] != value:
                raise ConfigurationError(f"{name}: conflicts with another name for {target}")
            values[target] = value
        stub = values.pop("stub", None)
        if stub is not None and not isinstance(stub, bool):
            raise ConfigurationError("stub: must be True or False")
        if stub is not None:
            values["send"] = values.get("send", True) and not stub
        region = values.pop("region", None)
        host = values.pop("host", None)
        values["host"] = _resolve_host(host, region)
        if write_key is None:
            write_key = values.pop("write_key", None)
        else:
            values.pop("write_key", None)
        if not isinstance(write_key, str) or not write_key:
            raise ConfigurationError("write_key: a non-empty string is required")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(f"{unknown[0]}: unknown option")
        options = cls(write_key=write_key, **values)
        options._validate()
        return options

    @classmethod
    def accepted_names(cls) -> frozenset[str]:
        """Every keyword ``Client`` accepts as an option: ours, and the peers' aliases."""
        return (
            frozenset(cls.__dataclass_fields__) | frozenset(ALIASES) | IGNORED | {"stub", "region"}
        )

    def _validate(self) -> None:
        _positive_int("max_queue_size", self.max_queue_size)
        _positive_int("batch_size", self.batch_size)
        if self.batch_size > MAX_BATCH_MESSAGES:
            raise ConfigurationError(
                f"batch_size: at most {MAX_BATCH_MESSAGES} (got {self.batch_size})"
            )
        _non_negative_int("max_retries", self.max_retries)
        for name in ("flush_interval", "shutdown_timeout", "block_timeout", "max_total_backoff"):
            _non_negative_number(name, getattr(self, name))
        for name in ("timeout", "backoff_base", "backoff_cap", "max_retry_after"):
            _non_negative_number(name, getattr(self, name))
        if self.timeout == 0:
            raise ConfigurationError("timeout: must be greater than 0")
        for name in ("debug", "send", "gzip", "sync_mode", "queue_fsync"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"{name}: must be True or False")
        try:
            object.__setattr__(self, "overflow", OverflowPolicy(self.overflow))
        except ValueError:
            choices = ", ".join(repr(p.value) for p in OverflowPolicy)
            raise ConfigurationError(f"overflow: must be one of {choices}") from None
        for name in ("on_error", "json_default"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigurationError(f"{name}: must be callable")
        if self.queue_path is not None and not isinstance(self.queue_path, (str, os.PathLike)):
            raise ConfigurationError("queue_path: must be a path")
        if self.ca_bundle is True:
            object.__setattr__(self, "ca_bundle", None)
        elif self.ca_bundle is not None and not isinstance(self.ca_bundle, (str, os.PathLike)):
            raise ConfigurationError(
                "ca_bundle: must be a path to a CA bundle; certificates are always verified"
            )
        if self.proxies is not None and not isinstance(self.proxies, (str, Mapping)):
            raise ConfigurationError("proxies: must be a URL or a mapping of scheme to URL")
        if self.decimal_as not in DECIMAL_FORMATS:
            raise ConfigurationError(
                f"decimal_as: must be 'string' or 'number' (got {self.decimal_as!r})"
            )
        self._validate_oauth()

    def _validate_oauth(self) -> None:
        given = [name for name in OAUTH_CREDENTIALS if getattr(self, name) is not None]
        if not given:
            return
        missing = [name for name in OAUTH_CREDENTIALS if name not in given]
        if missing:
            raise ConfigurationError(
                f"{missing[0]}: required for OAuth together with {', '.join(given)}"
            )
        for name in ("oauth_client_id", "oauth_key_id", "oauth_scope"):
            if not isinstance(getattr(self, name), str):
                raise ConfigurationError(f"{name}: must be a string")
        server = self.oauth_auth_server
        parts = urlsplit(server) if isinstance(server, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"oauth_auth_server: not an http(s) URL: {server!r}")
        object.__setattr__(self, "oauth_auth_server", server.rstrip("/"))
        try:
            import jwt  # noqa: F401
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
        except ImportError:
            raise ConfigurationError(
                f"oauth_client_id: OAuth needs PyJWT and cryptography: {OAUTH_EXTRA_HINT}"
            ) from None
        key = self.oauth_client_key
        if not isinstance(key, (str, bytes)):
            raise ConfigurationError("oauth_client_key: must be a PEM private key (text)")
        try:
            data = key.encode() if isinstance(key, str) else key
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigurationError(
                "oauth_client_key: not a PEM private key without a password"
            ) from None
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ConfigurationError("oauth_client_key: must be an RSA private key (RS256)")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
        """Options for the default client found in the environment."""
        env = os.environ if environ is None else environ
        found: Dict[str, Any] = {}
        key = env.get("TRACKLANE_WRITE_KEY") or env.get("SEGMENT_WRITE_KEY")
        if key:
            found["write_key"] = key
        host = env.get("TRACKLANE_HOST")
        if host:
            found["host"] = host
        sync = env.get("TRACKLANE_SYNC_MODE")
        if sync:
            found["sync_mode"] = sync.strip().lower() in ("1", "true", "yes", "on")
        return found


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name}: must be a whole number of at least 1 (got {value!r})")


def _non_negative_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name}: must be a whole number of at least 0 (got {value!r})")


def _non_negative_number(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or math.isnan(value) or math.isinf(value):  # type: ignore[operator,arg-type]
        raise ConfigurationError(f"{name}: must be a finite number of seconds >= 0 (got {value!r})")


def _resolve_host(host: Optional[str], region: Optional[str]) -> str:
    if region is not None:
        if region not in REGIONS:
            raise ConfigurationError(f"region: must be one of {sorted(REGIONS)} (got {region!r})")
        if host is not None and normalize_host(host) != REGIONS[region]:
            raise ConfigurationError("region: give either host or region, not both")
        return REGIONS[region]
    if host is None:
        return DEFAULT_HOST
    return normalize_host(host)


def normalize_host(host: str) -> str:
    """``api.segment.io``, ``https://api.segment.io/`` and ``.../v1`` all give the same base URL."""
    if not isinstance(host, str) or not host.strip():
        raise ConfigurationError("host: must be a non-empty URL or host name")
    text = host.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ConfigurationError(f"host: not a valid URL: {host!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"host: not an http(s) URL: {host!r}")
    path = parts.path.rstrip("/")
    for suffix in ("/v1/batch", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"host: invalid port in {host!r}") from None
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}{path}"


def is_loopback(url: str) -> bool:
    """True when the URL's host is this machine."""
    hostname = urlsplit(url).hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False
