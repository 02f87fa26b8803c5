"""``BaseClient``: the six calls, validated and encoded at the call; I/O-free.

``Client`` (a thread) and ``AsyncClient`` (a task on the event loop) inherit the six calls
from here, so both take the same arguments, validate and encode the same way, and return
the same ``(queued, message)``. A subclass decides only what happens to an encoded
message: it binds ``self._put`` to a function taking the encoded bytes and returning
whether they were accepted (a bound method, so a call costs no more frames than before).
``AsyncClient.deliver`` reuses the same calls with ``_put`` returning an awaitable.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import time
import weakref
from decimal import Decimal
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Tuple, TypeVar

import orjson

from ._context import current_scope
from ._core.delivery import Drop
from ._core.retry import RetryPolicy
from ._encode import FAST_OPTIONS, default_for, encode_refused
from ._segment_attrs import SegmentAttributes
from ._stats import DropReason
from .config import MAX_MESSAGE_BYTES, OnError, Options
from .exceptions import MessageTooLargeError, ValidationError
from .messages import (
    LIBRARY,
    Message,
    alias_fields,
    group_fields,
    identify_fields,
    new_message_id,
    now_timestamp,
    prepare_common,
    prepare_wire_message,
    track_fields,
    view_fields,
)

__all__ = ["SEGMENT_PARAMETERS", "BaseClient", "Result", "register_exit_hooks"]

logger = logging.getLogger("tracklane")
Result = Tuple[bool, Message]
R = TypeVar("R")
C = TypeVar("C", bound="BaseClient")
UNSET: Any = object()
_LOG_INTERVAL = 10.0
_join = b"".join  # an exact-size copy of encoded bytes: _join((data, b""))

SEGMENT_PARAMETERS = (
    "host",
    "debug",
    "max_queue_size",
    "send",
    "on_error",
    "gzip",
    "max_retries",
    "sync_mode",
    "timeout",
    "proxies",
    "thread",
    "upload_size",
    "upload_interval",
    "log_handler",
)
"""segment-analytics-python's parameters after ``write_key``, in its positional order: the
constructors of ``Client`` and ``AsyncClient`` spell them out (for signatures and editors)
and hand their ``locals()`` to ``_setup``, which reads them by these names."""


def gather_options(write_key: Optional[str], given: Dict[str, Any], options: Any) -> Options:
    """segment-analytics-python's positional parameters plus keyword options, validated once."""
    for name, value in given.items():
        if value is not UNSET and not (name == "host" and value is None):
            options[name] = value
    return Options.build(write_key, **options)


class Calls(Generic[R]):
    """The six calls and ``forward``; what they return (``R``) is up to ``_enqueue``."""

    def _enqueue(self, message: Message) -> R:  # pragma: no cover - always overridden
        raise NotImplementedError

    def identify(
        self,
        user_id: Any = None,
        traits: Optional[Mapping[str, Any]] = None,
        context: Optional[Mapping[str, Any]] = None,
        timestamp: Any = None,
        anonymous_id: Any = None,
        integrations: Optional[Mapping[str, Any]] = None,
        message_id: Any = None,
    ) -> R:
        """Say who a user is and what they are like (``traits``)."""
        message = identify_fields(traits)
        return self._enqueue(
            prepare_common(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
        )

    def track(
        self,
        user_id: Any = None,
        event: Optional[str] = None,
        properties: Optional[Mapping[str, Any]] = None,
        context: Optional[Mapping[str, Any]] = None,
        timestamp: Any = None,
        anonymous_id: Any = None,
        integrations: Optional[Mapping[str, Any]] = None,
        message_id: Any = None,
    ) -> R:
        """Record that a user did something (``event``), with ``properties``."""
        if (
            type(user_id) is str
            and user_id
            and type(event) is str
            and event
            and type(properties) is dict
            and context is None
            and timestamp is None
            and anonymous_id is None
            and integrations is None
            and message_id is None
            and current_scope() is None
        ):
            # The common call, built inline: the same message as below, with two Python
            # frames fewer (they are what a call costs between requests, caches cold).
            return self._enqueue(
                {
                    "type": "track",
                    "event": event,
                    "anonymousId": None,
                    "properties": properties,
                    "userId": user_id,
                    "context": {"library": LIBRARY},
                    "integrations": {},
                    "timestamp": now_timestamp(),
                    "messageId": new_message_id(),
                }
            )
        message = track_fields(event, properties)
        return self._enqueue(
            prepare_common(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
        )

    def page(
        self,
        user_id: Any = None,
        category: Optional[str] = None,
        name: Optional[str] = None,
        properties: Optional[Mapping[str, Any]] = None,
        context: Optional[Mapping[str, Any]] = None,
        timestamp: Any = None,
        anonymous_id: Any = None,
        integrations: Optional[Mapping[str, Any]] = None,
        message_id: Any = None,
    ) -> R:
        """Record a web page view."""
        message = view_fields("page", category, name, properties)
        return self._enqueue(
            prepare_common(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
        )

    def screen(
        self,
        user_id: Any = None,
        category: Optional[str] = None,
        name: Optional[str] = None,
        properties: Optional[Mapping[str, Any]] = None,
        context: Optional[Mapping[str, Any]] = None,
        timestamp: Any = None,
        anonymous_id: Any = None,
        integrations: Optional[Mapping[str, Any]] = None,
        message_id: Any = None,
    ) -> R:
        """Record a mobile or desktop screen view."""
        message = view_fields("screen", category, name, properties)
        return self._enqueue(
            prepare_common(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
        )

    def group(
        self,
        user_id: Any = None,
        group_id: Any = None,
        traits: Optional[Mapping[str, Any]] = None,
        context: Optional[Mapping[str, Any]] = None,
        timestamp: Any = None,
        anonymous_id: Any = None,
        integrations: Optional[Mapping[str, Any]] = None,
        message_id: Any = None,
    ) -> R:
        """Tie a user to a group (a company, an account), with the group's ``traits``."""
        message = group_fields(group_id, traits)
        return self._enqueue(
            prepare_common(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
        )

    def alias(
        self,
        previous_id: Any = None,
        user_id: Any = None,
        context: Optional[Mapping[str, Any]] = None,
        timestamp: Any = None,
        integrations: Optional[Mapping[str, Any]] = None,
        message_id: Any = None,
    ) -> R:
        """Merge two identities: ``previous_id`` is now known as ``user_id``."""
        message = alias_fields(previous_id, user_id)
        return self._enqueue(
            prepare_common(message, user_id, None, context, timestamp, integrations, message_id)
        )

    def forward(self, message: Mapping[str, Any], *, encoded: Optional[bytes] = None) -> R:
        """Send a message already in wire form (``type`` plus Segment's camelCase fields).

        For messages made elsewhere: a replay, an export, a relay. Checked by the
        collector's rules and sent as given, ``context.library`` included; only a missing
        ``messageId`` or ``timestamp`` is filled in (see ``docs/forwarding.md``).

        ``encoded``: the message's JSON text, when the caller has it (the line it was
        parsed from). Sent instead of encoding ``message`` again when the message goes out
        unchanged; ignored when something is filled in or converted.
        """
        prepared = prepare_wire_message(message)
        if encoded is None or prepared is not message:
            return self._enqueue(prepared)
        if type(encoded) is not bytes or encoded[:1] != b"{" or encoded[-1:] != b"}":
            raise ValidationError(
                "encoded", "must be the message's JSON text as bytes, an object ({...})"
            )
        return self._enqueue_encoded(prepared, encoded)

    def _enqueue_encoded(self, message: Message, data: bytes) -> R:
        """Queue ``message`` whose JSON text is ``data``; by default encoded again."""
        return self._enqueue(message)


class BaseClient(Calls[Result], SegmentAttributes):
    """What ``Client`` and ``AsyncClient`` share: options, the calls, drop reporting.

    segment-analytics-python's public attributes (``write_key``, ``host``, ``send``, ``log``
    ...) are there too, read-only.

    A subclass sets ``self._put`` (encoded bytes in, accepted out) and ``self._refuse``
    (count a message refused before queueing) in ``_start``.
    """

    options: Options
    _put: Callable[[bytes], bool]
    _refuse: Callable[[DropReason], None]

    def _setup(self, arguments: Mapping[str, Any]) -> None:
        """Options from a constructor's ``locals()``: ``write_key``, the parameters named in
        ``SEGMENT_PARAMETERS`` and the keyword ``options``; plus what both clients derive."""
        given = {name: arguments[name] for name in SEGMENT_PARAMETERS}
        options = arguments["options"]
        self.options = opts = gather_options(arguments["write_key"], given, options)
        self._given = {"host": given.get("host"), "on_error": options.get("on_error")}
        if opts.debug:
            logger.setLevel(logging.DEBUG)
        if opts.log_handler is not None and opts.log_handler not in logger.handlers:
            logger.addHandler(opts.log_handler)  # only a handler the caller handed us
        self._json_default = opts.json_default
        self._default = default_for(opts.json_default, opts.decimal_as)
        self._stub = opts.stub
        self._sync = opts.sync_mode
        self._last_logged: Dict[DropReason, float] = {}
        self._policy = RetryPolicy(
            max_retries=opts.max_retries,
            base=opts.backoff_base,
            cap=opts.backoff_cap,
            max_total=opts.max_total_backoff,
            max_retry_after=opts.max_retry_after,
        )

    def _enqueue(self, message: Message) -> Result:
        data = self._encode(message)
        if data is None:  # too large: counted and reported
            return False, message
        return self._put(data), message

    def _enqueue_encoded(self, message: Message, data: bytes) -> Result:
        if len(data) > MAX_MESSAGE_BYTES:
            self._refuse_too_large(data)
            return False, message
        return self._put(data), message

    def _encode(self, message: Message) -> Optional[bytes]:
        """The message as queued (exact-size JSON bytes); None (counted, reported) if too large."""
        try:
            data = orjson.dumps(message, default=self._default, option=FAST_OPTIONS)
        except (TypeError, ValueError, RecursionError):  # keys that are not text, and worse
            data = encode_refused(
                message, self._default, self._json_default, self.options.decimal_as
            )
        if len(data) > MAX_MESSAGE_BYTES:
            self._refuse_too_large(data)
            return None
        # orjson returns bytes that keep its 4 KB working buffer allocated; a queue of them
        # would cost 4 KB a message. An exact-size copy saves 90 % of that. A join with an
        # empty piece is the cheapest one (0.09 µs against 0.27 for ``memoryview(data)
        # .tobytes()``: no view object, no keyword parsing, no bound method; and fewer
        # instruction-cache misses when the call runs cold between requests).
        return _join((data, b""))

    def _refuse_too_large(self, data: bytes) -> None:
        self._refuse(DropReason.TOO_LARGE)
        error = MessageTooLargeError(len(data), MAX_MESSAGE_BYTES)
        self._report(Drop(DropReason.TOO_LARGE, error, [data]))

    def _report(self, drop: Drop) -> None:
        """Log a drop (rate-limited) and hand it to ``on_error``; never raises."""
        if drop.reason is not DropReason.QUEUE_FULL:
            now = time.monotonic()
            last = self._last_logged.get(drop.reason)
            level = logging.WARNING
            if last is not None and now - last < _LOG_INTERVAL:
                level = logging.DEBUG
            else:
                self._last_logged[drop.reason] = now
            logger.log(
                level,
                "tracklane: dropped %d message(s), reason %s: %s",
                len(drop.messages),
                drop.reason.value,
                drop.error,
            )
        callback: Optional[OnError] = self.options.on_error
        if callback is None:
            return
        batch = decode_all(drop.messages)
        try:
            callback(drop.error, batch)
        except Exception:
            logger.exception("tracklane: on_error raised; ignoring it")


def register_exit_hooks(client: C, finish: Callable[[C], None]) -> Callable[[], None]:
    """Run ``finish(client)`` at interpreter exit and at the end of a forked child, without
    keeping the client alive; returns the exit function (for ``atexit.unregister``).

    ``multiprocessing`` children leave through ``os._exit`` after running its own
    finalizers, never ``atexit``; so a child of such a pool also gets a finalizer.
    """
    ref = weakref.ref(client)
    at_exit = _finish_if_alive(ref, finish)
    atexit.register(at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_in_child(ref, finish))
    return at_exit


def _finish_if_alive(ref: weakref.ref[C], finish: Callable[[C], None]) -> Callable[[], None]:
    def finish_at_exit() -> None:
        alive = ref()
        if alive is not None:
            finish(alive)

    return finish_at_exit


def _in_child(ref: weakref.ref[C], finish: Callable[[C], None]) -> Callable[[], None]:
    def in_child() -> None:
        mp_util = sys.modules.get("multiprocessing.util")
        alive = ref()
        if mp_util is None or alive is None:
            return

        def add_finalizer(_: object) -> None:
            mp_util.Finalize(None, _finish_if_alive(ref, finish), exitpriority=100)

        # A multiprocessing child clears its finalizers after fork, then runs these hooks.
        add_finalizer(alive)
        mp_util.register_after_fork(alive, add_finalizer)

    return in_child


def decode_all(messages: List[bytes]) -> List[Dict[str, Any]]:
    """The dropped messages as dicts, exactly as sent (integers of any size included)."""
    decoded: List[Dict[str, Any]] = []
    for message in messages:
        try:
            decoded.append(json.loads(message, parse_int=_exact_int))
        except ValueError:  # pragma: no cover - we encoded it; kept so on_error still runs
            decoded.append({"raw": message.decode("utf-8", "replace")})
    return decoded


def _exact_int(text: str) -> int:
    # int() of text has a 4,300-digit limit; Decimal has none and converts exactly.
    return int(text) if len(text) <= 4000 else int(Decimal(text))
