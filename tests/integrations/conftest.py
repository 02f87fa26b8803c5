"""Shared parts of the integration tests: server processes, default settings (the collector
and ``write_key`` come from ``tests/conftest.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import httpx
import pytest

import tracklane
from helpers import wait_for_port
from tracklane.collector import CollectorServer

SRC = str(Path(tracklane.__file__).resolve().parent.parent)


def stored(
    collector: CollectorServer, write_key: str, count: int, timeout: float = 20.0
) -> List[Dict[str, Any]]:
    """The events stored under ``write_key``, once there are ``count`` (or at the deadline)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=collector.url, auth=(write_key, ""), timeout=10) as http:
        while True:
            events = http.get("/v1/events", params={"limit": 10_000}).json()["events"]
            if len(events) >= count or time.monotonic() >= deadline:
                return list(events)
            time.sleep(0.05)  # polling the store, bounded by the deadline


class ServerProcess:
    """A real server (gunicorn, uvicorn, a Celery worker) in its own process.

    Its output goes to a file, shown when an assertion about it fails.
    """

    def __init__(
        self, command: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None
    ) -> None:
        self.log_path = cwd / f"server-{uuid.uuid4().hex[:8]}.log"
        self._log = self.log_path.open("w+")
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join([str(cwd), SRC])
        environment.update(env or {})
        self.proc = subprocess.Popen(
            list(command), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env=environment
        )

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        """Poll until the server accepts connections on ``port``; fail if it died."""
        wait_for_port(port, timeout, alive=self.proc, output=self.output)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as a process manager stops it; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the server ignored SIGTERM:\n{self.output()}") from None

    def output(self) -> str:
        """Everything the server printed so far."""
        self._log.flush()
        return self.log_path.read_text()

    def close(self) -> None:
        """Make sure the process is gone (after a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def processes() -> Iterator[List[ServerProcess]]:
    """Server processes started by a test; killed at the end if still running."""
    started: List[ServerProcess] = []
    yield started
    for process in started:
        process.close()


_SETTINGS = ("write_key", "host", "flush_interval", "batch_size", "shutdown_timeout", "send")


@pytest.fixture
def default_settings() -> Iterator[None]:
    """Restore the default client's module settings and shut it down after the test."""
    saved = {name: getattr(tracklane, name) for name in _SETTINGS}
    tracklane.shutdown()
    yield
    tracklane.shutdown(timeout=2)
    for name, value in saved.items():
        setattr(tracklane, name, value)


def python() -> str:
    """The interpreter running the tests (its venv has gunicorn, uvicorn, celery)."""
    return sys.executable
