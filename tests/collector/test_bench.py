"""bench/collector_ingest.py stays runnable: a short run verifies every event was stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tracklane.collector

SRC = Path(tracklane.collector.__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "collector_ingest.py"


def test_short_benchmark_run_verifies_its_counts() -> None:
    """A one-second run with two clients exits 0 and reports the counts as matching."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--clients", "2", "--duration", "1", "--max-batches", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verification: OK" in result.stdout
    assert "events/s" in result.stdout


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
