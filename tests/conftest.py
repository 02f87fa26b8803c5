"""Shared fixtures: a recording HTTP server on 127.0.0.1, clients pointed at it, PostgreSQL,
and one collector for the session (each test reads it with its own ``write_key``).

Tests in modules marked ``both_clients`` run twice: with ``tracklane.Client`` and with
``tracklane.AsyncClient`` (driven on a real loop through ``loop_client.LoopClient``).
A test that only applies to the threaded client is marked ``thread_only``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, List

import pytest

import tracklane
from helpers import RecordingServer
from loop_client import LoopClient
from pg import PostgresServer, PostgresUnavailable

if TYPE_CHECKING:
    from tracklane.collector import CollectorServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_clients: run the module's tests on both clients")
    config.addinivalue_line(
        "markers", "thread_only(reason): the behaviour exists only in the threaded Client"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    if (
        "make_client" in metafunc.fixturenames
        and definition.get_closest_marker("both_clients") is not None
        and definition.get_closest_marker("thread_only") is None
    ):
        metafunc.parametrize("client_kind", ["Client", "AsyncClient"], indirect=True)


@pytest.fixture
def client_kind(request: pytest.FixtureRequest) -> str:
    """Which client ``make_client`` builds (``Client`` unless the module runs both)."""
    return getattr(request, "param", "Client")


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    """A fresh recording server for one test."""
    srv = RecordingServer()
    yield srv
    srv.close()


@pytest.fixture
def make_client(server: RecordingServer, client_kind: str) -> Iterator[Callable[..., Any]]:
    """Build clients aimed at ``server`` with fast retries; shut them all down afterwards."""
    made: List[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("host", server.url)
        options.setdefault("backoff_base", 0.01)
        options.setdefault("backoff_cap", 0.05)
        write_key = options.pop("write_key", "test-key")
        client: Any
        if client_kind == "AsyncClient":
            client = LoopClient(write_key, **options)
        else:
            client = tracklane.Client(write_key, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=2)
        if isinstance(client, LoopClient):
            client.stop()


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


@pytest.fixture(scope="session")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorServer]:
    """A collector on 127.0.0.1 accepting any write key, shared by the session's tests.

    Tests keep to their own events by reading with their own ``write_key``.
    """
    from tracklane.collector import serve_in_thread  # the collector extra, only where used

    with serve_in_thread(tmp_path_factory.mktemp("collector") / "events.db") as server:
        yield server


@pytest.fixture
def write_key() -> str:
    """A write key no other test uses, so reads with it see only this test's events."""
    return f"wk-{uuid.uuid4().hex}"
