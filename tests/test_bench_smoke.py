"""Smoke test for the benchmark harness: it runs, stops by itself and writes its JSON.

Timings are not asserted (machines are noisy); only that the run completes and the
report has the expected shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_quick_tracklane_only(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            "--only",
            "tracklane",
            "--no-peers-install",
            "--strict",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=str(REPO),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(output.read_text())
    for key in (
        "schema",
        "meta",
        "libraries",
        "floor",
        "baseline_handler",
        "results",
        "ratios",
        "runs",
        "errors",
        "table_markdown",
    ):
        assert key in doc, key
    assert doc["meta"]["quick"] is True
    assert doc["meta"]["rounds_done"] == 1
    assert doc["errors"] == []
    assert set(doc["libraries"]) == {"tracklane"}
    assert doc["floor"]["deque_append_p50_us"] is not None
    assert doc["baseline_handler"]["p50_us"] is not None

    entry = doc["libraries"]["tracklane"]
    assert entry["available"], entry.get("skip_reason")
    results = doc["results"]["tracklane"]
    for metric in (
        "track_p50_us",
        "track_p99_us",
        "events_per_s",
        "cpu_s_per_100k",
        "mem_rss_bytes_per_msg",
        "mem_tracemalloc_bytes_per_msg",
        "handler_p50_us",
        "handler_p99_us",
        "tight_p50_us",
        "tight_p99_us",
        "paced_p99_us",
    ):
        assert results[metric] is not None, metric
        assert results[metric] > 0, metric
    # Case e: the library's run and its own no-analytics run, paired within the round.
    (base,) = doc["runs"]["none"]["handler"]
    (mine,) = doc["runs"]["tracklane"]["handler"]
    assert base["paired_with"] == mine["paired_with"] == "tracklane"
    assert base["round"] == mine["round"] == 0
    assert results["handler_p99_overhead_us"] == mine["p99_us"] - base["p99_us"]
    assert "| metric |" in doc["table_markdown"]
    assert "| a. `track()` p50" in proc.stdout
    assert "| f. tight loop: `track()` p99" in proc.stdout
