"""The transport seam: what a client needs from whatever carries a request body.

``Client(transport=...)`` takes any object with a blocking :meth:`Transport.send`;
``AsyncClient(transport=...)`` one with an awaitable :meth:`AsyncTransport.send`. Both
return a :class:`SendResult` and never raise for network trouble: a failure without an
answer is a result with ``error`` set. The retry, split and drop decisions stay in the
client, so a transport only moves bytes (``tracklane.testing.MemoryTransport`` is one).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

__all__ = ["AsyncTransport", "SendResult", "Transport"]


@dataclass(frozen=True)
class SendResult:
    """What one POST gave: a status (with body and Retry-After) or an error without a response.

    ``retry_after`` is in seconds, already resolved from either form of the header.
    """

    status: Optional[int] = None
    body: str = ""
    retry_after: Optional[float] = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return self.status is not None and 200 <= self.status < 300


class Transport(Protocol):
    """Posts one request body (a JSON batch) and reports what happened, without raising."""

    def send(self, body: bytes, timeout: float) -> SendResult:
        """POST ``body`` within ``timeout`` seconds."""
        ...  # pragma: no cover

    def close(self) -> None:
        """Release connections; a request in progress may end at once."""
        ...  # pragma: no cover


class AsyncTransport(Protocol):
    """The asyncio twin of :class:`Transport`."""

    async def send(self, body: bytes, timeout: float) -> SendResult:
        """POST ``body`` within ``timeout`` seconds."""
        ...  # pragma: no cover

    async def aclose(self) -> None:
        """Release connections."""
        ...  # pragma: no cover
