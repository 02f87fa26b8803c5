"""A collector in a subprocess, for the tests that kill one with SIGKILL mid-run."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import tracklane.collector

SRC = Path(tracklane.collector.__file__).resolve().parents[2]
URL_LINE = re.compile(r"tracklane collector listening on (http://127\.0\.0\.1:\d+)\n")


class CollectorProcess:
    """``python -m MODULE_ARGS --config CONFIG --port 0`` in a subprocess; ``url`` once it
    listens (``tracklane.collector --db ...`` or ``tracklane.cli serve --db ...``)."""

    def __init__(self, module_args: Sequence[str], config: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module_args, "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            assert selector.select(30), "the collector did not start within 30 s"
        match = URL_LINE.fullmatch(self.proc.stdout.readline().decode())
        assert match, "the collector did not print its URL"
        self.url = match[1]

    def kill(self) -> None:
        """SIGKILL, and reap."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.close()

    def close(self) -> None:
        """Terminate it if it still runs; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
