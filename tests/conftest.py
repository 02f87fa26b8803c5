"""Shared fixtures: a recording HTTP server on 127.0.0.1, clients pointed at it, PostgreSQL."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest

import tracklane
from helpers import RecordingServer
from pg import PostgresServer, PostgresUnavailable


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    """A fresh recording server for one test."""
    srv = RecordingServer()
    yield srv
    srv.close()


@pytest.fixture
def make_client(server: RecordingServer) -> Iterator[Callable[..., tracklane.Client]]:
    """Build clients aimed at ``server`` with fast retries; shut them all down afterwards."""
    made: List[tracklane.Client] = []

    def make(**options: Any) -> tracklane.Client:
        options.setdefault("host", server.url)
        options.setdefault("backoff_base", 0.01)
        options.setdefault("backoff_cap", 0.05)
        client = tracklane.Client(options.pop("write_key", "test-key"), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=2)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Debian's PostgreSQL, started once for the session in a temporary directory.

    Skips (saying why) where the server binaries are not installed. Tests take a
    fresh database each with ``postgres.create_database()``.
    """
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server
