"""Serverless (AWS Lambda, Google Cloud Functions, ...): flush before the handler returns.

::

    from tracklane.integrations.serverless import flush_after

    @flush_after
    def handler(event, context):
        tracklane.track(...)

The platform freezes or ends the process as soon as the handler returns, so queued events
must leave first. The flush is bounded by ``timeout`` and, when the handler's context
object tells the invocation's remaining time (``get_remaining_time_in_millis()``), by
that time less ``margin``, so the flush never makes the invocation time out.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from typing import Any, Callable, Iterable, Optional, TypeVar, cast, overload

import tracklane

__all__ = ["flush_after"]

logger = logging.getLogger("tracklane")

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = 5.0
DEFAULT_MARGIN = 0.2


@overload
def flush_after(func: F) -> F: ...


@overload
def flush_after(
    func: None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    margin: float = DEFAULT_MARGIN,
    clients: Iterable[Any] = (),
) -> Callable[[F], F]: ...


def flush_after(
    func: Optional[F] = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    margin: float = DEFAULT_MARGIN,
    clients: Iterable[Any] = (),
) -> Any:
    """Decorate a handler ``(event, context)``, plain or ``async``, to flush when it ends.

    Flushes the default client and ``clients`` (``Client`` or ``AsyncClient``) whether
    the handler returned or raised; a flush never raises into the handler's caller.
    """
    for name, value in (("timeout", timeout), ("margin", margin)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise tracklane.ConfigurationError(f"{name}: must be a number of seconds, at least 0")
    extra = list(clients)

    def decorate(handler: F) -> F:
        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await handler(*args, **kwargs)
                finally:
                    await _flush_async(_budget(args, kwargs, timeout, margin), extra)

            return cast(F, run_async)

        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            finally:
                _flush(_budget(args, kwargs, timeout, margin), extra)

        return cast(F, run)

    return decorate if func is None else decorate(func)


def _budget(args: Any, kwargs: Any, timeout: float, margin: float) -> float:
    """Seconds the flush may take: ``timeout``, cut to the invocation's remaining time."""
    context = kwargs.get("context", args[1] if len(args) > 1 else None)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining):
        return timeout
    try:
        left = float(remaining()) / 1000.0 - margin
    except Exception:  # a context object we do not understand: fall back to timeout
        return timeout
    return max(0.0, min(timeout, left))


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _flush(budget: float, clients: Any) -> None:
    """Flush the default client, then each of ``clients``, all within ``budget`` seconds."""
    deadline = time.monotonic() + budget
    try:
        result = tracklane.flush(budget)
        if result is not None and not result:
            logger.warning(
                "tracklane: %d events still pending as the invocation ends", result.pending
            )
        for client in clients:
            client.flush(_left(deadline))
    except Exception:
        logger.exception("tracklane: flush at the end of the invocation failed")


async def _flush_async(budget: float, clients: Any) -> None:
    """:func:`_flush` for async handlers: awaits an ``AsyncClient``, threads a ``Client``."""
    deadline = time.monotonic() + budget
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, functools.partial(_flush, budget, ()))
        for client in clients:
            if inspect.iscoroutinefunction(client.flush):
                await client.flush(_left(deadline))
            else:
                await loop.run_in_executor(None, functools.partial(client.flush, _left(deadline)))
    except Exception:
        logger.exception("tracklane: flush at the end of the invocation failed")
