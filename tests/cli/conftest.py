"""Fixtures for the ``tracklane`` command tests: the installed entry point run as a
subprocess against collectors served on 127.0.0.1 in this process (``collector``, any
write key, and ``write_key`` come from ``tests/conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import httpx
import pytest

from tracklane.collector import CollectorServer, serve_in_thread

KEYED = ("cli-key-1", "cli-key-2")
DEADLINE = 60.0  # for one command; most take well under a second


def tracklane_command() -> List[str]:
    """The installed ``tracklane`` script (``.venv/bin/tracklane``)."""
    script = Path(sys.executable).with_name("tracklane")
    assert script.exists(), f"the entry point is not installed: {script}"
    return [str(script)]


def cli_env(**extra: str) -> Dict[str, str]:
    """The environment without the variables the commands read, plus ``extra``."""
    drop = {"TRACKLANE_WRITE_KEY", "SEGMENT_WRITE_KEY", "TRACKLANE_HOST"}
    env = {k: v for k, v in os.environ.items() if k not in drop and "proxy" not in k.lower()}
    env.update(extra)
    return env


def run_cli(
    *args: str,
    env: Optional[Dict[str, str]] = None,
    input: Optional[str] = None,
    cwd: Optional[Path] = None,
    timeout: float = DEADLINE,
) -> subprocess.CompletedProcess[str]:
    """Run ``tracklane ARGS`` to the end and return what it printed."""
    return subprocess.run(
        [*tracklane_command(), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else cli_env(),
        input=input,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def keyed_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorServer]:
    """A collector accepting only the keys in ``KEYED``."""
    with serve_in_thread(tmp_path_factory.mktemp("cli-keyed") / "events.db", KEYED) as server:
        yield server


def stored(server: CollectorServer, key: str, **params: Any) -> List[Dict[str, Any]]:
    """Events stored under ``key``, oldest first."""
    params.setdefault("limit", 10_000)
    response = httpx.get(f"{server.url}/v1/events", params=params, auth=(key, ""), timeout=10)
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["events"]))


def count(server: CollectorServer, key: str) -> int:
    """How many events are stored under ``key``."""
    response = httpx.get(f"{server.url}/v1/events/count", auth=(key, ""), timeout=10)
    assert response.status_code == 200, response.text
    return int(response.json()["count"])
