"""Import progress: a rich progress bar (rate, ETA) on a terminal, plain periodic lines
otherwise. Written to stderr; the summary goes to stdout."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

from tracklane.cli._common import CLI_INSTALL_HINT

__all__ = ["Reporter", "make_reporter"]


class Reporter:
    """Plain lines: one every ``interval`` seconds and one at the end."""

    def __init__(self, out: TextIO, interval: float) -> None:
        self.out = out
        self.interval = interval
        self.label = ""
        self.total: Optional[int] = None
        self.started = time.monotonic()
        self.last_line = self.started
        self.lines = 0

    def start(self, label: str, total: Optional[int], already: int) -> None:
        """A new input begins; ``already`` records were done by an earlier run."""
        self.label = label
        self.total = total
        self.started = self.last_line = time.monotonic()
        self.lines = 0
        if already:
            print(f"{label}: resuming after record {already:,}", file=self.out, flush=True)

    def update(self, position: int, lines: int, acknowledged: int) -> None:
        """Called every few thousand records with the bytes read and records handled."""
        self.lines = lines
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._line(position, lines, acknowledged, now)

    def finish(self, position: int, lines: int, acknowledged: int) -> None:
        """The input is done (or stopped)."""
        self._line(position, lines, acknowledged, time.monotonic())

    def _line(self, position: int, lines: int, acknowledged: int, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        share = ""
        if self.total:
            share = f" ({min(position / self.total, 1.0):.0%} of the file)"
        print(
            f"{self.label}: {lines:,} records read{share}, {acknowledged:,} acknowledged, "
            f"{lines / elapsed:,.0f} records/s",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        """Release the terminal."""


class RichReporter(Reporter):
    """A rich progress bar per input: bytes of the file read, records, rate and time left.

    The bar is on stderr and stops when its input is done, before the summary is printed
    on stdout (which rich leaves alone, so a piped stdout gets only the summary).
    """

    def __init__(self, out: TextIO) -> None:
        super().__init__(out, 0.0)
        from rich.console import Console

        self._console = Console(file=out)
        self._progress: Any = None
        self._task: Any = None

    def start(self, label: str, total: Optional[int], already: int) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().start(label, total, 0)
        if already:
            self._console.print(f"{label}: resuming after record {already:,}")
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[lines]:>12,} records  {task.fields[rate]:>9,.0f} records/s"),
            TextColumn("acked {task.fields[acked]:,}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
            refresh_per_second=8,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, lines=0, rate=0.0, acked=0)

    def update(self, position: int, lines: int, acknowledged: int) -> None:
        if self._progress is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self._progress.update(
            self._task,
            completed=position if self.total else None,
            lines=lines,
            rate=lines / elapsed,
            acked=acknowledged,
        )

    def finish(self, position: int, lines: int, acknowledged: int) -> None:
        self.update(position, lines, acknowledged)
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def make_reporter(mode: str, interval: float) -> Optional[Reporter]:
    """``auto``: a bar when stderr is a terminal (and rich is installed), else plain lines."""
    out = sys.stderr
    if mode == "none":
        return None
    if mode == "bar" or (mode == "auto" and out.isatty()):
        try:
            import rich.progress  # noqa: F401 - is the extra installed?

            return RichReporter(out)
        except ImportError:
            print(
                f"tracklane import: the progress bar needs rich ({CLI_INSTALL_HINT}); "
                "printing plain progress lines",
                file=out,
            )
    return Reporter(out, interval)
