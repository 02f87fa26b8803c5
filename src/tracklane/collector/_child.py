"""Helper processes started as ``python -m tracklane.collector._child``, not as ``spawn``.

multiprocessing's ``spawn`` re-imports the parent's ``__main__`` in the child (as
``__mp_main__``): a user's script that calls ``serve_in_thread`` without an
``if __name__ == "__main__":`` guard would run again in every row builder or ingest worker.
A child started here imports only tracklane: it gets the function to run and its arguments
(pickled, on its standard input) and its socket pairs as inherited file descriptors, wrapped
in :class:`multiprocessing.connection.Connection` (the same framing as a ``Pipe``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ["READY", "Child", "ChildRefused", "ChildStartError", "await_ready", "start_child"]

# What a helper process sends on each channel once it is ready to serve; anything else it
# sends instead is why it cannot (for :func:`await_ready` to report).
READY = b"ready"

# The directory holding the ``tracklane`` package, first on the child's path, so that the
# child runs this same tracklane whatever the parent's sys.path was made of.
_HOME = str(Path(__file__).resolve().parent.parent.parent)


class Child:
    """A started helper process (the subset of ``multiprocessing.Process`` the callers use)."""

    def __init__(self, popen: subprocess.Popen[bytes], name: str) -> None:
        self._popen = popen
        self.name = name

    @property
    def pid(self) -> Optional[int]:
        return self._popen.pid

    @property
    def exitcode(self) -> Optional[int]:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: Optional[float] = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def terminate(self) -> None:
        if self._popen.poll() is None:
            self._popen.terminate()

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()


def start_child(
    function: str, args: Tuple[Any, ...], channels: int, name: str
) -> Tuple[Child, List[Connection]]:
    """Start ``function`` ("module:name") in a new process as ``function(connections, *args)``.

    Returns the process and the parent's ends of ``channels`` socket pairs.
    """
    pairs = [socket.socketpair() for _ in range(channels)]
    child_fds = [theirs.fileno() for _, theirs in pairs]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_HOME, env.get("PYTHONPATH")]))
    try:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tracklane.collector._child", name],
            stdin=subprocess.PIPE,
            pass_fds=child_fds,
            env=env,
        )
        assert popen.stdin is not None
        with popen.stdin:
            popen.stdin.write(pickle.dumps((function, args, child_fds)))
    finally:
        for _, theirs in pairs:
            theirs.close()
    return Child(popen, name), [Connection(ours.detach()) for ours, _ in pairs]


class ChildStartError(RuntimeError):
    """A helper process did not say it was ready (it timed out or stopped)."""


class ChildRefused(RuntimeError):
    """A helper process said why it cannot serve (its message, e.g. the store's error)."""


def await_ready(channels: Sequence[Connection], what: str, timeout: float) -> None:
    """Wait until the process at the other end of each channel says :data:`READY`.

    ``what`` names the process in errors ("an ingest worker"). Raises ChildStartError if it
    does not within ``timeout`` seconds or stops first, ChildRefused with what it said instead.
    """
    for channel in channels:
        if not channel.poll(timeout):
            raise ChildStartError(f"{what} did not start within {timeout:.0f} s")
        try:
            said = channel.recv_bytes()
        except (EOFError, OSError):
            raise ChildStartError(f"{what} stopped while starting") from None
        if said != READY:
            raise ChildRefused(said.decode("utf-8", "replace"))


def _main(argv: Sequence[str]) -> None:
    """In the child: read what to run from standard input and run it."""
    function, args, fds = pickle.loads(sys.stdin.buffer.read())
    module_name, _, attribute = function.partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    target([Connection(fd) for fd in fds], *args)


if __name__ == "__main__":
    _main(sys.argv[1:])
