"""``tracklane send`` with analytics-ruby's flags, as a subprocess against a real collector."""

from __future__ import annotations

import json
import socket
from typing import Any, Dict, List

import pytest

from tracklane.collector import CollectorServer

from .conftest import KEYED, cli_env, run_cli, stored

CONTEXT = {
    "ip": "203.0.113.7",
    "device": {"type": "phone", "screen": {"width": 390, "height": 844}},
    "campaign": {"name": "spring sale", "utm source": "news letter"},
    "locale": "de-DE",
}
INTEGRATIONS = {
    "All": False,
    "Mixpanel": True,
    "Google Analytics": {"clientId": "GA1.2.3", "options": {"anonymizeIp": True}},
}
PROPERTIES = {
    "total price": 129.99,
    "Größe": "XL",
    "emoji ✓": "日本語",
    "items": [{"sku": "a-1", "qty": 2}, {"sku": "b 7", "tags": ["x", "y"]}],
    "nested": {"deeper": {"deepest": [1, 2.5, None, True]}},
}
TRAITS = {"email": "zoë@example.com", "first name": "Zoë", "plan": {"tier": "pro", "seats": 3}}
TIMESTAMP = "2024-05-01T10:11:12.345+02:00"

CASES: Dict[str, Dict[str, Any]] = {
    "track": {"event": "Order Completed ✓", "properties": PROPERTIES},
    "identify": {"traits": TRAITS},
    "page": {"name": "Pricing", "category": "Docs & Guides", "properties": PROPERTIES},
    "screen": {"name": "Einstellungen", "category": "App", "properties": PROPERTIES},
    "group": {"groupId": "acme inc", "traits": TRAITS},
    "alias": {"previousId": "anon-ä-7"},
}


def _flags(fields: Dict[str, Any]) -> List[str]:
    out = []
    for name, value in fields.items():
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value
        out.append(f"--{name}={text}")
    return out


@pytest.mark.parametrize("kind", list(CASES))
def test_every_type_arrives_with_every_field_intact(
    kind: str, collector: CollectorServer, write_key: str
) -> None:
    """Each of the six types sent with analytics-ruby's flags is stored exactly as given."""
    user = f"user ü {kind}"
    fields: Dict[str, Any] = {"userId": user, **CASES[kind]}
    if kind != "alias":
        fields["anonymousId"] = "anon 1"
    fields.update(
        context=CONTEXT,
        integrations=INTEGRATIONS,
        timestamp=TIMESTAMP,
        messageId=f"msg-{kind}-{write_key}",
    )
    args = ["send", f"--writeKey={write_key}", f"--type={kind}", f"--host={collector.url}"]
    result = run_cli(*args, *_flags(fields))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [event] = stored(collector, write_key)
    assert event["type"] == kind
    for name, value in fields.items():
        if name == "context":
            assert {k: v for k, v in event["context"].items() if k != "library"} == value
            assert event["context"]["library"]["name"] == "tracklane"
        elif name == "timestamp":
            assert event["originalTimestamp"] == TIMESTAMP
        else:
            assert event[name] == value, name


def test_unknown_type_is_refused_with_the_list(collector: CollectorServer) -> None:
    """``--type`` other than the six exits 2 and lists the valid ones."""
    result = run_cli(
        "send", "--writeKey=k", "--type=purchase", "--userId=u", f"--host={collector.url}"
    )
    assert result.returncode == 2
    assert "invalid choice: 'purchase'" in result.stderr
    assert "'identify', 'track', 'page', 'screen', 'group', 'alias'" in result.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--type=track", "--userId=u"], "tracklane send: --event: is required"),
        (["--type=track", "--event=E"], "--userId or --anonymousId is required"),
        (["--type=group", "--userId=u"], "--groupId: is required"),
        (["--type=alias", "--userId=u"], "--previousId: is required"),
        (["--type=identify", "--userId=u", "--event=E"], "--event: not part of an identify"),
        (["--type=track", "--userId=u", "--event=E", "--timestamp=yesterday"], "--timestamp:"),
    ],
)
def test_invalid_message_names_the_flag_and_sends_nothing(
    flags: List[str], expected: str, collector: CollectorServer, write_key: str
) -> None:
    """A message that fails validation exits 1 with one line naming the flag; nothing is stored."""
    result = run_cli("send", f"--writeKey={write_key}", f"--host={collector.url}", *flags)
    assert result.returncode == 1
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert stored(collector, write_key) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{not json", "--properties: not valid JSON"),
        ("[1, 2]", "--properties: must be a JSON object"),
    ],
)
def test_json_flags_must_be_objects(value: str, expected: str) -> None:
    """A JSON flag that is not an object is refused by name (exit 2)."""
    result = run_cli(
        "send", "--writeKey=k", "--type=track", "--userId=u", "--event=E", f"--properties={value}"
    )
    assert result.returncode == 2
    assert expected in result.stderr


def test_refused_write_key_prints_status_and_server_error(keyed_collector: CollectorServer) -> None:
    """A 401 exits 1 with the status and the collector's own error message."""
    result = run_cli(
        "send",
        "--writeKey=wrong",
        "--type=track",
        "--userId=u",
        "--event=E",
        f"--host={keyed_collector.url}",
    )
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "HTTP 401" in line, line
    assert "unknown write key" in line, line
    assert len(line.splitlines()) == 1


def test_network_error_is_one_line() -> None:
    """Nothing listening: exit 1 with the connection error, without a traceback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli(
        "send",
        "--writeKey=k",
        "--type=track",
        "--userId=u",
        "--event=E",
        f"--host=http://127.0.0.1:{port}",
        "--retries=0",
    )
    assert result.returncode == 1
    assert "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_write_key_and_host_come_from_the_environment(keyed_collector: CollectorServer) -> None:
    """Without flags, $SEGMENT_WRITE_KEY and $TRACKLANE_HOST are used, as the client does."""
    env = cli_env(SEGMENT_WRITE_KEY=KEYED[1], TRACKLANE_HOST=keyed_collector.url)
    result = run_cli("send", "--type=identify", "--userId=env-user", '--traits={"a": 1}', env=env)
    assert result.returncode == 0, result.stderr
    events = stored(keyed_collector, KEYED[1], userId="env-user")
    assert [e["traits"] for e in events][-1] == {"a": 1}


def test_missing_write_key_says_where_to_put_it() -> None:
    """No key anywhere: exit 1 naming the flag and the variables."""
    result = run_cli("send", "--type=track", "--userId=u", "--event=E")
    assert result.returncode == 1
    assert "--writeKey" in result.stderr
    assert "TRACKLANE_WRITE_KEY" in result.stderr


def test_per_type_form_with_the_usual_spelling(collector: CollectorServer, write_key: str) -> None:
    """``tracklane group --user-id ... --group-id ...`` sends like ``send --type=group``,
    and names its own flags in errors."""
    args = [f"--write-key={write_key}", f"--host={collector.url}", "--user-id=u 1"]
    result = run_cli("group", *args, "--group-id=acme", '--traits={"plan": "pro"}')
    assert result.returncode == 0, result.stderr
    [event] = stored(collector, write_key)
    assert (event["type"], event["groupId"], event["traits"]) == ("group", "acme", {"plan": "pro"})
    missing = run_cli("group", *args)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "tracklane group: --group-id: is required"
    refused = run_cli("alias", *args, "--event=E")
    assert refused.returncode == 2  # alias has no --event flag at all
