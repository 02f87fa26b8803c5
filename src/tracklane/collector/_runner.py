"""Running the collector under uvicorn: in a background thread, or until SIGTERM/Ctrl-C."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Iterable, Optional, TextIO, Tuple, Type

import uvicorn

from tracklane.collector._gc import tune_gc_for_serving
from tracklane.collector.app import create_app
from tracklane.collector.storage import StrPath
from tracklane.collector.stores import EventStore, open_store

if TYPE_CHECKING:
    from tracklane.collector.config import RoutingConfig
    from tracklane.collector.router import Router

__all__ = [
    "CollectorServer",
    "CollectorStartError",
    "run_until_signalled",
    "serve_in_thread",
]

DEFAULT_STARTUP_TIMEOUT = 10.0
DEFAULT_STOP_TIMEOUT = 5.0
# In-flight requests get this long to finish once a stop is asked for.
_GRACEFUL_SHUTDOWN = 3


class CollectorStartError(RuntimeError):
    """The collector could not start (port taken, bad database, startup timeout)."""


class CollectorServer:
    """A collector served by uvicorn in a background thread; build it with serve_in_thread.

    ``url`` is ``http://host:port`` (no trailing slash). ``stop()`` is idempotent, and
    the object is a context manager that stops on exit.
    """

    def __init__(
        self,
        storage: EventStore,
        write_keys: Tuple[str, ...],
        sock: socket.socket,
        router: Optional[Router] = None,
        workers: int = 0,
    ) -> None:
        """Prepare (but do not start) a server on the bound, listening ``sock``."""
        self.storage = storage
        self.router = router
        self.db_path = storage.path
        self.write_keys = write_keys
        self._sock = sock
        bound = sock.getsockname()
        self.host: str = bound[0]
        self.port: int = bound[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        config = uvicorn.Config(
            create_app(storage, write_keys, router, workers),
            log_level="warning",
            log_config=None,  # leave the host process's logging configuration alone
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="tracklane.collector", daemon=True)
        self._error: Optional[BaseException] = None
        self._stop_lock = threading.Lock()
        self._stopped = False

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # kept for start()/stop() to report, not lost in a thread
            self._error = exc

    def start(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
        """Start serving and wait until requests are accepted (at most ``timeout`` s)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            remaining = deadline - time.monotonic()
            if not self._thread.is_alive() or remaining <= 0:
                error = self._error
                self.stop()
                reason = "timed out" if error is None else f"failed: {error!r}"
                raise CollectorStartError(f"collector startup {reason}") from error
            self._thread.join(min(0.005, remaining))  # returns early if the server dies

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread.is_alive() and self._server.started and not self._stopped

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop serving, waiting up to ``timeout`` s, then close the database; idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.should_exit = True
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # in-flight requests overran: stop waiting for them
                self._server.force_exit = True
                self._thread.join(1.0)
        self._sock.close()
        if self.router is not None:
            self.router.stop()  # idempotent; done by the app's lifespan unless it overran
        if not self._thread.is_alive():
            if self.router is not None:
                self.router.outbox.close()
            self.storage.close()

    def __enter__(self) -> CollectorServer:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<CollectorServer {self.url} db={str(self.db_path)!r} {state}>"


def serve_in_thread(
    db_path: StrPath,
    write_keys: Iterable[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    config: Optional[RoutingConfig] = None,
    workers: int = 0,
) -> CollectorServer:
    """Start a collector in a background thread and return once it accepts requests.

    ``port=0`` picks a free port (see ``.port`` / ``.url``). With a routing ``config``,
    the sources' write keys are accepted too and stored events are delivered to its
    destinations. Raises CollectorStartError when the server cannot start, OSError when
    the address cannot be bound and StorageError when the database cannot be used.
    ``workers`` > 0 checks ingest bodies in that many processes (``tracklane serve --workers``).
    """
    if config is not None:
        write_keys = (*write_keys, *config.write_keys())
    keys = tuple(dict.fromkeys(write_keys))
    sock = _listen(host, port)
    router: Optional[Router] = None
    try:
        storage = open_store(db_path)
    except BaseException:
        sock.close()
        raise
    try:
        if config is not None and config.destinations:
            router = _build_router(storage, config, db_path)
        server = CollectorServer(storage, keys, sock, router, workers)
    except BaseException:
        sock.close()
        if router is not None:
            router.stop()
            router.outbox.close()
        storage.close()
        raise
    server.start(startup_timeout)
    return server


def _build_router(storage: EventStore, config: RoutingConfig, location: StrPath) -> Router:
    from tracklane.collector.outbox import SQLiteOutbox
    from tracklane.collector.outbox_base import Outbox
    from tracklane.collector.router import Router
    from tracklane.collector.storage import Storage

    outbox: Outbox
    if isinstance(storage, Storage):
        outbox = SQLiteOutbox(storage)
    else:  # PostgreSQL: the outbox lives beside the events, shared by every collector
        from tracklane.collector.outbox_pg import PostgresOutbox

        outbox = PostgresOutbox(str(location), config.lease_seconds)
    try:
        return Router(outbox, config)
    except ImportError as exc:  # a destination type's extra is missing
        outbox.close()
        raise CollectorStartError(str(exc)) from exc
    except BaseException:
        outbox.close()
        raise


def _listen(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` ourselves, so that port 0 yields a known port."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def run_until_signalled(
    db_path: StrPath,
    write_keys: Iterable[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    out: Optional[TextIO] = None,
    config: Optional[RoutingConfig] = None,
    workers: int = 0,
) -> int:
    """Serve until SIGTERM or SIGINT (Ctrl-C), then stop cleanly; return the exit code.

    Prints ``tracklane collector listening on <url>`` (flushed) once requests are
    accepted. Must be called from the main thread of a process that only serves: it tunes
    the process's garbage collector (:func:`tune_gc_for_serving`).
    """
    out = out if out is not None else sys.stdout
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Optional[FrameType]) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with serve_in_thread(
            db_path, write_keys, host, port, config=config, workers=workers
        ) as server:
            tune_gc_for_serving()
            print(f"tracklane collector listening on {server.url}", file=out, flush=True)
            # The wait is interrupted by the signal handler; the timeout only notices a dead server.
            while not stop.wait(1.0):
                if not server.running:
                    print("tracklane collector: the server stopped unexpectedly", file=sys.stderr)
                    return 1
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
