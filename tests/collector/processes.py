"""Collector subprocesses for the CLI tests: the installed ``tracklane`` entry point, started
in a temporary directory, its URL line read within a deadline."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import tracklane.collector
from tracklane.collector._options import ENV_WRITE_KEYS

SRC = Path(tracklane.collector.__file__).resolve().parents[2]
URL_LINE = re.compile(r"tracklane collector listening on (http://127\.0\.0\.1:(\d+))\n")
STARTUP_DEADLINE = 20.0  # a cold interpreter on a busy CI machine
EXIT_DEADLINE = 5.0


def child_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_WRITE_KEYS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def tracklane_command() -> List[str]:
    """The installed ``tracklane`` script, or the same entry point through ``-m``."""
    script = Path(sys.executable).with_name("tracklane")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracklane._cli"]


class Running:
    """A collector subprocess whose URL line has been read."""

    def __init__(self, args: Sequence[str], tmp_path: Path, **env: str) -> None:
        self.stderr_path = tmp_path / f"stderr-{uuid.uuid4().hex}.txt"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                list(args),
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=child_env(**env),
                cwd=tmp_path,
            )
        self.url, self.port = self._read_url()

    def _read_url(self) -> Tuple[str, int]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + STARTUP_DEADLINE
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(deadline - time.monotonic()):
                    line = self.proc.stdout.readline().decode()
                    match = URL_LINE.fullmatch(line)
                    assert match, f"unexpected output {line!r}; stderr: {self.stderr()}"
                    return match[1], int(match[2])
        raise AssertionError(f"no URL printed in {STARTUP_DEADLINE}s; stderr: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int) -> Tuple[int, float]:
        """Send ``sig``; return the exit code and how long the exit took."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(EXIT_DEADLINE)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_DEADLINE)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


Spawn = Callable[..., Running]


# -- child processes (Linux /proc) ------------------------------------------------------------


def children(pid: int) -> List[int]:
    """The child processes of ``pid`` (skipping threads and children that end meanwhile)."""
    found: List[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cmdline(pid: int) -> bytes:
    """A process's command line; empty once it ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child not yet reaped, a zombie, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def all_gone(pids: Sequence[int], deadline: float) -> bool:
    """Whether every process in ``pids`` has exited by ``deadline`` (polled)."""
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.02)
    return False
