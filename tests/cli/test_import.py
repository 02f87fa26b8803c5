"""``tracklane import`` as a subprocess: exactly once across kills, validation, formats."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Set

import httpx
import pytest

from helpers import Action, RecordingServer
from tracklane.collector import CollectorServer

from .conftest import cli_env, count, run_cli, stored, tracklane_command

TYPES = ("track", "identify", "page", "screen", "group", "alias")
TYPES_IN_ORDER = ("identify", "track", "page", "screen", "group", "alias")


def line_for(n: int) -> Dict[str, Any]:
    """Record ``n``: every type in turn, each with its historical timestamp."""
    kind = TYPES[n % len(TYPES)]
    message: Dict[str, Any] = {
        "type": kind,
        "userId": f"user-{n % 97}",
        "timestamp": f"2023-0{1 + n % 9}-1{n % 10}T0{n % 10}:{n % 60:02d}:00.{n % 1000:03d}Z",
        "context": {"import": {"n": n}},
    }
    extra: Dict[str, Any] = {
        "track": {"event": "Order Completed", "properties": {"n": n, "total": n / 4}},
        "identify": {"traits": {"n": n, "name": "Zoë"}},
        "page": {"name": "Home", "properties": {"n": n}},
        "screen": {"name": "Main", "properties": {"n": n}},
        "group": {"groupId": f"g-{n % 7}", "traits": {"n": n}},
        "alias": {"previousId": f"anon-{n}"},
    }[kind]
    message.update(extra)
    if n % 5 == 0:
        message["messageId"] = f"given-{n}"
    return message


def write_lines(path: Path, total: int) -> None:
    """A JSON Lines file of ``total`` records (with a blank line now and then)."""
    with path.open("w", encoding="utf-8") as out:
        for n in range(total):
            out.write(json.dumps(line_for(n), ensure_ascii=False) + "\n")
            if n % 1000 == 999:
                out.write("\n")


def all_events(server: CollectorServer, key: str) -> List[Dict[str, Any]]:
    """Every event stored under ``key``, paging with ``after``."""
    events: List[Dict[str, Any]] = []
    after = 0
    with httpx.Client(base_url=server.url, auth=(key, ""), timeout=10) as http:
        while True:
            page = http.get("/v1/events", params={"after": after, "limit": 10_000}).json()["events"]
            if not page:
                return events
            events += page
            after = page[-1]["seq"]


def moment(text: str) -> datetime:
    """An ISO-8601 time as an aware datetime (``Z`` accepted on Python 3.9 too)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def numbers_of(events: List[Dict[str, Any]]) -> List[int]:
    return sorted(int(e["context"]["import"]["n"]) for e in events)


def wait_for_checkpoint(state: Path, proc: subprocess.Popen[bytes], at_least: int) -> int:
    """Poll the state file until ``at_least`` records are checkpointed; return how many."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the import ended before it could be interrupted"
        if state.exists():
            inputs = json.loads(state.read_text())["inputs"]
            done = next(iter(inputs.values()))["done"]
            if done >= at_least:
                return int(done)
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


def import_args(path: Path, server: CollectorServer, key: str, *more: str) -> List[str]:
    return ["import", str(path), f"--writeKey={key}", f"--host={server.url}", *more]


def test_sigkill_mid_import_then_rerun_stores_every_line_once(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """Killed with SIGKILL half-way and run again, every line is stored exactly once,
    with its own timestamp."""
    total = 20_000
    path = tmp_path / "history.jsonl"
    write_lines(path, total)
    state = Path(f"{path}.import-state.json")
    args = import_args(path, collector, write_key, "--rate=9000", "--progress=none")
    proc = subprocess.Popen([*tracklane_command(), *args], env=cli_env())
    try:
        done = wait_for_checkpoint(state, proc, 3000)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    stored_at_kill = count(collector, write_key)
    # ``done`` counts lines; write_lines puts a blank one at every 1,001st line.
    assert done - done // 1001 <= stored_at_kill < total
    result = run_cli(*import_args(path, collector, write_key, "--progress=none"))
    assert result.returncode == 0, result.stderr
    assert f"this run started after record {done:,}" in result.stdout
    events = all_events(collector, write_key)
    assert numbers_of(events) == list(range(total))  # each line once: none lost, none twice
    for event in events[:: total // 50]:
        n = event["context"]["import"]["n"]
        assert moment(event["originalTimestamp"]) == moment(line_for(n)["timestamp"])
        assert event["type"] == line_for(n)["type"]
        if n % 5 == 0:
            assert event["messageId"] == f"given-{n}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_saves_progress_and_the_same_command_continues(
    sig: int, collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """SIGTERM or Ctrl-C stops the import at once with its progress saved (exit 130); a
    re-run finishes it, and a third run has nothing left to send."""
    total = 6_000
    path = tmp_path / "events.jsonl"
    write_lines(path, total)
    state = Path(f"{path}.import-state.json")
    args = import_args(path, collector, write_key, "--rate=3000", "--progress=none")
    proc = subprocess.Popen(
        [*tracklane_command(), *args], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_checkpoint(state, proc, 1)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"interrupted; progress saved" in err
    done = next(iter(json.loads(state.read_text())["inputs"].values()))["done"]
    assert 0 < done < total
    assert count(collector, write_key) == done - done // 1001  # blank lines are not events
    assert run_cli(*import_args(path, collector, write_key)).returncode == 0
    again = run_cli(*import_args(path, collector, write_key))
    assert again.returncode == 0
    assert f"this run started after record {total + total // 1000:,}" in again.stdout
    assert numbers_of(all_events(collector, write_key)) == list(range(total))


def test_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    """A JSON Lines file saved with a UTF-8 byte order mark and CRLF line ends is valid."""
    path = tmp_path / "windows.jsonl"
    body = "\r\n".join(json.dumps(line_for(n), ensure_ascii=False) for n in range(3))
    path.write_bytes(b"\xef\xbb\xbf" + body.encode() + b"\r\n")
    result = run_cli("import", "--dry-run", str(path))
    assert result.returncode == 0, result.stdout
    assert f"{path}: 3 records, 3 valid, 0 rejected by the server, 0 invalid" in result.stdout


def test_dry_run_reports_every_bad_line(tmp_path: Path) -> None:
    """``--dry-run`` lists line, field and reason for each bad line and exits 1 (0 with
    ``--skip-invalid``); nothing needs a write key or a server."""
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(line_for(0)),
        "{not json",
        json.dumps({"type": "track", "userId": "u"}),
        json.dumps({"type": "track", "userId": "u", "event": "E", "colour": "red"}),
        json.dumps({"type": "purchase", "userId": "u"}),
        "",
        json.dumps({"type": "identify", "traits": {"a": 1}}),
        json.dumps({"type": "alias", "userId": "u", "previousId": "p", "properties": {}}),
        json.dumps({"type": "track", "userId": "u", "event": "E", "timestamp": "last week"}),
        json.dumps(line_for(1)),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = run_cli("import", "--dry-run", str(path))
    assert result.returncode == 1, result.stderr
    report = [line for line in result.stdout.splitlines() if line.startswith(str(path))]
    assert report[0].startswith(f"{path}:2: line: is not valid JSON (")
    assert report[1:-1] == [
        f"{path}:3: event: track requires 'event'",
        f"{path}:4: colour: is not a field of a Segment message",
        f"{path}:5: type: must be one of {', '.join(TYPES_IN_ORDER)}, not 'purchase'",
        f"{path}:7: userId: missing both 'userId' and 'anonymousId'",
        f"{path}:8: properties: is not part of an alias message",
        f"{path}:9: timestamp: not an ISO-8601 time: 'last week'",
    ]
    assert report[-1] == f"{path}: 10 records, 2 valid, 0 rejected by the server, 7 invalid"
    assert run_cli("import", "--dry-run", "--skip-invalid", str(path)).returncode == 0


def test_a_bad_line_stops_the_import_there_and_a_fixed_file_continues(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """Without --skip-invalid the import stops at the first bad line, having sent what came
    before; after the line is fixed the same command continues from it."""
    path = tmp_path / "events.jsonl"
    good = [json.dumps(line_for(n)) for n in range(6)]
    path.write_text("\n".join([*good[:3], json.dumps({"type": "track", "userId": "u"}), *good[3:]]))
    result = run_cli(*import_args(path, collector, write_key))
    assert result.returncode == 1
    assert f"{path}:4: event: track requires 'event'" in result.stderr
    assert numbers_of(stored(collector, write_key)) == [0, 1, 2]
    path.write_text("\n".join([*good[:3], json.dumps(line_for(99)), *good[3:]]))
    result = run_cli(*import_args(path, collector, write_key))
    assert result.returncode == 0, result.stderr
    assert numbers_of(stored(collector, write_key)) == [0, 1, 2, 3, 4, 5, 99]


def test_skip_invalid_sends_the_rest_and_counts_the_skipped(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """With --skip-invalid bad lines are skipped, listed in the summary, and the rest sent."""
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([json.dumps(line_for(0)), "[]", json.dumps(line_for(1))]) + "\n")
    result = run_cli(*import_args(path, collector, write_key, "--skip-invalid"))
    assert result.returncode == 0, result.stderr
    assert "3 records, 2 sent, 0 rejected by the server, 1 skipped as invalid" in result.stdout
    assert "skipped line 2: line: must be a JSON object, not an array" in result.stdout
    assert numbers_of(stored(collector, write_key)) == [0, 1]


def refuse_poison(body: Any) -> Action:
    """A 400 for any batch holding a "Poison" event; 200 otherwise."""
    events = [m.get("event") for m in body["batch"]] if isinstance(body, dict) else []
    if "Poison" in events:
        return Action(status=400, body=b'{"success":false,"error":"poison pill"}')
    return Action()


def poison_refusing_server() -> RecordingServer:
    """A receiver on 127.0.0.1 that refuses batches holding a "Poison" event (see above)."""
    server = RecordingServer()
    server.decide = refuse_poison
    return server


def test_records_rejected_by_the_server_are_reported_with_reason(tmp_path: Path) -> None:
    """A message the server refuses (400) is counted as rejected with the server's reason
    and its line; every other record is delivered, and the exit code is 1."""
    server = poison_refusing_server()
    try:
        path = tmp_path / "events.jsonl"
        lines = [line_for(n) for n in range(30)]
        lines[17] = {"type": "track", "userId": "u", "event": "Poison"}
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        result = run_cli("import", str(path), "--writeKey=k", f"--host={server.url}", "--retries=0")
        assert result.returncode == 1, result.stderr
        assert "30 records, 29 sent, 1 rejected by the server, 0 skipped" in result.stdout
        assert "rejected 1x: the server answered HTTP 400: poison pill; e.g. records 18" in (
            result.stdout
        )
        accepted = server.accepted()
        assert len(accepted) == 29
        assert "Poison" not in {m.get("event") for m in accepted}
    finally:
        server.close()


def test_rejections_far_into_a_file_name_their_records(tmp_path: Path) -> None:
    """Rejected records thousands of lines in (past the first checkpoint's bookkeeping) are
    named by their line; every other line arrives as written, a generated messageId added,
    and a line whose messageId is null gets a generated one too."""
    server = poison_refusing_server()
    try:
        path = tmp_path / "events.jsonl"
        lines = [line_for(n) for n in range(5_000)]
        for number in (2_500, 4_900):
            lines[number - 1] = {"type": "track", "userId": "u", "event": "Poison"}
        lines[2_999] = {**line_for(2_999), "messageId": None}
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        result = run_cli("import", str(path), "--writeKey=k", f"--host={server.url}", "--retries=0")
        assert result.returncode == 1, result.stderr
        assert "5,000 records, 4,998 sent, 2 rejected by the server" in result.stdout
        reason = "rejected 2x: the server answered HTTP 400: poison pill"
        assert f"{reason}; e.g. records 2500, 4900" in result.stdout
        accepted = {m["context"]["import"]["n"]: m for m in server.accepted()}
        assert len(accepted) == 4_998
        for n in (0, 2_999, 4_999):
            got = dict(accepted[n])
            assert got.pop("messageId"), n
            expected = {k: v for k, v in lines[n].items() if k != "messageId"}
            assert got == expected
    finally:
        server.close()


def test_refused_write_key_stops_without_moving_the_checkpoint(
    keyed_collector: CollectorServer, tmp_path: Path
) -> None:
    """A 401 is not a record's fault: the import stops (exit 1) and nothing is checkpointed."""
    path = tmp_path / "events.jsonl"
    write_lines(path, 50)
    result = run_cli(*import_args(path, keyed_collector, "not-a-key"))
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert "unknown write key" in result.stderr
    state = Path(f"{path}.import-state.json")
    if state.exists():
        assert next(iter(json.loads(state.read_text())["inputs"].values()))["done"] == 0


def test_gzip_csv_with_a_column_mapping(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """A gzip CSV is read with --map (nested fields, conversions, an ignored column)."""
    path = tmp_path / "signups.csv.gz"
    with gzip.open(path, "wt", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["user", "event", "when", "total", "paid", "extra", "notes", "ctx"])
        writer.writerow(
            [
                "u1",
                "Signed Up",
                "2022-02-03T04:05:06.789Z",
                "12.5",
                "yes",
                '{"a": [1, 2]}',
                "ignore me",
                '{"ip": "10.0.0.1"}',
            ]
        )
        writer.writerow(["u2", "Signed Up", "2022-02-04T00:00:00.000+01:00", "3", "no", "", "", ""])
    mapping = [
        "--map=user=userId",
        "--map=when=timestamp",
        "--map=total=properties.order.total:number",
        "--map=paid=properties.paid:bool",
        "--map=extra=properties.extra:json",
        "--map=notes=",
        "--map=ctx=context",
    ]
    result = run_cli(*import_args(path, collector, write_key, "--type=track", *mapping))
    assert result.returncode == 0, result.stderr
    first, second = stored(collector, write_key)
    assert first["userId"] == "u1"
    assert first["event"] == "Signed Up"
    assert first["properties"] == {"order": {"total": 12.5}, "paid": True, "extra": {"a": [1, 2]}}
    assert first["context"]["ip"] == "10.0.0.1"
    assert first["originalTimestamp"] == "2022-02-03T04:05:06.789Z"  # as written
    assert second["properties"] == {"order": {"total": 3}, "paid": False}
    assert second["originalTimestamp"] == "2022-02-04T00:00:00.000+01:00"


def test_csv_column_without_a_mapping_is_named(tmp_path: Path) -> None:
    """An unknown CSV column is refused before sending, with the --map that would fix it."""
    path = tmp_path / "x.csv"
    path.write_text("userId,event,plan\nu,E,pro\n")
    result = run_cli("import", "--dry-run", "--type=track", str(path))
    assert result.returncode == 1
    assert "CSV column 'plan' is not a message field" in result.stderr
    assert "--map 'plan=properties.plan'" in result.stderr


def test_stdin_with_a_state_file_resumes(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """``-`` reads stdin; with --state a second run of the same data sends nothing new."""
    path = tmp_path / "events.jsonl"
    write_lines(path, 300)
    data = path.read_text()
    state = tmp_path / "stdin.state.json"
    args = ["import", "-", f"--writeKey={write_key}", f"--host={collector.url}", f"--state={state}"]
    first = run_cli(*args, input=data)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args, input=data)
    assert second.returncode == 0, second.stderr
    assert "this run started after record 300" in second.stdout
    assert numbers_of(all_events(collector, write_key)) == list(range(300))


def test_progress_bar_on_a_terminal(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """On a terminal (a pty) the import draws rich's bar with rate and ETA."""
    import pty

    path = tmp_path / "events.jsonl"
    write_lines(path, 3000)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*tracklane_command(), *import_args(path, collector, write_key)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(COLUMNS="160", TERM="xterm-256color"),
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the pty closes when the process exits
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert proc.wait(30) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "\x1b[" in text  # drawn, not printed
    assert "━" in text
    assert "100%" in text
    assert "records/s" in text
    assert "ETA" in text
    assert "3,003 records, 3,000 sent" in text
    assert "acked 3,003" in text


def test_plain_progress_lines_when_piped(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """Piped, progress is plain lines (no escape codes) on stderr; the summary on stdout."""
    path = tmp_path / "events.jsonl"
    write_lines(path, 2000)
    result = run_cli(*import_args(path, collector, write_key, "--progress-interval=0.05"))
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr + result.stdout
    assert "events.jsonl: 2,002 records read (100% of the file)" in result.stderr
    assert "records/s" in result.stderr
    assert result.stdout.startswith(f"{path}: 2,002 records, 2,000 sent")


def test_the_same_file_renamed_is_not_stored_twice(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """Generated messageIds depend on the file's name, line and text; a re-import of the
    same file with --restart stores nothing new."""
    path = tmp_path / "events.jsonl"
    write_lines(path, 100)
    assert run_cli(*import_args(path, collector, write_key)).returncode == 0
    assert run_cli(*import_args(path, collector, write_key, "--restart")).returncode == 0
    ids: Set[str] = {e["messageId"] for e in all_events(collector, write_key)}
    assert len(ids) == 100 == count(collector, write_key)


def test_rejections_are_counted_in_a_resumed_run(tmp_path: Path) -> None:
    """A run that resumes half-way still attributes a rejection to its record."""
    server = poison_refusing_server()
    try:
        path = tmp_path / "events.jsonl"
        lines = [json.dumps(line_for(n)) for n in range(30)]
        lines[24] = json.dumps({"type": "track", "userId": "u", "event": "Poison"})
        broken = [*lines[:20], "{broken", *lines[21:]]
        path.write_text("\n".join(broken) + "\n")
        args = ["import", str(path), "--writeKey=k", f"--host={server.url}", "--retries=0"]
        first = run_cli(*args)
        assert first.returncode == 1
        assert f"{path}:21: line: is not valid JSON" in first.stderr
        path.write_text("\n".join(lines) + "\n")
        second = run_cli(*args)
        assert second.returncode == 1, second.stderr
        assert "(this run started after record 20)" in second.stdout
        assert "30 records, 29 sent, 1 rejected by the server" in second.stdout
        assert "poison pill; e.g. records 25" in second.stdout
        assert len(server.accepted()) == 29
    finally:
        server.close()


def test_several_files_each_with_its_own_state(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """Several inputs (plain and gzip) are imported in turn, each resumable on its own,
    with a total at the end."""
    plain = tmp_path / "a.jsonl"
    write_lines(plain, 40)
    packed = tmp_path / "b.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as out:
        for n in range(100, 130):
            out.write(json.dumps(line_for(n)) + "\n")
    result = run_cli(*import_args(plain, collector, write_key), str(packed))
    assert result.returncode == 0, result.stderr
    assert "total: 70 records, 70 sent, 0 rejected, 0 skipped" in result.stdout
    for path, done in ((plain, 40), (packed, 30)):
        state = json.loads(Path(f"{path}.import-state.json").read_text())
        assert next(iter(state["inputs"].values()))["done"] == done
    assert numbers_of(stored(collector, write_key)) == [*range(40), *range(100, 130)]


def test_rate_caps_records_per_second(
    collector: CollectorServer, write_key: str, tmp_path: Path
) -> None:
    """``--rate 100`` spreads 150 records over at least 1.4 seconds."""
    path = tmp_path / "events.jsonl"
    write_lines(path, 150)
    started = time.monotonic()
    result = run_cli(*import_args(path, collector, write_key, "--rate=100"))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.4
    assert count(collector, write_key) == 150
