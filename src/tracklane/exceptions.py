"""Every exception tracklane raises or reports, in one leaf module.

::

    AnalyticsError
    ├── ConfigurationError (ValueError, AssertionError)  bad options, found when the client is built
    ├── ValidationError (ValueError, AssertionError)     an invalid call, raised at the call site
    └── DeliveryError                      told to ``on_error``, never raised by a call
        ├── MessageTooLargeError           a message over 32 KB, not queued
        ├── QueueFullError                 the queue was full (overflow policy applied)
        ├── ShutdownError                  the client shut down before the message went out
        ├── TransportError                 no HTTP response: connection error or timeout
        │   └── OAuthError                 no access token could be had from the OAuth server
        ├── APIError                       a non-2xx response (``status_code``, ``body``)
        └── RetriesExhaustedError          retryable failures went on past ``max_retries``

The two argument errors are also ``AssertionError``s because segment-analytics-python
raises ``AssertionError`` for every argument check: code written for it (``except
AssertionError``, ``assertRaises(AssertionError, ...)``) keeps working, and code written
for tracklane can catch ``ValueError`` or the precise class.

A ``DeliveryError`` never reaches code that called ``track()`` in background mode: it goes
to ``on_error(exc, batch)``, to the log and to the counters of ``client.stats()``.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "APIError",
    "AnalyticsError",
    "ConfigurationError",
    "DeliveryError",
    "MessageTooLargeError",
    "OAuthError",
    "QueueFullError",
    "RetriesExhaustedError",
    "ShutdownError",
    "TransportError",
    "ValidationError",
]


class AnalyticsError(Exception):
    """Base class of every tracklane exception."""


class ConfigurationError(AnalyticsError, ValueError, AssertionError):
    """An option given to ``Client`` (or the module-level settings) is invalid.

    Also an ``AssertionError``, as segment-analytics-python's argument checks are.
    """


class ValidationError(AnalyticsError, ValueError, AssertionError):
    """A call's arguments are invalid; the message names the field.

    Also an ``AssertionError``, as segment-analytics-python's argument checks are.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.field, self.problem))


class DeliveryError(AnalyticsError):
    """A message was not delivered. Given to ``on_error`` with the messages concerned."""


class MessageTooLargeError(DeliveryError):
    """A message's JSON is larger than the 32 KB limit; it was not queued."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message is {size} bytes, over the {limit}-byte limit")
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return (type(self), (self.size, self.limit))


class QueueFullError(DeliveryError):
    """The queue held ``max_queue_size`` messages; the overflow policy dropped one."""


class ShutdownError(DeliveryError):
    """The client shut down (or its deadline passed) before the message was delivered."""


class TransportError(DeliveryError):
    """The request got no HTTP response (connection refused or reset, timeout)."""


class OAuthError(TransportError):
    """No access token could be had from the OAuth server, so the batch was not sent.

    ``status_code`` and ``body`` are the token endpoint's answer (``None`` and ``""`` when it
    gave none); ``retry_after`` is how long it asked us to wait. Retried like a network error.
    """

    def __init__(
        self,
        message: str,
        status_code: Optional[int] = None,
        body: str = "",
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type, tuple[str, Optional[int], str, Optional[float]]]:
        return (type(self), (str(self), self.status_code, self.body, self.retry_after))


class APIError(DeliveryError):
    """The endpoint answered with a status other than 2xx."""

    def __init__(self, status_code: int, body: str, retry_after: Optional[float] = None) -> None:
        super().__init__(f"HTTP {status_code}: {body[:200]}")
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type, tuple[int, str, Optional[float]]]:
        return (type(self), (self.status_code, self.body, self.retry_after))


class RetriesExhaustedError(DeliveryError):
    """Retryable failures continued past ``max_retries``; ``__cause__`` is the last one."""
