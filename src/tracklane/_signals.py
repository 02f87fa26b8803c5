"""``flush_on_signal()``: deliver the queue when the process is told to stop.

Python's default action for SIGTERM ends the process at once: no ``finally``, no
``atexit``, so every event still queued in memory is lost without a trace. Opting in
turns the signal into what Ctrl-C already is: an exception in the main thread (here
``SystemExit(128 + signum)``, the status shells and container runtimes report for a
process ended by that signal), so ``finally`` blocks run and every client flushes at
exit within its ``shutdown_timeout``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable, Dict, Optional, Union

from .exceptions import ConfigurationError

__all__ = ["flush_on_signal"]

Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]

_previous: Dict[int, Handler] = {}
_DEFAULT_SHUTDOWN_TIMEOUT = 5.0  # Options.shutdown_timeout's default


def flush_on_signal(*signums: int) -> None:
    """Flush before the process ends on SIGTERM (or the given signals). Opt-in, idempotent.

    When the signal comes, what happens next depends on the handler it had before:

    - Python's default (the process would have died): the main thread raises
      ``SystemExit(128 + signum)``; ``atexit`` then flushes every client within its
      ``shutdown_timeout`` and the process exits with that status (143 for SIGTERM).
      A second signal during that flush ends the process at once, as before.
    - A handler of your own: the default client is flushed (within its
      ``shutdown_timeout``), then your handler is called as before.
    - Ignored: the default client is flushed in the background and the process goes on.

    Call it from the main thread (Python's rule for signal handlers).

    .. versionadded:: 0.2.0
    """
    if threading.current_thread() is not threading.main_thread():
        raise ConfigurationError("flush_on_signal() must be called from the main thread")
    for signum in signums or (signal.SIGTERM,):
        current = signal.getsignal(signum)
        if current is _handle:
            continue
        _previous[signum] = current
        signal.signal(signum, _handle)


def _handle(signum: int, frame: Optional[FrameType]) -> None:
    previous = _previous.get(signum, signal.SIG_DFL)
    if previous == signal.SIG_IGN:
        threading.Thread(target=_flush_default, name="tracklane.signal", daemon=True).start()
        return
    if callable(previous):
        _flush_default_within_deadline()
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    raise SystemExit(128 + signum)


def _timeout() -> float:
    import tracklane

    configured = tracklane.shutdown_timeout
    return _DEFAULT_SHUTDOWN_TIMEOUT if configured is None else float(configured)


def _flush_default() -> None:
    import tracklane

    tracklane.flush(_timeout())


def _flush_default_within_deadline() -> None:
    """Flush from a helper thread, so a lock the interrupted main thread holds cannot
    deadlock the handler: waiting ends at the deadline whatever happens."""
    helper = threading.Thread(target=_flush_default, name="tracklane.signal", daemon=True)
    helper.start()
    helper.join(_timeout() + 0.5)
