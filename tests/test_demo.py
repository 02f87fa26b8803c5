"""`make demo` runs end to end: collector, example app, table, clean stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end():
    """The demo stores all seven events of the example shop and exits 0."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the collector stored 7 events" in result.stdout
    assert "revenue='1249.99'" in result.stdout
    assert "2025-03-14T15:09" in result.stdout
    assert "collector stopped (exit code 0)" in result.stdout
