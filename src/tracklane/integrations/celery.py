"""Celery: events tracked inside tasks carry the task, and nothing is lost when workers stop.

::

    from tracklane.integrations.celery import setup

    app = Celery(...)
    setup(app)                                  # after configuring tracklane

- Each task runs in a :func:`tracklane.context` scope with
  ``context.celery = {"task": name, "taskId": id}``.
- Prefork pool children get a fresh queue and worker thread after the fork (tracklane
  does that by itself); they exit through ``os._exit``, which skips ``atexit``, so each
  child shuts its clients down on ``worker_process_shutdown`` within ``timeout``.
- The main worker process does the same on ``worker_shutdown``.
- ``flush_after_task=True`` also flushes after every task, for workers that may be
  frozen or killed between tasks.
"""

from __future__ import annotations

import contextlib
import threading
from contextvars import Token
from typing import Any, Dict, Iterable, List, Optional

from celery import Celery, signals

import tracklane

__all__ = ["setup"]

DEFAULT_TIMEOUT = 5.0


class _Hooks:
    """The signal receivers of one ``setup`` call (held strongly: Celery keeps weak refs)."""

    def __init__(
        self,
        clients: List[tracklane.Client],
        flush_after_task: bool,
        timeout: float,
        context_key: str,
    ) -> None:
        self.clients = clients
        self.flush_after_task = flush_after_task
        self.timeout = timeout
        self.context_key = context_key
        self.tokens: Dict[str, Any] = {}
        self.lock = threading.Lock()

    def task_prerun(self, task_id: Optional[str] = None, task: Any = None, **_: Any) -> None:
        fields = {self.context_key: {"task": getattr(task, "name", None), "taskId": task_id}}
        token: Token[Any] = tracklane.context(fields).enter()
        with self.lock:
            self.tokens[task_id or ""] = token

    def task_postrun(self, task_id: Optional[str] = None, **_: Any) -> None:
        with self.lock:
            token = self.tokens.pop(task_id or "", None)
        if token is not None:
            # ValueError: opened in another context (a pool that switched): harmless.
            with contextlib.suppress(ValueError):
                tracklane.context.exit(token)
        if self.flush_after_task:
            tracklane.flush(self.timeout)
            for client in self.clients:
                client.flush(self.timeout)

    def shutdown(self, **_: Any) -> None:
        tracklane.shutdown(self.timeout)
        for client in self.clients:
            client.shutdown(self.timeout)


_installed: Dict[int, _Hooks] = {}


def setup(
    app: Celery,
    *,
    clients: Iterable[tracklane.Client] = (),
    flush_after_task: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    context_key: str = "celery",
) -> None:
    """Connect tracklane to ``app``'s workers (idempotent).

    ``clients`` are clients of your own to flush and shut down besides the default one;
    ``timeout`` bounds each flush and the shutdown of each client, in seconds.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise tracklane.ConfigurationError("timeout: must be a number of seconds, at least 0")
    if id(app) in _installed:
        return
    hooks = _Hooks(list(clients), flush_after_task, float(timeout), context_key)
    _installed[id(app)] = hooks
    uid = f"tracklane-{id(app)}"
    signals.task_prerun.connect(hooks.task_prerun, weak=False, dispatch_uid=uid)
    signals.task_postrun.connect(hooks.task_postrun, weak=False, dispatch_uid=uid)
    signals.worker_process_shutdown.connect(hooks.shutdown, weak=False, dispatch_uid=uid)
    signals.worker_shutdown.connect(hooks.shutdown, weak=False, dispatch_uid=uid)
