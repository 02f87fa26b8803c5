"""The warehouse's row builder processes: the same rows as building in process, and no
batch lost when a builder dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from helpers import wait_until
from pg import PostgresServer
from tracklane.collector._json import dumps
from tracklane.collector.destinations.warehouse import PostgresWarehouse

from .processes import children, cmdline
from .test_warehouse import six_types, stored

psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")


def batches() -> List[List[Dict[str, Any]]]:
    """Batches exercising every path of building rows: types, conflicts, escapes, NULs."""
    awkward = "tab\there, line\nbreak, cr\r, back\\slash, \\N, and é"
    return [
        six_types(),
        [
            stored("track", "c1", event="Order Completed", properties={"total": "free"}),
            stored("track", "c2", event="Order Completed", properties={"total": 7, "n": 2**70}),
            stored("track", "c3", event="Odd", properties={"text": awkward, "when": "2024-13-01"}),
            stored("identify", "c4", traits={"plan": awkward, "since": "2024-05-01T08:00:00Z"}),
            stored("page", "c5", name="Null", properties={"note": "\\N", "empty": ""}),
        ],
        [
            stored("track", "n1", event="Nul", properties={"text": "a\x00b"}),
            stored("track", "n2", event="Nul", properties={"text": "fine"}),
        ],
    ]


def contents(dsn: str, schema: str) -> Dict[str, List[Tuple[Any, ...]]]:
    """Every table of ``schema`` as sorted rows (uuid_ts, the load's own clock, left out)."""
    found: Dict[str, List[Tuple[Any, ...]]] = {}
    with psycopg.connect(dsn) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
            )
        ]
        for table in tables:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                    " AND table_name = %s AND column_name <> 'uuid_ts' ORDER BY column_name",
                    [schema, table],
                )
            ]
            select = ", ".join(f'"{name}"' for name in names)
            found[table] = sorted(
                (
                    tuple(map(repr, row))
                    for row in conn.execute(f'SELECT {select} FROM "{schema}"."{table}"')
                ),
            )
    return found


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """A fresh database."""
    return postgres.create_database("builders")


@pytest.fixture
def built(dsn: str) -> Iterator[PostgresWarehouse]:
    """A warehouse building rows in one worker process, into schema ``w_<source>``."""
    loader = PostgresWarehouse(dsn, schema="w_{source}", row_builders=1)
    yield loader
    loader.close()


def encoded(messages: List[Dict[str, Any]]) -> List[bytes]:
    """Messages as the router hands them over: their stored JSON."""
    return [dumps(message) for message in messages]


def builder_pids() -> List[int]:
    """This process's children running warehouse row builders (not other helper processes)."""
    return [
        pid
        for pid in children(os.getpid())
        if b"tracklane.collector._child" in (command := cmdline(pid))
        and b"tracklane-row-builder" in command
    ]


def test_rows_built_in_a_worker_process_equal_rows_built_in_process(
    dsn: str, built: PostgresWarehouse
) -> None:
    """Every table, column type, value and discard is the same whichever process builds
    the rows (type conflicts, wide integers, COPY's special characters, NUL characters)."""
    here = PostgresWarehouse(dsn, schema="p_{source}")
    try:
        for batch in batches():
            built.load_encoded("Backend", encoded(batch))
            here.load("Backend", batch)
    finally:
        here.close()
    assert builder_pids(), "the rows were not built in a worker process"
    in_worker, in_process = contents(dsn, "w_backend"), contents(dsn, "p_backend")
    assert in_worker == in_process
    assert in_worker["tracklane_discards"]  # the conflicts were kept as text in both
    text = contents(dsn, "w_backend")["odd"]
    assert any("back\\\\slash" in value for row in text for value in row)


def test_a_killed_row_builder_loses_no_batch_and_is_replaced(
    dsn: str, built: PostgresWarehouse
) -> None:
    """A builder killed with SIGKILL costs nothing: the batch is built in process, the
    next one in a new builder, and every event is loaded once."""
    built.load_encoded("Backend", encoded([stored("track", "k1", event="Kept")]))
    (first,) = builder_pids()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: first not in builder_pids(), 10, "the killed builder to end")
    result = built.load_encoded("Backend", encoded([stored("track", "k2", event="Kept")]))
    assert result.new == 1
    result = built.load_encoded("Backend", encoded([stored("track", "k3", event="Kept")]))
    assert result.new == 1
    replaced = builder_pids()
    assert replaced
    assert first not in replaced
    with psycopg.connect(dsn) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM w_backend.kept ORDER BY id")]
    assert ids == ["k1", "k2", "k3"]


def test_row_builders_that_cannot_start_leave_the_load_to_this_process(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When no builder process can be started (the OS refuses a new process), every batch
    is built and loaded in the collector's process instead of failing."""
    import tracklane.collector.destinations.warehouse_build as warehouse_build

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(warehouse_build, "start_child", refuse)
    loader = PostgresWarehouse(dsn, schema="r_{source}", row_builders=2)
    try:
        for number in range(3):
            batch = [stored("track", f"r{number}", event="Refused")]
            assert loader.load_encoded("Backend", encoded(batch)).new == 1
    finally:
        loader.close()
    assert not builder_pids()
    with psycopg.connect(dsn) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM r_backend.refused ORDER BY id")]
    assert ids == ["r0", "r1", "r2"]


def test_a_column_typed_otherwise_than_the_builder_assumed_still_fits(
    dsn: str, built: PostgresWarehouse
) -> None:
    """A new loader's builder fits an integer as bigint; the column is double precision
    (made by an earlier batch): the value lands as a number, nothing discarded."""
    first = PostgresWarehouse(dsn, schema="w_{source}")
    try:
        first.load("Backend", [stored("track", "f1", event="Paid", properties={"total": 1.5})])
    finally:
        first.close()
    result = built.load_encoded(
        "Backend", encoded([stored("track", "f2", event="Paid", properties={"total": 3})])
    )
    assert (result.new, result.discarded_values) == (1, 0)
    with psycopg.connect(dsn) as conn:
        totals = list(conn.execute("SELECT id, total FROM w_backend.paid ORDER BY id"))
    assert totals == [("f1", 1.5), ("f2", 3.0)]


_BUILDERS_SCRIPT = """
import datetime, os, sys, time
from tracklane.collector.destinations.warehouse_build import RowBuilders
builders = RowBuilders(2)
assert builders.build([], datetime.datetime.now(datetime.timezone.utc), {}) is not None
tasks = f"/proc/{os.getpid()}/task"
children = [c for t in os.listdir(tasks) for c in open(f"{tasks}/{t}/children").read().split()]
print(" ".join(children), flush=True)
time.sleep(120)  # killed by the test long before
"""


def test_row_builders_end_after_their_process_is_killed() -> None:
    """After a kill -9 of the process that started them, its row builders end by themselves."""
    import subprocess
    import sys

    import tracklane

    src = str(Path(tracklane.__file__).resolve().parents[1])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", _BUILDERS_SCRIPT], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        builders = [pid for pid in children if b"tracklane.collector._child" in cmdline(pid)]
        assert len(builders) == 2
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
    wait_until(lambda: not any(cmdline(pid) for pid in builders), 10, "the builders to end")


_UNGUARDED_SCRIPT = """
import base64, json, sys, time, urllib.request
import psycopg
from tracklane.collector import serve_in_thread
from tracklane.collector.config import parse_config

with open({marker!r}, "a") as marker:  # at import: runs again in any child importing __main__
    marker.write("imported\\n")
config = parse_config({{
    "sources": [{{"name": "backend", "write_keys": ["key-1"]}}],
    "destinations": [{{"name": "Warehouse", "type": "postgres", "dsn": {dsn!r},
                       "row_builders": 2}}],
}})
server = serve_in_thread({db!r}, config=config)
batch = [{{"type": "track", "event": "Script Ran", "userId": "u", "messageId": f"s{{n}}"}}
         for n in range(50)]
request = urllib.request.Request(
    server.url + "/v1/batch", data=json.dumps({{"batch": batch}}).encode(),
    headers={{"Content-Type": "application/json",
              "Authorization": "Basic " + base64.b64encode(b"key-1:").decode()}})
urllib.request.urlopen(request, timeout=30).read()
deadline = time.monotonic() + 60
count = 0
while count < 50 and time.monotonic() < deadline:
    with psycopg.connect({dsn!r}) as conn:
        try:
            count = conn.execute("SELECT count(*) FROM backend.script_ran").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            pass
    time.sleep(0.05)  # a poll with a deadline: the router loads in its own time
print(count, flush=True)
server.stop()
"""


def test_an_unguarded_user_script_is_not_run_again_by_the_row_builders(
    dsn: str, tmp_path: Path
) -> None:
    """A script calling ``serve_in_thread`` with a postgres destination and no
    ``if __name__ == "__main__":`` guard runs once: the row builders import only tracklane,
    and its events reach the warehouse."""
    import subprocess
    import sys

    marker = tmp_path / "imported.txt"
    script = tmp_path / "user_script.py"
    script.write_text(
        _UNGUARDED_SCRIPT.format(marker=str(marker), dsn=dsn, db=str(tmp_path / "events.db"))
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["50"], done.stderr
    assert marker.read_text() == "imported\n"
