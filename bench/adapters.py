"""One adapter per library, all with the same interface.

``make_client(url)`` builds a client that delivers to ``url`` (the local sink) with the
shared settings (queue of 200,000, batches of 100, 0.5 s upload interval, gzip off
unless asked); ``track(event)`` records one event built by ``common.make_event``;
``flush(timeout)`` waits for the queue to drain; ``close(timeout)`` shuts the client
down. Constructor keywords are filtered through the installed library's signature,
so an option a version lacks is reported (``settings_ignored``) instead of crashing.

Peer APIs, as read from their installed sources:

* segment-analytics-python 2.x: ``segment.analytics.Client(write_key, host=...,
  max_queue_size=, upload_size=, upload_interval=, gzip=, timeout=)``;
  ``track(user_id, event, properties)``; ``flush()`` is ``queue.join()`` (no timeout);
  ``shutdown()`` is flush + join. Posts ``{"batch": [...]}`` to ``{host}/v1/batch``.
* posthog 7.x: ``posthog.Posthog(project_api_key, host=..., max_queue_size=,
  flush_at=, flush_interval=, gzip=, timeout=)``; ``capture(event, distinct_id=,
  properties=)`` (before 4.x it was ``capture(distinct_id, event, properties)``: the
  adapter reads the signature); ``flush(timeout_seconds=)``; ``shutdown()``. Posts
  ``{"api_key": ..., "batch": [...]}`` to ``{host}/batch/``.
* rudder-sdk-python 2.x: ``rudderstack.analytics.Client(write_key, host=...,
  max_queue_size=, upload_size=, upload_interval=, gzip=, timeout=)``; the
  module-level ``rudderstack.analytics.dataPlaneUrl`` only configures the default
  client, the ``Client`` class takes the data plane URL as ``host``. gzip defaults to
  True there; the benchmark turns it off like the others. Posts to ``{host}/v1/batch``.
* tracklane: ``tracklane.Client(write_key, host=..., max_queue_size=, upload_size=,
  upload_interval=, gzip=, timeout=)``; ``track(user_id=, event=, properties=)``;
  ``flush(timeout=)``; ``shutdown(timeout=)``; ``stats()``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from importlib import metadata
from typing import Any, Callable, Optional

from common import MAX_QUEUE_SIZE, UPLOAD_INTERVAL, UPLOAD_SIZE, WRITE_KEY


class AdapterUnavailable(Exception):
    """The library cannot be imported (or constructed) in this interpreter."""


def _filter_kwargs(
    func: Callable[..., Any], wanted: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Keep the keywords ``func`` accepts; return them and the names it does not."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return dict(wanted), []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(wanted), []
    kept = {k: v for k, v in wanted.items() if k in params}
    return kept, sorted(set(wanted) - set(kept))


def _at_defaults(wanted: dict[str, Any]) -> dict[str, Any]:
    """Keep only the host, the queue size and gzip when it is on: the rest at defaults."""
    kept = {k: wanted[k] for k in ("host", "max_queue_size")}
    if wanted.get("gzip"):
        kept["gzip"] = True
    return kept


def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


class Adapter:
    name = ""
    dist = ""

    def __init__(self) -> None:
        self.client: Any = None
        self.settings: dict[str, Any] = {}
        self.settings_ignored: list[str] = []

    def version(self) -> str:
        return _dist_version(self.dist)

    def make_client(
        self,
        url: str,
        *,
        timeout: float = 15.0,
        gzip: bool = False,
        at_defaults: bool = False,
        queue_size: int = MAX_QUEUE_SIZE,
    ) -> None:
        """``at_defaults``: only the host, ``queue_size`` and gzip (if on) are set."""
        raise NotImplementedError

    def track(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def flush(self, timeout: float) -> None:
        raise NotImplementedError

    def close(self, timeout: float) -> None:
        raise NotImplementedError

    def stats(self) -> Optional[dict[str, Any]]:
        return None


class _SegmentLike(Adapter):
    """segment-analytics-python and rudder-sdk-python share the analytics-python API."""

    def _client_class(self) -> Any:
        raise NotImplementedError

    def make_client(
        self,
        url: str,
        *,
        timeout: float = 15.0,
        gzip: bool = False,
        at_defaults: bool = False,
        queue_size: int = MAX_QUEUE_SIZE,
    ) -> None:
        cls = self._client_class()
        wanted = {
            "host": url,
            "max_queue_size": queue_size,
            "upload_size": UPLOAD_SIZE,
            "upload_interval": UPLOAD_INTERVAL,
            "gzip": gzip,
            "timeout": timeout,
        }
        if at_defaults:
            wanted = _at_defaults(wanted)
        self.settings, self.settings_ignored = _filter_kwargs(cls.__init__, wanted)
        self.client = cls(WRITE_KEY, **self.settings)

    def track(self, event: dict[str, Any]) -> None:
        self.client.track(event["user_id"], event["event"], event["properties"])

    def flush(self, timeout: float) -> None:
        # queue.join() has no timeout; the worker's watchdog bounds it.
        self.client.flush()

    def close(self, timeout: float) -> None:
        self.client.shutdown()


class SegmentAdapter(_SegmentLike):
    name = "segment"
    dist = "segment-analytics-python"

    def _client_class(self) -> Any:
        try:
            from segment.analytics import Client
        except ImportError as exc:
            raise AdapterUnavailable(f"segment-analytics-python is not installed: {exc}") from exc
        logging.getLogger("segment").setLevel(logging.ERROR)
        return Client


class RudderAdapter(_SegmentLike):
    name = "rudder"
    dist = "rudder-sdk-python"

    def _client_class(self) -> Any:
        try:
            from rudderstack.analytics import Client
        except ImportError as exc:
            raise AdapterUnavailable(f"rudder-sdk-python is not installed: {exc}") from exc
        logging.getLogger("rudderstack").setLevel(logging.ERROR)
        return Client


class PosthogAdapter(Adapter):
    name = "posthog"
    dist = "posthog"

    def __init__(self) -> None:
        super().__init__()
        self._new_capture = True

    def make_client(
        self,
        url: str,
        *,
        timeout: float = 15.0,
        gzip: bool = False,
        at_defaults: bool = False,
        queue_size: int = MAX_QUEUE_SIZE,
    ) -> None:
        try:
            from posthog import Posthog
        except ImportError as exc:
            raise AdapterUnavailable(f"posthog is not installed: {exc}") from exc
        logging.getLogger("posthog").setLevel(logging.ERROR)
        wanted = {
            "host": url,
            "max_queue_size": queue_size,
            "flush_at": UPLOAD_SIZE,
            "flush_interval": UPLOAD_INTERVAL,
            "gzip": gzip,
            "timeout": timeout,
        }
        if at_defaults:
            wanted = _at_defaults(wanted)
        self.settings, self.settings_ignored = _filter_kwargs(Posthog.__init__, wanted)
        self.client = Posthog(WRITE_KEY, **self.settings)
        params = list(inspect.signature(self.client.capture).parameters)
        # posthog >= 4: capture(event, distinct_id=..., properties=...);
        # older: capture(distinct_id, event, properties).
        self._new_capture = not params or params[0] != "distinct_id"

    def track(self, event: dict[str, Any]) -> None:
        if self._new_capture:
            self.client.capture(
                event["event"], distinct_id=event["user_id"], properties=event["properties"]
            )
        else:
            self.client.capture(event["user_id"], event["event"], event["properties"])

    def flush(self, timeout: float) -> None:
        try:
            self.client.flush(timeout_seconds=timeout)
        except TypeError:
            self.client.flush()

    def close(self, timeout: float) -> None:
        self.client.shutdown()


class TracklaneAdapter(Adapter):
    name = "tracklane"
    dist = "tracklane"

    def version(self) -> str:
        try:
            import tracklane

            return str(getattr(tracklane, "__version__", None) or _dist_version(self.dist))
        except Exception:
            return _dist_version(self.dist)

    def make_client(
        self,
        url: str,
        *,
        timeout: float = 15.0,
        gzip: bool = False,
        at_defaults: bool = False,
        queue_size: int = MAX_QUEUE_SIZE,
    ) -> None:
        try:
            import tracklane

            cls = tracklane.Client
        except Exception as exc:  # a half-written package can fail in many ways
            raise AdapterUnavailable(
                f"tracklane is not importable yet ({type(exc).__name__}: {exc})"
            ) from exc
        wanted = {
            "host": url,
            "max_queue_size": queue_size,
            "upload_size": UPLOAD_SIZE,
            "upload_interval": UPLOAD_INTERVAL,
            "gzip": gzip,
            "timeout": timeout,
        }
        if at_defaults:
            wanted = _at_defaults(wanted)
        self.settings, self.settings_ignored = _filter_kwargs(cls.__init__, wanted)
        self.client = cls(WRITE_KEY, **self.settings)

    def track(self, event: dict[str, Any]) -> None:
        self.client.track(
            user_id=event["user_id"], event=event["event"], properties=event["properties"]
        )

    def flush(self, timeout: float) -> None:
        self.client.flush(timeout=timeout)

    def close(self, timeout: float) -> None:
        self.client.shutdown(timeout=timeout)

    def stats(self) -> Optional[dict[str, Any]]:
        stats = getattr(self.client, "stats", None)
        if stats is None:
            return None
        value = stats()
        if isinstance(value, dict):
            return dict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if hasattr(value, "_asdict"):
            return dict(value._asdict())
        if hasattr(value, "__dict__"):
            return {k: v for k, v in vars(value).items() if not k.startswith("_")}
        return {"value": repr(value)}


ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "tracklane": TracklaneAdapter,
    "segment": SegmentAdapter,
    "posthog": PosthogAdapter,
    "rudder": RudderAdapter,
}


def get_adapter(name: str) -> Adapter:
    return ADAPTERS[name]()
