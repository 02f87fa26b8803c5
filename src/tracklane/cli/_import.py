"""``tracklane import FILE...``: history into any Segment-compatible endpoint, exactly once.

Every record goes through a ``tracklane.Client`` (the same validation, encoding, batching
and retries as an application's calls). Resuming works on the client's public contract:

- each record without a ``messageId`` gets a stable one derived from the input's name, the
  record's number and its text, so a record sent twice is stored once by a receiver that
  deduplicates by ``messageId`` (tracklane's collector and Segment do);
- every second a checkpoint notes how many records were read, calls ``client.flush()``,
  and once that returns complete (everything up to there acknowledged, or rejected and
  reported to ``on_error``) writes that number to the state file, atomically;
- a re-run skips the records the state file counts. Killed at any moment (even SIGKILL),
  at most the records after the last checkpoint are sent again, and deduplicated.

Drops the server caused by the message itself (400, 413 on one message) count as rejected
with their reason; any other drop (retries exhausted, a refused write key) stops the import
without moving the checkpoint past it, so the next run sends those records again.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

import orjson

import tracklane
from tracklane.cli._common import describe_error, error, resolve_host, resolve_write_key
from tracklane.cli._fields import TYPES
from tracklane.cli._progress import Reporter, make_reporter
from tracklane.cli._records import (
    Input,
    LineError,
    csv_rows,
    derived_message_id,
    is_csv,
    parse_mapping,
    record_digest,
    to_message,
)
from tracklane.cli._state import Progress, StateError, StateFile

__all__ = ["DESCRIPTION", "EXAMPLES", "add_import_arguments", "run"]

DESCRIPTION = (
    "Import JSON Lines (one Segment message per line: type plus camelCase fields) or CSV "
    "(columns mapped to fields), plain or gzip, keeping each timestamp. Resumable: "
    "interrupted (Ctrl-C, SIGTERM, even SIGKILL), the same command continues after the last "
    "record the server acknowledged. Records without a messageId get a stable one, so a "
    "record sent twice is stored once."
)
EXAMPLES = """\
  tracklane import events.jsonl --writeKey KEY --host http://127.0.0.1:8787
  tracklane import --dry-run history-2023.jsonl.gz history-2024.jsonl.gz
  tracklane import signups.csv --type identify --map email=traits.email \\
      --map plan=traits.plan --map user=userId --map when=timestamp --map notes=
  zcat dump.jsonl.gz | tracklane import - --state dump.state.json --rate 2000"""

STATE_SUFFIX = ".import-state.json"
CHECKPOINT_INTERVAL = 1.0
_CHECKPOINT_FLUSH_TIMEOUT = 30.0
_BOM = b"\xef\xbb\xbf"
_UPDATE_EVERY = 2048
# Rejections by the server that concern the message itself; others (401, 403, 404...)
# concern the whole import and stop it.
_MESSAGE_STATUSES = frozenset({400, 413, 422})


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tracklane import``."""
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="input files; - for stdin")
    parser.set_defaults(collects="inputs")  # files may also follow the flags
    parser.add_argument("--writeKey", "--write-key", dest="write_key", metavar="KEY")
    parser.add_argument("--host", metavar="URL", help="the endpoint (default: api.segment.io)")
    parser.add_argument("--format", choices=("jsonl", "csv"), help="default: from the file name")
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COLUMN=FIELD[:CONVERSION]",
        help="CSV: map a column to a field (userId, properties.plan, context.ip, ...); "
        "conversions: string (default), number, int, float, bool, json; COLUMN= ignores it",
    )
    parser.add_argument("--type", choices=TYPES, help="CSV: the type of rows without a type column")
    parser.add_argument("--dry-run", action="store_true", help="validate only; report bad records")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="skip invalid records instead of stopping"
    )
    parser.add_argument("--rate", type=float, metavar="N", help="send at most N records a second")
    parser.add_argument(
        "--state",
        metavar="PATH",
        help=f"state file (default: beside each input, FILE{STATE_SUFFIX})",
    )
    parser.add_argument(
        "--restart", action="store_true", help="ignore the state file and start from the top"
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "plain", "none"),
        default="auto",
        help="auto (default): a bar on a terminal, plain lines otherwise",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between plain progress lines (default 5)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=500, metavar="N", help="messages per request (500)"
    )
    parser.add_argument(
        "--retries", type=int, default=10, metavar="N", help="retries per batch (default 10)"
    )


class _Stop(Exception):
    """The import cannot go on (a drop that is not the record's fault, a bad record)."""


class Importer:
    """Sends the records of the inputs through one client and keeps the checkpoints."""

    def __init__(self, args: argparse.Namespace, client: tracklane.Client) -> None:
        self.args = args
        self.client = client
        self.lock = threading.Lock()
        self.failure: Optional[BaseException] = None
        self.too_large: Optional[BaseException] = None
        # messageId -> record number until checkpointed, in blocks of about _UPDATE_EVERY
        # records, each with the first record number it may hold (pruned a block at a time).
        self.numbers: Deque[Tuple[int, Dict[Any, int]]] = collections.deque()
        self.rejections: List[Tuple[int, str]] = []  # (record number, reason), not yet saved
        self.examples: Dict[str, List[int]] = {}
        self.skipped_examples: List[str] = []
        self.mark: Tuple[int, int, int, bytes] = (0, 0, 0, b"")  # done, enqueued, skipped, last
        self.progress = Progress()
        self.base = Progress()
        self.state: Optional[StateFile] = None
        self.key = ""
        self.busy = False
        self.interrupted = False

    def interrupt(self, _signum: int, _frame: Optional[FrameType]) -> None:
        """SIGINT/SIGTERM: stop now, or right after the record being sent is counted."""
        if self.busy and not self.interrupted:
            self.interrupted = True
            return
        raise KeyboardInterrupt

    # -- what the client tells us ------------------------------------------------------

    def on_error(self, exc: BaseException, batch: List[Dict[str, Any]]) -> None:
        """Rejected records are counted with their reason; any other drop stops the import."""
        if isinstance(exc, tracklane.MessageTooLargeError):
            self.too_large = exc  # raised from the call, in the reading thread
            return
        if isinstance(exc, tracklane.QueueFullError):
            return  # the reading thread offers the record again
        if isinstance(exc, tracklane.APIError) and exc.status_code in _MESSAGE_STATUSES:
            reason = describe_error(exc)
            # A copy (atomic), as the reading thread adds blocks: the latest first.
            blocks = [block for _, block in reversed(list(self.numbers))]
            with self.lock:
                for message in batch:
                    message_id = message.get("messageId")
                    for block in blocks:
                        number = block.get(message_id)
                        if number is not None:
                            self.rejections.append((number, reason))
                            break
            return
        with self.lock:
            if self.failure is None:
                self.failure = exc

    # -- checkpoints -------------------------------------------------------------------

    def checkpoint(self, timeout: float) -> bool:
        """Flush; if everything read so far is settled, save the state. True when saved."""
        done, enqueued, skipped, last = self.mark
        result = self.client.flush(timeout)
        with self.lock:
            if self.failure is not None or not result:
                return False
            # Record numbers count from the top of the input; ``done`` from this run's start.
            upto = self.base.done + done
            mine = [r for r in self.rejections if r[0] <= upto]
            self.rejections = [r for r in self.rejections if r[0] > upto]
            numbers = self.numbers
            while len(numbers) > 1 and numbers[1][0] <= upto + 1:
                numbers.popleft()  # every record of the first block is settled
        progress = self.progress
        for number, reason in mine:
            progress.reasons[reason] = progress.reasons.get(reason, 0) + 1
            examples = self.examples.setdefault(reason, [])
            if len(examples) < 10:
                examples.append(number)
        progress.rejected += len(mine)
        progress.done = self.base.done + done
        progress.sent = self.base.sent + enqueued - (progress.rejected - self.base.rejected)
        progress.skipped = self.base.skipped + skipped
        if done:
            progress.fingerprint = record_digest(last)
        if self.state is not None:
            self.state.save(self.key, progress)
        return True

    def _checkpoints(self, stop: threading.Event) -> None:
        while not stop.wait(CHECKPOINT_INTERVAL):
            # The flush waits only for what was queued when it began (a few batches: the
            # queue is small), however fast new records arrive.
            self.checkpoint(_CHECKPOINT_FLUSH_TIMEOUT)
            if self.failure is not None:
                return

    # -- one input ---------------------------------------------------------------------

    def run_input(self, source: Input, reporter: Optional[Reporter]) -> None:
        """Send one input from where its state says; raises _Stop when it cannot finish."""
        args = self.args
        self.key = source.name if source.is_stdin else os.path.abspath(source.name)
        self.state = None
        saved: Optional[Progress] = None
        if not args.dry_run and (args.state or not source.is_stdin):
            self.state = StateFile(args.state or source.name + STATE_SUFFIX)
            saved = None if args.restart else self.state.get(self.key)
        self.base = saved or Progress()
        self.progress = self.base.copy()
        self.mark = (0, 0, 0, b"")
        stream = source.open()
        try:
            records = self._records(source, stream)
            if reporter is not None:
                reporter.start(source.label, source.size, self.base.done)
            stop = threading.Event()
            thread = None
            if not args.dry_run:
                thread = threading.Thread(
                    target=self._checkpoints, args=(stop,), name="tracklane.import", daemon=True
                )
                thread.start()
            try:
                self._send(source, records, reporter)
            finally:
                self.busy = False
                stop.set()
                if thread is not None:
                    thread.join()
        finally:
            source.close()

    def finish(self, source: Input, reporter: Optional[Reporter]) -> None:
        """The input's last progress line, after its last checkpoint."""
        if reporter is not None:
            done = self.mark[0]
            reporter.finish(source.position(), done, self.progress.done - self.base.done)

    def state_path(self) -> str:
        """Where this input's progress is kept."""
        return self.state.path if self.state is not None else "the state file"

    def _records(self, source: Input, stream: Any) -> Iterator[Tuple[int, Any]]:
        if is_csv(source.name, self.args.format):
            rows = csv_rows(
                stream, lambda header: parse_mapping(header, self.args.map, self.args.type)
            )
            return ((number, (raw, build)) for number, raw, build in rows)
        return enumerate(stream, start=1)

    def _send(
        self, source: Input, records: Iterator[Tuple[int, Any]], reporter: Optional[Reporter]
    ) -> None:
        args = self.args
        skip = self.base.done
        forward = self.client.forward
        label = source.label_bytes
        numbers = self.numbers
        numbers.clear()
        block: Dict[Any, int] = {}
        numbers.append((skip + 1, block))
        rate = args.rate
        started = time.monotonic()
        enqueued = skipped = 0
        unit = "row" if is_csv(source.name, args.format) else "line"
        done = 0
        dry_run = args.dry_run
        verified = skip == 0
        loads = orjson.loads
        # JSON Lines: (number, line); CSV: (number, (raw, build)). No generator in between
        # for JSON Lines: at 50,000 records a second every step per record counts.
        for number, item in records:
            if type(item) is bytes:
                raw = item.strip()
                if number == 1 and raw[:3] == _BOM:  # files saved by some Windows editors
                    raw = raw[3:]
                build: Any = raw
            else:
                raw, build = item
            if number <= skip:
                if number < skip:
                    continue
                verified = True
                if record_digest(raw) != self.base.fingerprint:
                    raise StateError(
                        f"{source.name}: {unit} {number} is not the one acknowledged before "
                        f"(the file changed); delete {self.state_path()} or pass --restart"
                    )
                continue
            if not raw:  # a blank line
                done = number - skip
                self.mark = (done, enqueued, skipped, raw)
                continue
            # From the call to the mark, a record is sent but not yet counted: a signal
            # waits for the end of it (see interrupt()).
            self.busy = True
            try:
                if build is raw:
                    try:
                        record = loads(raw)
                    except orjson.JSONDecodeError as exc:
                        raise LineError("line", f"is not valid JSON ({exc})") from None
                else:
                    record = build()
                message = to_message(record)
                # The line itself is sent when the message is (no second encoding); a
                # derived messageId goes in front of its fields.
                encoded = raw if message is record and build is raw else None
                message_id = message.get("messageId")
                if message_id is None:
                    message_id = derived_message_id(label, number, raw)
                    if encoded is not None and "messageId" not in message:
                        encoded = b'{"messageId":"%s",%s' % (message_id.encode(), raw[1:])
                    else:
                        encoded = None
                    message["messageId"] = message_id
                if not dry_run:
                    # Looked up by on_error for a rejected message; pruned at checkpoints.
                    block[message_id] = number
                queued, _ = forward(message, encoded=encoded)
                while not queued:
                    if self.too_large is not None:
                        too_large, self.too_large = self.too_large, None
                        raise LineError("message", str(too_large))
                    # The queue stayed full for a second: the receiver is slow or failing.
                    # Not sent: look at why, then offer it again (same messageId).
                    if self.failure is not None:
                        raise _Stop(describe_error(self.failure))
                    if self.interrupted:
                        raise KeyboardInterrupt
                    queued, _ = forward(message, encoded=encoded)
                enqueued += 1
            except (LineError, tracklane.ValidationError) as exc:
                where = (
                    f"{source.name}:{number}" if unit == "line" else f"{source.name}: row {number}"
                )
                text = _line_problem(exc)
                if dry_run:
                    print(f"{where}: {text}", flush=False)
                if dry_run or args.skip_invalid:
                    skipped += 1
                    if len(self.skipped_examples) < 10:
                        self.skipped_examples.append(f"{unit} {number}: {text}")
                else:
                    raise _Stop(
                        f"{where}: {text}\n  nothing after it was sent; fix it and run the same "
                        "command to continue there, see every bad record with --dry-run, or "
                        "pass --skip-invalid"
                    ) from None
            done = number - skip
            self.mark = (done, enqueued, skipped, raw)
            self.busy = False
            if self.interrupted:
                raise KeyboardInterrupt
            if not done % _UPDATE_EVERY:
                if not dry_run:
                    block = {}
                    numbers.append((number + 1, block))
                if self.failure is not None:
                    raise _Stop(describe_error(self.failure))
                if reporter is not None:
                    acked = self.progress.done - self.base.done
                    reporter.update(source.position(), done, acked)
            if rate is not None and not done % 16:
                ahead = done / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if not verified:
            raise StateError(
                f"{source.name} has fewer records than the {skip:,} acknowledged before (the "
                f"file changed); delete {self.state_path()} or pass --restart"
            )
        if args.dry_run:
            self.progress.done = self.base.done + done
            self.progress.skipped = self.base.skipped + skipped
            self.progress.sent = self.base.sent + enqueued


def _line_problem(exc: Exception) -> str:
    if isinstance(exc, tracklane.ValidationError):
        return f"{_camel(exc.field)}: {exc.problem}"
    return str(exc)


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


def run(args: argparse.Namespace) -> int:
    """Import every input in turn; print a summary; 0 when everything was sent."""
    key, _ = resolve_write_key(args.write_key, "--writeKey")
    if key is None and not args.dry_run:
        return error("import", "no write key: pass --writeKey or set $TRACKLANE_WRITE_KEY")
    if args.rate is not None and args.rate <= 0:
        return error("import", "--rate: must be more than 0")
    if "-" in args.inputs and len(args.inputs) > 1:
        return error("import", "stdin (-) must be the only input")
    for name in args.inputs:
        if name != "-" and not os.path.isfile(name):
            return error("import", f"{name}: no such file")
    host, _ = resolve_host(args.host)
    importer: Optional[Importer] = None
    try:
        client = tracklane.Client(
            key or "dry-run",
            host=host,
            send=not args.dry_run,
            batch_size=args.batch_size,
            # A few batches in the queue keep the receiver busy; a short queue keeps each
            # checkpoint's flush short and memory flat.
            max_queue_size=max(2_000, args.batch_size * 4),
            flush_interval=0.05,
            overflow="block",
            block_timeout=1.0,
            max_retries=args.retries,
            on_error=lambda exc, batch: importer.on_error(exc, batch) if importer else None,
        )
    except tracklane.ConfigurationError as exc:
        return error("import", str(exc).replace("batch_size", "--batch-size", 1))
    importer = Importer(args, client)
    reporter = make_reporter("none" if args.dry_run else args.progress, args.progress_interval)
    previous = {
        sig: signal.signal(sig, importer.interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    started = time.monotonic()
    code = 0
    totals = Progress()
    try:
        for name in args.inputs:
            source = Input(name)
            try:
                importer.run_input(source, reporter)
                if not args.dry_run and not importer.checkpoint(60.0):
                    raise _Stop(_unsettled(importer))
                importer.finish(source, reporter)
            except KeyboardInterrupt:
                saved = importer.checkpoint(30.0) if not args.dry_run else False
                importer.finish(source, reporter)
                _summary(importer, source, totals)
                print(
                    f"tracklane import: interrupted; {'progress saved' if saved else 'not saved'}"
                    "; run the same command to continue",
                    file=sys.stderr,
                )
                return 130
            except (_Stop, StateError, OSError) as exc:
                if not args.dry_run and not isinstance(exc, StateError) and not importer.failure:
                    importer.checkpoint(30.0)  # a bad record: save what came before it
                importer.finish(source, reporter)
                _summary(importer, source, totals)
                return error(
                    "import", str(exc) if not isinstance(exc, OSError) else f"{name}: {exc}"
                )
            except ValueError as exc:  # a CSV mapping that does not fit the header
                return error("import", str(exc))
            _summary(importer, source, totals)
            if args.dry_run and importer.progress.skipped and not args.skip_invalid:
                code = 1
            if importer.progress.rejected:
                code = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if reporter is not None:
            reporter.close()
        client.shutdown(timeout=1 if importer.failure else 5)
    elapsed = time.monotonic() - started
    if len(args.inputs) > 1:
        print(
            f"total: {totals.done:,} records, {totals.sent:,} sent, {totals.rejected:,} rejected, "
            f"{totals.skipped:,} skipped in {elapsed:.1f}s"
        )
    return code


def _unsettled(importer: Importer) -> str:
    if importer.failure is not None:
        return (
            f"the server did not acknowledge every record: {describe_error(importer.failure)}; "
            "run the same command again to continue after the last acknowledged record"
        )
    return "the last records were not acknowledged in time; run the same command to continue"


def _summary(importer: Importer, source: Input, totals: Progress) -> None:
    progress = importer.progress
    base = importer.base
    args = importer.args
    verb = "valid" if args.dry_run else "sent"
    line = (
        f"{source.name}: {progress.done:,} records, {progress.sent:,} {verb}, "
        f"{progress.rejected:,} rejected by the server, {progress.skipped:,} "
        f"{'invalid' if args.dry_run else 'skipped as invalid'}"
    )
    if base.done:
        line += f" (this run started after record {base.done:,})"
    print(line, flush=True)
    for reason, count in sorted(progress.reasons.items(), key=lambda item: -item[1]):
        examples = importer.examples.get(reason, [])
        shown = f"; e.g. records {', '.join(map(str, examples))}" if examples else ""
        print(f"  rejected {count:,}x: {reason}{shown}")
    if not args.dry_run:
        for text in importer.skipped_examples:
            print(f"  skipped {text}")
    for name in ("done", "sent", "rejected", "skipped"):
        setattr(totals, name, getattr(totals, name) + getattr(progress, name))
