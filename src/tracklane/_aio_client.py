"""``AsyncClient``: the six calls of ``Client``, delivered by a task on the event loop."""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from typing import Any, Awaitable, Callable, Mapping, Optional, Union

from ._aio_http import AsyncHTTPTransport
from ._aio_worker import AsyncPipeline
from ._base_client import UNSET, BaseClient, Calls, Result, register_exit_hooks
from ._delivery import Sender
from ._stats import DropReason, FlushResult, Stats
from ._transport import HTTPTransport
from .config import DEFAULT_FLUSH_TIMEOUT, OnError, OverflowPolicy
from .exceptions import ConfigurationError
from .messages import Message
from .transports import AsyncTransport, SendResult

__all__ = ["AsyncClient"]

logger = logging.getLogger("tracklane")


class AsyncClient(BaseClient):
    """One queue and one delivery task on the event loop, for one write key.

    The six calls (``track``, ``identify``, ...) are plain functions with ``Client``'s
    arguments and results: they validate, encode and queue, and never block the loop.
    Delivery runs as a task on the loop of first use. ``await client.flush()``,
    ``await client.shutdown()`` and ``async with AsyncClient(...) as client:`` end it;
    ``await client.deliver.track(...)`` delivers one message inside the call.

    The options are ``Client``'s, but two that would block the loop: ``sync_mode`` (use
    ``client.deliver``) and ``overflow="block"`` are refused with a ``ConfigurationError``.
    """

    def __init__(
        self,
        write_key: Optional[str] = None,
        host: Optional[str] = None,
        debug: bool = UNSET,
        max_queue_size: int = UNSET,
        send: bool = UNSET,
        on_error: Optional[OnError] = UNSET,
        gzip: bool = UNSET,
        max_retries: int = UNSET,
        sync_mode: bool = UNSET,
        timeout: float = UNSET,
        proxies: Optional[Union[str, Mapping[str, str]]] = UNSET,
        thread: int = UNSET,
        upload_size: int = UNSET,
        upload_interval: float = UNSET,
        log_handler: Optional[logging.Handler] = UNSET,
        *,
        transport: Optional[AsyncTransport] = None,
        **options: Any,
    ) -> None:
        self._setup(locals())  # reads the parameters above by name (SEGMENT_PARAMETERS)
        opts = self.options
        if opts.sync_mode:
            raise ConfigurationError(
                "sync_mode: AsyncClient never blocks the loop; "
                "`await client.deliver.track(...)` delivers one message inside the call"
            )
        if opts.overflow is OverflowPolicy.BLOCK:
            raise ConfigurationError(
                "overflow: 'block' would block the event loop; use 'drop_newest' or 'drop_oldest'"
            )
        self._own_transport = transport is None
        self._transport: AsyncTransport = (
            AsyncHTTPTransport(opts) if transport is None else transport
        )
        self._inline_transport: Optional[AsyncTransport] = None
        self._pipeline = AsyncPipeline(opts, self._transport, self._policy, self._report)
        self._refuse = self._pipeline.count_refused
        self._put = self._pipeline.count_stubbed if self._stub else self._pipeline.put
        self.deliver = DeliverNow(self)
        """The six calls, each delivering its message inside the call (awaitable)."""
        self._atexit: Optional[Callable[[], None]] = None
        if not self._stub:
            self._atexit = register_exit_hooks(self, _shutdown_at_exit)

    # -- lifecycle ----------------------------------------------------------------------

    async def flush(self, timeout: Optional[float] = None) -> FlushResult:
        """Send everything queued now; wait for it at most ``timeout`` seconds (default 30)."""
        return await self._pipeline.flush(DEFAULT_FLUSH_TIMEOUT if timeout is None else timeout)

    async def shutdown(self, timeout: Optional[float] = None) -> FlushResult:
        """Flush within ``timeout`` (default ``shutdown_timeout``), then stop. Idempotent.

        What is still undelivered at the deadline is dropped, counted as ``shutdown`` and
        given to ``on_error``.
        """
        self._unregister_exit()
        limit = self.options.shutdown_timeout if timeout is None else timeout
        result = await self._pipeline.shutdown(limit)
        inline = self._inline_transport
        if inline is not None:
            self._inline_transport = None
            await inline.aclose()
        return result

    async def join(self, timeout: Optional[float] = None) -> FlushResult:
        """segment-analytics-python's name for finishing up: the same as :meth:`shutdown`."""
        return await self.shutdown(timeout)

    async def aclose(self) -> FlushResult:
        """Same as :meth:`shutdown` with the default deadline."""
        return await self.shutdown()

    async def close(self) -> FlushResult:
        """Same as :meth:`aclose`."""
        return await self.shutdown()

    async def __aenter__(self) -> AsyncClient:
        self._pipeline._bind(asyncio.get_running_loop())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    def stats(self) -> Stats:
        """A consistent snapshot: ``tracked == delivered + pending + sum(dropped.values())``."""
        return self._pipeline.stats()

    def _unregister_exit(self) -> None:
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None

    def shutdown_now(self, timeout: Optional[float] = None) -> FlushResult:
        """Shut down from synchronous code, where no loop of this client is running.

        Used at interpreter exit: when the client's loop still runs in another thread the
        shutdown runs there; otherwise what is queued is delivered in this thread by the
        blocking driver of the same rules, within ``timeout`` (default ``shutdown_timeout``).
        """
        self._unregister_exit()
        limit = self.options.shutdown_timeout if timeout is None else timeout
        pipeline = self._pipeline
        loop = pipeline._loop
        if loop is not None and loop.is_running() and not _runs_here(loop):
            future = asyncio.run_coroutine_threadsafe(self.shutdown(limit), loop)
            try:
                result: FlushResult = future.result(limit + 2.0)
                return result
            except Exception:
                logger.warning("tracklane: the client's loop did not shut it down; doing it here")
        sender = Sender(self._blocking_transport(), self._policy, self.options.timeout, _no_op)
        return pipeline.shutdown_blocking(limit, sender)

    def _blocking_transport(self) -> Any:
        if self._own_transport:
            return HTTPTransport(self.options)
        return _BlockingAdapter(self._transport)

    # -- deliver now ----------------------------------------------------------------------

    async def _deliver_now(self, message: Message) -> Result:
        data = self._encode(message)
        if data is None:
            return False, message
        pipeline = self._pipeline
        if self._stub:
            return pipeline.count_stubbed(data), message
        # The task on this loop also closes the inline connection when the loop ends.
        pipeline._bind(asyncio.get_running_loop())
        if not pipeline.begin_inline():
            pipeline.refuse_closed(data)
            return False, message
        if self._inline_transport is None:
            if self._own_transport:
                own = self._transport
                shared = own if isinstance(own, AsyncHTTPTransport) else None
                inline = AsyncHTTPTransport(self.options, tokens_of=shared)
                pipeline.on_loop_end.append(inline.abort)
                self._inline_transport = inline
            else:
                self._inline_transport = self._transport
        deadline = time.monotonic() + self.options.timeout
        outcome = await pipeline.deliver(
            [data], deadline, DropReason.RETRIES_EXHAUSTED, self._inline_transport
        )
        pipeline.end_inline(outcome)
        return outcome.delivered == 1, message

    def __repr__(self) -> str:
        return f"<tracklane.AsyncClient host={self.options.host!r}>"


class DeliverNow(Calls[Awaitable[Result]]):
    """``await client.deliver.track(...)``: the six calls, delivered inside the call.

    For async serverless handlers that must not return before their events are sent.
    Arguments and validation are those of the queued calls; the awaitable gives
    ``(delivered, message)`` and never raises for network trouble (a failure is reported
    to ``on_error`` and counted, with retries under ``timeout``).
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def _enqueue(self, message: Message) -> Awaitable[Result]:
        return self._client._deliver_now(message)


class _BlockingAdapter:
    """A custom async transport used from synchronous code (at exit): one fresh loop per send."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    def send(self, body: bytes, timeout: float) -> SendResult:
        try:
            return asyncio.run(self._transport.send(body, timeout))
        except Exception as exc:
            return SendResult(error=exc)

    def close(self) -> None:
        pass


def _runs_here(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _no_op() -> None:
    pass


def _shutdown_at_exit(client: AsyncClient) -> None:
    """At exit, or at a forked child's end: deliver what is queued within ``shutdown_timeout``."""
    if not client._pipeline.stopped():
        try:
            client.shutdown_now()
        except Exception:  # pragma: no cover - never raise at exit
            logger.exception("tracklane: shutting down at exit failed")
