"""Fixtures for the collector tests: real servers on 127.0.0.1 and clients aimed at them.

``collector`` (any write key) and ``write_key`` come from ``tests/conftest.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import httpx
import pytest

from tracklane.collector import CollectorServer, serve_in_thread

from .processes import Running, Spawn
from .support import KEYS, Message


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorServer]:
    """A collector accepting only the write keys in ``KEYS``, shared by the session."""
    with serve_in_thread(tmp_path_factory.mktemp("keyed") / "events.db", KEYS) as server:
        yield server


@pytest.fixture
def client(collector: CollectorServer, write_key: str) -> Iterator[httpx.Client]:
    """An HTTP client for ``collector`` that authenticates with this test's ``write_key``."""
    with httpx.Client(base_url=collector.url, auth=(write_key, ""), timeout=10) as http:
        yield http


@pytest.fixture
def keyed_client(keyed_server: CollectorServer) -> Iterator[httpx.Client]:
    """An HTTP client for ``keyed_server``, without credentials (pass ``auth=`` per call)."""
    with httpx.Client(base_url=keyed_server.url, timeout=10) as http:
        yield http


@pytest.fixture
def make_message() -> Callable[..., Message]:
    """Build a valid message (a track by default) with a fresh messageId.

    Keyword fields override; a field given as ``...`` is left out.
    """

    defaults: Dict[str, Message] = {
        "track": {"event": "Order Completed", "properties": {"total": 12.5}},
        "identify": {"traits": {"plan": "pro"}},
        "page": {"name": "Home", "properties": {"path": "/"}},
        "screen": {"name": "Settings"},
        "group": {"groupId": "acme", "traits": {"seats": 3}},
        "alias": {"previousId": "anon-1"},
    }

    def make(kind: str = "track", **fields: Any) -> Message:
        message: Message = {"type": kind, "messageId": str(uuid.uuid4()), "userId": "user-1"}
        message.update(defaults.get(kind, {}))
        message.update(fields)
        return {key: value for key, value in message.items() if value is not ...}

    return make


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start collector subprocesses that are always reaped after the test."""
    started: List[Running] = []

    def start(args: Sequence[str], **env: str) -> Running:
        running = Running(args, tmp_path, **env)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()
