"""bench/collector_ingest.py stays runnable: short runs verify every event was stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import tracklane.collector
from pg import PostgresUnavailable, find_bin_dir

SRC = Path(tracklane.collector.__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "collector_ingest.py"
SHORT = ["--clients", "2", "--duration", "1", "--max-batches", "20"]


def _run(args: List[str], script: Path = SCRIPT) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_short_benchmark_run_verifies_its_counts() -> None:
    """A one-second SQLite run with two clients exits 0 and reports the counts as matching."""
    out = _run([*SHORT, "--stores", "sqlite", "--warehouse-events", "0"])
    assert "collector ingest into SQLite" in out
    assert "verification: OK" in out
    assert "events/s" in out


def test_store_benchmark_verifies_every_event_once() -> None:
    """bench/collector_store.py with 2,400 events exits 0 with retries of any age refused."""
    out = _run(["--events", "2400", "--group", "40"], SCRIPT.with_name("collector_store.py"))
    assert "CPU per event" in out
    assert "verification: OK (2,400 stored; 0 of" in out


@pytest.mark.parametrize("form", ["compact", "spaced"])
def test_check_benchmark_compares_both_paths(form: str) -> None:
    """bench/collector_check.py runs both checks on every body and reports their ratio."""
    args = ["--form", form, "--rounds", "1", "--bodies", "2", "--repeat", "1"]
    out = _run(args, SCRIPT.with_name("collector_check.py"))
    assert f"Checking 100-event batches ({form}" in out
    assert "shallow: median" in out
    assert "full parse: median" in out
    assert "shallow / full parse, round by round: median" in out


def test_short_postgres_run_verifies_ingest_and_warehouse_counts() -> None:
    """A short PostgreSQL ingest run and a 1,000-event warehouse load both verify their counts."""
    try:
        find_bin_dir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    args = ["--stores", "postgresql", "--warehouse-events", "1000", "--warehouse-batch", "250"]
    out = _run([*SHORT, *args])
    assert "collector ingest into PostgreSQL" in out
    assert "warehouse load (postgres destination, batches of 250)" in out
    assert out.count("verification: OK") == 2, out


def test_short_routing_benchmark_run_verifies_every_message_arrived() -> None:
    """bench/collector_routing.py with 2,000 events exits 0 having seen every messageId."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("collector_routing.py")), "--events", "2000"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verification: OK" in result.stdout
    assert "routed:" in result.stdout
