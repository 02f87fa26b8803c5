"""The module-level default client, as segment-analytics-python's ``analytics`` module has.

``tracklane.write_key = "..."`` and the other settings are plain attributes of the
``tracklane`` package, declared (with their types and defaults) once, in ``__init__.py``.
:class:`DefaultClient` reads them from that namespace when it builds the client: on the first
module-level call of any kind (``track()``, ``flush()``, ``join()``, ``shutdown()``), and again
on the first call after ``shutdown()`` or after ``tracklane.default_client = None``. The
client lives in the namespace too, as ``tracklane.default_client``, so code that reads or
replaces it (``tracklane.testing.capture`` does) sees the real one.

The module functions get their signatures from :class:`~tracklane.Client`'s methods
(:meth:`DefaultClient.forward`), so they are written once: editors and ``mypy`` see the real
parameters, and ``inspect.signature(tracklane.track)`` gives them too.
"""

from __future__ import annotations

import inspect
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, MutableMapping, Optional, TypeVar

from ._client import Client
from ._stats import FlushResult, Stats
from .config import Options

if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec

    P = ParamSpec("P")

__all__ = ["DefaultClient"]

R = TypeVar("R")
_NOTHING_QUEUED = FlushResult(complete=True, pending=0, stats=Stats(0, 0, 0, 0))


class DefaultClient:
    """Builds, hands out and shuts down the client of one module namespace."""

    def __init__(self, namespace: MutableMapping[str, Any]) -> None:
        self.namespace = namespace
        self.lock = threading.Lock()
        self._finished: Optional[Client] = None  # shut down through the module: replace it
        self._setting_names = sorted(
            name for name in Options.accepted_names() if name != "write_key"
        )

    def get(self) -> Client:
        """The default client, built from the module settings if there is none (or it was
        shut down through ``tracklane.shutdown()``)."""
        client: Optional[Client] = self.namespace["default_client"]
        if client is not None and client is not self._finished:
            return client
        with self.lock:
            client = self.namespace["default_client"]
            if client is None or client is self._finished:
                client = Client(self.write_key(), **self.settings())
                self.namespace["default_client"] = client
            return client

    def write_key(self) -> Optional[str]:
        """The module's write key, else the environment's."""
        key: Optional[str] = self.namespace.get("write_key")
        return key or Options.from_env(os.environ).get("write_key")

    def settings(self) -> Dict[str, Any]:
        """The options for a new default client: module settings, then the environment."""
        namespace = self.namespace
        options = {
            name: namespace[name] for name in self._setting_names if namespace.get(name) is not None
        }
        env = Options.from_env(os.environ)
        if not options.get("host") and "region" not in options and "host" in env:
            options["host"] = env["host"]
        if "sync_mode" in env and not options.get("sync_mode"):
            options["sync_mode"] = env["sync_mode"]
        return options

    def flush(self, timeout: Optional[float] = None) -> FlushResult:
        """``flush`` on the default client, built first if needed (as segment does)."""
        client = self._get_if_configured()
        return _NOTHING_QUEUED if client is None else client.flush(timeout)

    def shutdown(self, timeout: Optional[float] = None) -> FlushResult:
        """Flush and stop the default client (built first if needed, as segment does).

        ``tracklane.default_client`` stays readable afterwards; the next module-level call
        builds a new client from the settings as they are then.
        """
        client = self._get_if_configured()
        if client is None:
            return _NOTHING_QUEUED
        with self.lock:
            self._finished = client
        return client.shutdown(timeout)

    def _get_if_configured(self) -> Optional[Client]:
        """The default client, even one shut down (flushing or stopping it again is harmless);
        None when there is none and no write key to build one with.

        Without a write key no call can have queued anything, so flushing it has nothing to
        do: segment raises ``AssertionError`` there; a clean-up path should not.
        """
        client: Optional[Client] = self.namespace["default_client"]
        if client is not None:
            return client
        return self.get() if self.write_key() else None

    def forward(self, method: Callable[Concatenate[Client, P], R]) -> Callable[P, R]:
        """A module function calling ``method`` on the default client, with its signature."""
        name = method.__name__
        get = self.get

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            result: R = getattr(get(), name)(*args, **kwargs)
            return result

        signature = inspect.signature(method)
        parameters = list(signature.parameters.values())[1:]  # without self
        call.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        call.__name__ = call.__qualname__ = name
        call.__module__ = "tracklane"
        call.__doc__ = f"``Client.{name}`` on the default client.\n\n{inspect.getdoc(method)}"
        return call
