"""bench/collector_warehouse.py stays runnable: a short routed run loads every event once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tracklane.collector
from pg import PostgresUnavailable, find_bin_dir

SRC = Path(tracklane.collector.__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "collector_warehouse.py"


def test_short_warehouse_routing_run_loads_every_event_once() -> None:
    """1,000 events posted to a collector routing to PostgreSQL all land, each exactly once."""
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    try:
        find_bin_dir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--events", "1000", "--timeout", "60"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verification: OK (every event once)" in result.stdout
    assert "routed:" in result.stdout
