"""``Client``: the six calls, validated and encoded at the call, delivered in the background."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any, Callable, Mapping, Optional, Union

from ._base_client import UNSET, BaseClient, register_exit_hooks
from ._delivery import Sender
from ._stats import DropReason, FlushResult, Stats
from ._transport import HTTPTransport
from ._worker import Pipeline
from .config import DEFAULT_FLUSH_TIMEOUT, OnError
from .transports import Transport

__all__ = ["Client"]

logger = logging.getLogger("tracklane")
_UNSET: Any = UNSET


class Client(BaseClient):
    """One queue and one delivery worker for one write key.

    The positional order of the first parameters is segment-analytics-python's; every
    option can also be given by keyword, with that library's (and analytics-ruby's) names.
    segment's public attributes (``write_key``, ``host``, ``send``, ``log`` ...) are there
    too, read-only.
    """

    def __init__(
        self,
        write_key: Optional[str] = None,
        host: Optional[str] = None,
        debug: bool = _UNSET,
        max_queue_size: int = _UNSET,
        send: bool = _UNSET,
        on_error: Optional[OnError] = _UNSET,
        gzip: bool = _UNSET,
        max_retries: int = _UNSET,
        sync_mode: bool = _UNSET,
        timeout: float = _UNSET,
        proxies: Optional[Union[str, Mapping[str, str]]] = _UNSET,
        thread: int = _UNSET,
        upload_size: int = _UNSET,
        upload_interval: float = _UNSET,
        log_handler: Optional[logging.Handler] = _UNSET,
        *,
        transport: Optional[Transport] = None,
        **options: Any,
    ) -> None:
        self._setup(locals())  # reads the parameters above by name (SEGMENT_PARAMETERS)
        opts = self.options
        self._transport: Transport = transport if transport is not None else HTTPTransport(opts)
        self._sender = Sender(self._transport, self._policy, opts.timeout, self._count_retry)
        self._pipeline = Pipeline(opts, self._sender, self._report)
        self._never = threading.Event()
        self._refuse = self._pipeline.count_refused
        # What a call does with its encoded message, bound once (see BaseClient).
        if self._stub:
            self._put = self._pipeline.count_stubbed
        elif self._sync:
            self._put = self._deliver_inline
        else:
            self._put = self._pipeline.put
        self._atexit: Optional[Callable[[], None]] = None
        if not self._stub and not self._sync:
            self._atexit = register_exit_hooks(self, _flush_at_exit)

    # -- queueing and delivery --------------------------------------------------------

    def _deliver_inline(self, data: bytes) -> bool:
        self._pipeline.begin_inline()
        outcome = self._sender.deliver(
            [data],
            self._never,
            time.monotonic() + self.options.timeout,
            DropReason.RETRIES_EXHAUSTED,
        )
        self._pipeline.end_inline(outcome)
        return outcome.delivered == 1

    def flush(self, timeout: Optional[float] = None) -> FlushResult:
        """Send everything queued now; wait for it at most ``timeout`` seconds (default 30).

        Returns a :class:`FlushResult` that is truthy when everything was delivered or given
        up on, and says how many messages were still pending otherwise.
        """
        return self._pipeline.flush(DEFAULT_FLUSH_TIMEOUT if timeout is None else timeout)

    def join(self, timeout: Optional[float] = None) -> FlushResult:
        """segment-analytics-python's name for finishing up: the same as :meth:`shutdown`."""
        return self.shutdown(timeout)

    def shutdown(self, timeout: Optional[float] = None) -> FlushResult:
        """Flush within ``timeout`` (default ``shutdown_timeout``), then stop. Idempotent.

        What is still undelivered at the deadline is dropped, counted as ``shutdown`` and
        given to ``on_error``.
        """
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
        limit = self.options.shutdown_timeout if timeout is None else timeout
        result = self._pipeline.shutdown(limit)
        self._transport.close()
        return result

    def close(self) -> FlushResult:
        """Same as :meth:`shutdown` with the default deadline."""
        return self.shutdown()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def stats(self) -> Stats:
        """A consistent snapshot: ``tracked == delivered + pending + sum(dropped.values())``."""
        return self._pipeline.stats()

    # -- reporting --------------------------------------------------------------------

    def _count_retry(self) -> None:
        self._pipeline.count_retry()

    def __repr__(self) -> str:
        return f"<tracklane.Client host={self.options.host!r}>"


def _flush_at_exit(client: Client) -> None:
    """At exit, or at a forked child's end: flush within ``shutdown_timeout``, then stop."""
    if not client._pipeline.stopped():
        client.shutdown()
