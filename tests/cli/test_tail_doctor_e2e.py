"""``tracklane tail``, ``doctor`` and ``e2e`` as subprocesses against real servers."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Tuple

import pytest
import trustme

import tracklane
from helpers import RecordingServer, free_port
from tracklane.collector import CollectorServer

from .conftest import KEYED, cli_env, run_cli, stored, tracklane_command


def _send(url: str, key: str, count: int, **fields: str) -> None:
    client = tracklane.Client(key, host=url)
    for n in range(count):
        client.track(fields.get("user", "tail-user"), fields.get("event", "Tailed"), {"n": n})
    client.identify("tail-user", {"plan": "pro"})
    assert client.flush(10)
    client.shutdown()


def _start_tail(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*tracklane_command(), "tail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )


def test_tail_follows_new_events_in_order_with_filters(
    collector: CollectorServer, write_key: str
) -> None:
    """``tail --json --type track`` prints the new track events, oldest first, then exits at
    ``--count``; identify events are filtered out."""
    _send(collector.url, write_key, 2)  # before tail starts: shown only with --last
    proc = _start_tail(
        "--url",
        collector.url,
        f"--writeKey={write_key}",
        "--json",
        "--type=track",
        "--count=5",
        "--last=2",
        "--interval=0.05",
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the --last events come first
        assert first["properties"] == {"n": 0}
        threading.Thread(target=_send, args=(collector.url, write_key, 3), daemon=True).start()
        rest = [json.loads(proc.stdout.readline()) for _ in range(4)]  # then it exits
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    events = [first, *rest]
    assert [e["properties"]["n"] for e in events] == [0, 1, 0, 1, 2]
    assert {e["type"] for e in events} == {"track"}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5


def test_tail_readable_lines(collector: CollectorServer, write_key: str) -> None:
    """Without --json each event is one line: time, type, event name, user, properties."""
    _send(collector.url, write_key, 1, user="ünï", event="Order Completed")
    result = run_cli(
        "tail", "--url", collector.url, f"--writeKey={write_key}", "--last=2", "--count=2"
    )
    assert result.returncode == 0, result.stderr
    track, identify = result.stdout.splitlines()
    assert '"Order Completed"' in track
    assert "user=ünï" in track
    assert '{"n":0}' in track
    assert track.split()[1] == "track"
    assert identify.split()[1] == "identify"
    assert '{"plan":"pro"}' in identify


def test_tail_needs_a_key_on_a_keyed_collector(keyed_collector: CollectorServer) -> None:
    """A keyed collector refuses tail without a key: exit 1 saying to pass --writeKey."""
    result = run_cli("tail", "--url", keyed_collector.url, "--count=1")
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert "--writeKey" in result.stderr


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("doctor", "--timeout=3", *args)


def test_doctor_passes_against_a_working_collector(
    collector: CollectorServer, write_key: str
) -> None:
    """Every check passes, the test event is found stored, exit 0."""
    result = _doctor(f"--writeKey={write_key}", f"--host={collector.url}")
    assert result.returncode == 0, result.stdout
    assert "[ ok ] stored      the collector stored the test event" in result.stdout
    assert "All checks passed." in result.stdout
    assert "[FAIL]" not in result.stdout
    assert stored(collector, write_key, userId="tracklane-doctor")


def test_doctor_without_a_write_key(collector: CollectorServer) -> None:
    """No key anywhere: the write-key check fails with where to set it; exit 1."""
    result = _doctor(f"--host={collector.url}")
    assert result.returncode == 1
    assert "[FAIL] write key   no write key is set" in result.stdout
    assert "fix: pass --writeKey KEY, or export TRACKLANE_WRITE_KEY=KEY" in result.stdout


def test_doctor_reports_where_the_key_comes_from(collector: CollectorServer) -> None:
    """A key from the environment is reported by its variable, never printed."""
    env = cli_env(SEGMENT_WRITE_KEY="secret-key-123")
    result = run_cli("doctor", f"--host={collector.url}", env=env)
    assert result.returncode == 0, result.stdout
    assert "from $SEGMENT_WRITE_KEY" in result.stdout
    assert "secret-key-123" not in result.stdout + result.stderr


def test_doctor_host_that_does_not_resolve() -> None:
    """A name under .invalid fails at DNS with the fix; nothing after it is attempted."""
    result = _doctor("--writeKey=k", "--host=https://api.tracklane.invalid")
    assert result.returncode == 1
    assert "[FAIL] DNS         cannot resolve api.tracklane.invalid" in result.stdout
    assert "fix: check the host name" in result.stdout
    assert "[skip] test event" in result.stdout


def test_doctorfree_port() -> None:
    """Nothing listening: the connection check fails and suggests starting the collector."""
    port = free_port()
    result = _doctor("--writeKey=k", f"--host=http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"[FAIL] connection  nothing listens on 127.0.0.1:{port} (refused)" in result.stdout
    assert f"tracklane serve --port {port}" in result.stdout


def test_doctor_refused_write_key(keyed_collector: CollectorServer) -> None:
    """A 401 from the collector fails the test event with the server's reason and the fix."""
    result = _doctor("--writeKey=wrong-key", f"--host={keyed_collector.url}")
    assert result.returncode == 1
    assert "[FAIL] test event  the server answered HTTP 401: unknown write key" in result.stdout
    assert "fix: the write key is not valid for this endpoint" in result.stdout
    assert _doctor(f"--writeKey={KEYED[0]}", f"--host={keyed_collector.url}").returncode == 0


@pytest.fixture(scope="module")
def tls_server() -> Iterator[Tuple[RecordingServer, trustme.CA]]:
    """An HTTPS server whose certificate comes from a CA nobody trusts by default."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = RecordingServer(tls=context)
    yield server, ca
    server.close()


def test_doctor_untrusted_certificate(
    tls_server: Tuple[RecordingServer, trustme.CA], tmp_path: Path
) -> None:
    """An untrusted certificate fails the TLS check with the --ca-bundle fix; with the CA
    given, TLS and the test event pass (the store check is skipped: not a collector)."""
    server, ca = tls_server
    result = _doctor("--writeKey=k", f"--host={server.url}")
    assert result.returncode == 1
    assert "[FAIL] TLS         the certificate of localhost is not trusted" in result.stdout
    assert "--ca-bundle" in result.stdout
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    trusted = _doctor("--writeKey=k", f"--host={server.url}", f"--ca-bundle={bundle}")
    assert trusted.returncode == 0, trusted.stdout
    assert "[ ok ] TLS         TLSv1." in trusted.stdout
    assert "[skip] stored      not a tracklane collector" in trusted.stdout


def test_e2e_contract(collector: CollectorServer, write_key: str) -> None:
    """``e2e --input`` sends every sequence and prints success with the batches sent."""
    spec = {
        "writeKey": write_key,
        "apiHost": collector.url,
        "sequences": [
            {
                "delayMs": 0,
                "events": [
                    {"type": "track", "userId": "u1", "event": "E2E", "properties": {"a": 1}},
                    {"type": "identify", "userId": "u1", "traits": {"name": "Zoë"}},
                    {"type": "page", "userId": "u1", "name": "Home", "category": "Nav"},
                ],
            },
            {
                "delayMs": 20,
                "events": [
                    {"type": "screen", "anonymousId": "a1", "name": "Main"},
                    {"type": "alias", "userId": "new-id", "previousId": "u1"},
                    {
                        "type": "group",
                        "userId": "u1",
                        "groupId": "g1",
                        "traits": {"plan": "pro"},
                        "messageId": "e2e-fixed-id",
                        "timestamp": "2024-01-02T03:04:05.678Z",
                    },
                ],
            },
        ],
        "config": {"flushAt": 2, "flushInterval": 10000, "maxRetries": 3, "timeout": 10},
    }
    result = run_cli("e2e", "--input", json.dumps(spec))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer == {"success": True, "sentBatches": 3}
    events = stored(collector, write_key)
    assert [e["type"] for e in events] == ["track", "identify", "page", "screen", "alias", "group"]
    assert events[-1]["messageId"] == "e2e-fixed-id"


def test_e2e_failure_is_reported_as_json(keyed_collector: CollectorServer) -> None:
    """A refused write key gives ``success: false`` with the error, exit 1."""
    spec = {
        "writeKey": "wrong",
        "apiHost": keyed_collector.url,
        "sequences": [{"delayMs": 0, "events": [{"type": "track", "userId": "u", "event": "E"}]}],
        "config": {"maxRetries": 0},
    }
    result = run_cli("e2e", "--input", json.dumps(spec))
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert answer["success"] is False
    assert "HTTP 401" in answer["error"]
    bad = run_cli("e2e", "--input", "{nope")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["success"] is False
