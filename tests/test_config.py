"""Options and call validation: clear errors naming the field, aliases, hosts, environment."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from types import MappingProxyType
from typing import Any, Dict, Iterator

import pytest

import tracklane
from helpers import RecordingServer
from tracklane import ConfigurationError, Options, ValidationError

EU = "https://events.eu1.segmentapis.com"
US = "https://api.segment.io"


def build(**options: Any) -> Options:
    return Options.build("test-key", **options)


# -- option validation --------------------------------------------------------------------


@pytest.mark.parametrize("write_key", [None, "", 123, b"key"], ids=repr)
def test_write_key_required(write_key):
    """A missing, empty or non-string write key is refused, naming write_key."""
    with pytest.raises(ConfigurationError, match="write_key"):
        tracklane.Client(write_key)


def test_write_key_missing_entirely():
    """Client() without any write key is refused, naming write_key."""
    with pytest.raises(ConfigurationError, match="write_key"):
        tracklane.Client()


def test_configuration_error_is_a_value_error():
    """ConfigurationError is a ValueError and an AnalyticsError."""
    with pytest.raises(ConfigurationError) as info:
        tracklane.Client("")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, tracklane.AnalyticsError)


INVALID_OPTIONS = [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2501}, "batch_size"),
    ({"batch_size": -1}, "batch_size"),
    ({"batch_size": 1.5}, "batch_size"),
    ({"max_queue_size": 0}, "max_queue_size"),
    ({"max_retries": -1}, "max_retries"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": float("nan")}, "timeout"),
    ({"flush_interval": -0.1}, "flush_interval"),
    ({"shutdown_timeout": -1}, "shutdown_timeout"),
    ({"block_timeout": -1}, "block_timeout"),
    ({"flush_interval": float("inf")}, "flush_interval"),
    ({"overflow": "drop_everything"}, "overflow"),
    ({"on_error": "print"}, "on_error"),
    ({"json_default": 42}, "json_default"),
    ({"gzip": "yes"}, "gzip"),
    ({"sync_mode": 1}, "sync_mode"),
    ({"stub": "false"}, "stub"),
    ({"proxies": 8080}, "proxies"),
    ({"frobnicate": True}, "frobnicate"),
    ({"region": "mars"}, "region"),
]


@pytest.mark.parametrize(
    ("options", "field"),
    INVALID_OPTIONS,
    ids=[",".join(f"{k}={v!r}" for k, v in options.items()) for options, _ in INVALID_OPTIONS],
)
def test_invalid_option_names_the_field(options, field):
    """Each invalid option gives a ConfigurationError whose message starts with its name."""
    with pytest.raises(ConfigurationError) as info:
        tracklane.Client("k", **options)
    assert str(info.value).startswith(f"{field}:"), str(info.value)


@pytest.mark.parametrize(
    ("alias", "value"),
    [("upload_size", 0), ("flush_at", 2501), ("upload_interval", -1)],
)
def test_invalid_aliased_option_is_refused(alias, value):
    """An invalid value under a peer's name is refused too, naming the option it configures."""
    with pytest.raises(ConfigurationError, match=r"batch_size|flush_interval|" + alias):
        tracklane.Client("k", **{alias: value})


def test_boundaries_are_accepted():
    """batch_size 1 and 2500, flush_interval 0 and max_retries 0 are valid."""
    assert build(batch_size=1).batch_size == 1
    assert build(batch_size=2500).batch_size == 2500
    assert build(flush_interval=0).flush_interval == 0
    assert build(max_retries=0).max_retries == 0


@pytest.mark.parametrize(
    "options",
    [
        {"oauth_client_id": "id"},
        {"oauth_client_key": "secret"},
        {"oauth_key_id": "kid"},
        {"oauth_client_id": "id", "oauth_key_id": "kid"},
    ],
    ids=lambda v: "+".join(v),
)
def test_partial_oauth_credentials_are_refused(options):
    """Some OAuth credentials without the others are refused (not silently ignored)."""
    with pytest.raises(ConfigurationError, match="oauth_"):
        tracklane.Client("k", **options)


def test_oauth_server_and_scope_alone_change_nothing():
    """oauth_auth_server/oauth_scope without credentials are accepted; Basic auth is kept."""
    options = build(oauth_auth_server="https://auth.example.com", oauth_scope="x:y")
    assert not options.oauth


def test_oauth_options_at_segment_defaults_are_accepted():
    """Passing segment's OAuth defaults explicitly (no OAuth in use) is accepted."""
    options = build(
        oauth_client_id=None,
        oauth_client_key=None,
        oauth_key_id=None,
        oauth_auth_server="https://oauth2.segment.io",
        oauth_scope="tracking_api:write",
    )
    assert options.write_key == "test-key"


@pytest.mark.parametrize("name", ["verify", "ca_bundle"])
def test_turning_tls_verification_off_is_refused(name):
    """verify=False (or ca_bundle=False) is refused: certificates are always verified."""
    with pytest.raises(ConfigurationError, match="verif"):
        tracklane.Client("k", **{name: False})


def test_verify_true_and_a_ca_bundle_are_accepted(tmp_path):
    """verify=True means the default store; a path gives a CA bundle."""
    bundle = tmp_path / "ca.pem"
    assert build(verify=True).ca_bundle is None
    assert build(verify=str(bundle)).ca_bundle == str(bundle)
    assert build(ca_bundle=bundle).ca_bundle == bundle


# -- aliases ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "field", "value"),
    [
        ({"upload_size": 7}, "batch_size", 7),
        ({"flush_at": 8}, "batch_size", 8),
        ({"upload_interval": 2.5}, "flush_interval", 2.5),
        ({"max_total_backoff_duration": 30}, "max_total_backoff", 30),
        ({"max_rate_limit_duration": 20}, "max_retry_after", 20),
        ({"send": False}, "stub", True),
        ({"stub": True}, "stub", True),
        ({"stub": True}, "send", False),
        ({"send": True}, "stub", False),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else str(v),
)
def test_alias_sets_the_option(given, field, value):
    """segment's and posthog's option names configure the matching tracklane option."""
    assert getattr(build(**given), field) == value


def test_conflicting_aliases_are_refused():
    """Two names for one option with different values are refused."""
    with pytest.raises(ConfigurationError, match="batch_size"):
        build(batch_size=5, upload_size=6)
    assert build(batch_size=5, upload_size=5).batch_size == 5


def test_upload_size_limits_each_request(server, make_client):
    """upload_size=2 sends at most two messages per request."""
    client = make_client(upload_size=2, flush_interval=60)
    for i in range(5):
        client.track("u", "E", {"i": i})
    assert client.flush(timeout=5)
    assert len(server.requests) >= 3
    assert all(len(r.batch) <= 2 for r in server.requests)
    assert [m["properties"]["i"] for m in server.accepted()] == [0, 1, 2, 3, 4]


def test_upload_interval_sends_without_flush(server, make_client):
    """upload_interval=0.05 delivers a lone message without any flush() call."""
    client = make_client(upload_interval=0.05)
    client.track("u", "E")
    assert len(server.wait_for(1, timeout=5)) == 1


@pytest.mark.parametrize("options", [{"send": False}, {"stub": True}], ids=["send", "stub"])
def test_send_false_is_stub(server, make_client, options):
    """send=False and stub=True both validate and return True but send nothing."""
    client = make_client(**options)
    ok, message = client.track("u", "E")
    assert ok
    assert message["event"] == "E"
    assert client.flush(timeout=5)
    client.shutdown(timeout=1)
    assert server.requests == []
    assert client.stats().tracked == 1
    with pytest.raises(ValidationError):
        client.track(None, "E")


# -- hosts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.segment.io", US),
        ("https://api.segment.io", US),
        ("https://api.segment.io/", US),
        ("https://api.segment.io/v1", US),
        ("https://api.segment.io/v1/", US),
        ("https://api.segment.io/v1/batch", US),
        ("  https://api.segment.io/  ", US),
        ("\thttps://api.segment.io\n", US),
        ("HTTPS://API.Segment.IO", US),
        ("api.segment.io:8443", "https://api.segment.io:8443"),
        ("http://localhost:8080/v1/", "http://localhost:8080"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://[::1]:8080/v1", "http://[::1]:8080"),
        ("[::1]:8080", "https://[::1]:8080"),
        ("https://[2001:db8::1]/", "https://[2001:db8::1]"),
        ("https://proxy.example.com/segment/v1", "https://proxy.example.com/segment"),
    ],
)
def test_host_normalisation(host, expected):
    """Hosts with or without scheme, slash, /v1, port or brackets give one base URL."""
    options = build(host=host)
    assert options.host == expected
    assert options.batch_url == expected + "/v1/batch"


def test_default_host_is_segment_us():
    """Without host or region, messages go to Segment's US endpoint."""
    assert build().host == US
    assert build(host=None).host == US
    assert build(host="").host == US  # segment-analytics-python: `host or default`


@pytest.mark.parametrize(
    "host",
    ["   ", "ftp://api.segment.io", "https://", "api.segment.io:99999", "http://[::1", 42],
    ids=repr,
)
def test_invalid_host_names_host(host):
    """An unusable host gives a ConfigurationError naming host."""
    with pytest.raises(ConfigurationError, match="host"):
        tracklane.Client("k", host=host)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_normalised_host_is_where_requests_go(server, make_client, suffix):
    """A host given with a slash or /v1 still posts to exactly /v1/batch."""
    client = make_client(host=f"  {server.url}{suffix} ")
    client.track("u", "E")
    assert client.flush(timeout=5)
    assert [r.path for r in server.requests] == ["/v1/batch"]


def test_region_eu():
    """region="eu" selects Segment's EU endpoint; "us" the default one."""
    assert build(region="eu").host == EU
    assert build(region="us").host == US


@pytest.mark.parametrize("host", [EU, EU + "/", EU + "/v1", "events.eu1.segmentapis.com"])
def test_region_with_the_same_host_is_accepted(host):
    """region="eu" with the EU host spelled any way is not a conflict."""
    assert build(region="eu", host=host).host == EU


@pytest.mark.parametrize("host", [US, "http://127.0.0.1:9000"])
def test_region_conflicting_with_host_is_refused(host):
    """region="eu" with a different host is a ConfigurationError naming region."""
    with pytest.raises(ConfigurationError, match="region"):
        tracklane.Client("k", region="eu", host=host)


def test_plain_http_to_remote_host_warns_once(caplog):
    """Plain http:// to a non-loopback host logs one warning, however many clients use it."""
    name = f"analytics-{uuid.uuid4().hex[:12]}.example.com"
    host = f"http://{name}:8080"
    caplog.set_level(logging.DEBUG, logger="tracklane")
    clients = [tracklane.Client("secret-write-key-42", host=host, send=False) for _ in range(3)]
    for client in clients:
        client.shutdown(timeout=1)
    warnings = [r for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert name in warnings[0].getMessage()
    assert not [r for r in caplog.records if "secret-write-key-42" in r.getMessage()]


@pytest.mark.parametrize(
    "host",
    ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "https://api.segment.io"],
)
def test_no_plain_http_warning_for_loopback_or_tls(caplog, host):
    """Loopback over http and anything over https log no plain-http warning."""
    caplog.set_level(logging.WARNING, logger="tracklane")
    tracklane.Client("k", host=host, send=False).shutdown(timeout=1)
    assert not [r for r in caplog.records if "plain http" in r.getMessage()]


# -- environment variables for the default client -----------------------------------------


ENV_NAMES = ("TRACKLANE_WRITE_KEY", "SEGMENT_WRITE_KEY", "TRACKLANE_HOST", "TRACKLANE_SYNC_MODE")


@pytest.fixture
def clean_default(monkeypatch):
    """No default client, no module write_key/host, no environment configuration."""
    for name in (
        "TRACKLANE_WRITE_KEY",
        "SEGMENT_WRITE_KEY",
        "TRACKLANE_HOST",
        "TRACKLANE_SYNC_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    if tracklane.default_client is not None:
        tracklane.default_client.shutdown(timeout=2)
    monkeypatch.setattr(tracklane, "default_client", None)
    monkeypatch.setattr(tracklane, "write_key", None)
    monkeypatch.setattr(tracklane, "host", None)
    yield
    tracklane.shutdown(timeout=2)


def _auth(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_env_write_key_and_host(clean_default, monkeypatch, server):
    """TRACKLANE_WRITE_KEY and TRACKLANE_HOST configure the default client."""
    monkeypatch.setenv("TRACKLANE_WRITE_KEY", "env-key")
    monkeypatch.setenv("TRACKLANE_HOST", server.url + "/v1/")
    assert tracklane.track("u", "From Env")[0]
    assert tracklane.flush(timeout=5)
    (request,) = server.requests
    assert request.headers["authorization"] == _auth("env-key")
    assert request.batch[0]["event"] == "From Env"


def test_env_segment_write_key_fallback(clean_default, monkeypatch, server):
    """SEGMENT_WRITE_KEY is used when TRACKLANE_WRITE_KEY is not set."""
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "segment-env-key")
    monkeypatch.setenv("TRACKLANE_HOST", server.url)
    tracklane.track("u", "E")
    assert tracklane.flush(timeout=5)
    assert server.requests[0].headers["authorization"] == _auth("segment-env-key")


def test_env_tracklane_key_wins_over_segment_key(clean_default, monkeypatch, server):
    """With both variables set, TRACKLANE_WRITE_KEY wins."""
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "segment-env-key")
    monkeypatch.setenv("TRACKLANE_WRITE_KEY", "tracklane-env-key")
    monkeypatch.setenv("TRACKLANE_HOST", server.url)
    tracklane.track("u", "E")
    assert tracklane.flush(timeout=5)
    assert server.requests[0].headers["authorization"] == _auth("tracklane-env-key")


@pytest.fixture
def other_server() -> Iterator[RecordingServer]:
    srv = RecordingServer()
    yield srv
    srv.close()


def test_module_attributes_win_over_env(clean_default, monkeypatch, server, other_server):
    """tracklane.write_key/host set in code win over the environment."""
    monkeypatch.setenv("TRACKLANE_WRITE_KEY", "env-key")
    monkeypatch.setenv("TRACKLANE_HOST", other_server.url)
    monkeypatch.setattr(tracklane, "write_key", "code-key")
    monkeypatch.setattr(tracklane, "host", server.url)
    tracklane.track("u", "E")
    assert tracklane.flush(timeout=5)
    assert server.requests[0].headers["authorization"] == _auth("code-key")
    assert other_server.requests == []


def test_no_write_key_anywhere_is_a_configuration_error(clean_default):
    """Without a write key in code or environment, the first call names write_key."""
    with pytest.raises(ConfigurationError, match="write_key"):
        tracklane.track("u", "E")
    assert tracklane.default_client is None


def test_env_is_read_when_the_default_client_is_built(clean_default, monkeypatch, server):
    """After shutdown(), the next call builds a new default client from the current env."""
    monkeypatch.setenv("TRACKLANE_WRITE_KEY", "first")
    monkeypatch.setenv("TRACKLANE_HOST", server.url)
    tracklane.track("u", "E")
    tracklane.shutdown(timeout=5)
    monkeypatch.setenv("TRACKLANE_WRITE_KEY", "second")
    tracklane.track("u", "E")
    assert tracklane.flush(timeout=5)
    keys = [r.headers["authorization"] for r in server.requests]
    assert keys == [_auth("first"), _auth("second")]


def test_env_sync_mode(clean_default, monkeypatch, server):
    """TRACKLANE_SYNC_MODE=1 makes the default client deliver inside the call."""
    monkeypatch.setenv("TRACKLANE_WRITE_KEY", "k")
    monkeypatch.setenv("TRACKLANE_HOST", server.url)
    monkeypatch.setenv("TRACKLANE_SYNC_MODE", "1")
    assert tracklane.track("u", "Inline")[0]
    assert [m["event"] for m in server.accepted()] == ["Inline"]


def _json_default(value: Any) -> Any:
    return str(value)


def _on_error(exc: BaseException, batch: Any) -> None:
    pass


MODULE_SETTINGS = [
    ("batch_size", 7, "batch_size", 7),
    ("upload_size", 6, "batch_size", 6),
    ("flush_interval", 2.0, "flush_interval", 2.0),
    ("upload_interval", 1.5, "flush_interval", 1.5),
    ("max_queue_size", 9, "max_queue_size", 9),
    ("max_retries", 3, "max_retries", 3),
    ("timeout", 4.0, "timeout", 4.0),
    ("gzip", True, "gzip", True),
    ("sync_mode", True, "sync_mode", True),
    ("send", False, "stub", True),
    ("stub", True, "stub", True),
    ("shutdown_timeout", 2.0, "shutdown_timeout", 2.0),
    ("region", "eu", "host", EU),
    ("on_error", _on_error, "on_error", _on_error),
    ("overflow", "block", "overflow", tracklane.OverflowPolicy.BLOCK),
    ("block_timeout", 3.0, "block_timeout", 3.0),
    ("json_default", _json_default, "json_default", _json_default),
    ("decimal_as", "number", "decimal_as", "number"),
    ("flush_at", 8, "batch_size", 8),
    ("max_total_backoff", 31.0, "max_total_backoff", 31.0),
    ("max_total_backoff_duration", 30, "max_total_backoff", 30),
    ("max_retry_after", 8.0, "max_retry_after", 8.0),
    ("max_rate_limit_duration", 9, "max_retry_after", 9),
    ("backoff_base", 0.1, "backoff_base", 0.1),
    ("backoff_cap", 2.0, "backoff_cap", 2.0),
    ("proxies", "http://127.0.0.1:3128", "proxies", "http://127.0.0.1:3128"),
    ("queue_fsync", True, "queue_fsync", True),
    (
        "oauth_auth_server",
        "https://auth.example.com",
        "oauth_auth_server",
        "https://auth.example.com",
    ),
    ("oauth_scope", "tracking_api:read", "oauth_scope", "tracking_api:read"),
]


def test_every_client_option_is_a_module_setting():
    """Each option Client accepts (but thread) is declared as a module setting, unset or at
    segment's default, so that setting it on the module reaches the default client."""
    names = tracklane.Options.accepted_names() - {"thread"}
    missing = sorted(name for name in names if not hasattr(tracklane, name))
    assert missing == []
    defaults = {name: getattr(tracklane, name) for name in names if getattr(tracklane, name)}
    assert defaults == {
        "send": True,
        "max_queue_size": 10_000,
        "timeout": 15,
        "max_retries": 10,
        "oauth_auth_server": "https://oauth2.segment.io",
        "oauth_scope": "tracking_api:write",
    }


@pytest.mark.parametrize(
    ("attribute", "value", "field", "expected"),
    MODULE_SETTINGS,
    ids=[m[0] for m in MODULE_SETTINGS],
)
def test_module_attribute_configures_default_client(
    clean_default, monkeypatch, attribute, value, field, expected
):
    """Every documented option set as a tracklane.<name> attribute reaches the default client."""
    monkeypatch.setattr(tracklane, "write_key", "k")
    monkeypatch.setattr(tracklane, attribute, value)
    options = tracklane.get_default_client().options
    assert getattr(options, field) == expected


# -- call validation ----------------------------------------------------------------------

TS = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)

INVALID_CALLS = [
    ("track", {"event": "E"}, "user_id"),
    ("track", {"user_id": None, "anonymous_id": None, "event": "E"}, "user_id"),
    ("track", {"user_id": "", "event": "E"}, "user_id"),
    ("track", {"user_id": "", "anonymous_id": "", "event": "E"}, "user_id"),
    ("identify", {"traits": {"a": 1}}, "user_id"),
    ("page", {"name": "Home"}, "user_id"),
    ("screen", {"name": "Home"}, "user_id"),
    ("group", {"group_id": "g"}, "user_id"),
    ("alias", {"previous_id": "old"}, "user_id"),
    ("alias", {"previous_id": "old", "user_id": ""}, "user_id"),
    ("track", {"user_id": "u"}, "event"),
    ("track", {"user_id": "u", "event": ""}, "event"),
    ("track", {"user_id": "u", "event": 12}, "event"),
    ("group", {"user_id": "u"}, "group_id"),
    ("group", {"user_id": "u", "group_id": ""}, "group_id"),
    ("alias", {"user_id": "new"}, "previous_id"),
    ("alias", {"previous_id": "", "user_id": "new"}, "previous_id"),
    ("track", {"user_id": "u", "event": "E", "properties": [1, 2]}, "properties"),
    ("track", {"user_id": "u", "event": "E", "properties": "a=1"}, "properties"),
    ("page", {"user_id": "u", "properties": ("a", 1)}, "properties"),
    ("screen", {"user_id": "u", "properties": 5}, "properties"),
    ("identify", {"user_id": "u", "traits": ["email"]}, "traits"),
    ("group", {"user_id": "u", "group_id": "g", "traits": "big"}, "traits"),
    ("track", {"user_id": "u", "event": "E", "context": [("ip", "1")]}, "context"),
    ("alias", {"previous_id": "a", "user_id": "b", "context": "ctx"}, "context"),
    ("identify", {"user_id": "u", "integrations": "All"}, "integrations"),
    ("track", {"user_id": "u", "event": "E", "integrations": ["All"]}, "integrations"),
    ("track", {"user_id": "u", "event": "E", "timestamp": 1_700_000_000}, "timestamp"),
    ("track", {"user_id": "u", "event": "E", "timestamp": 1.7e9}, "timestamp"),
    ("track", {"user_id": "u", "event": "E", "timestamp": "yesterday"}, "timestamp"),
    ("track", {"user_id": "u", "event": "E", "timestamp": "2020-13-45"}, "timestamp"),
    ("track", {"user_id": "u", "event": "E", "timestamp": ""}, "timestamp"),
    ("identify", {"user_id": "u", "timestamp": [2020, 1, 1]}, "timestamp"),
    ("track", {"user_id": "u", "event": "E", "message_id": "x" * 101}, "message_id"),
    ("track", {"user_id": "u", "event": "E", "message_id": ""}, "message_id"),
    ("track", {"user_id": True, "event": "E"}, "user_id"),
    ("track", {"user_id": False, "event": "E"}, "user_id"),
    ("track", {"anonymous_id": True, "event": "E"}, "anonymous_id"),
    ("group", {"user_id": "u", "group_id": True}, "group_id"),
    ("alias", {"previous_id": False, "user_id": "new"}, "previous_id"),
    ("alias", {"previous_id": "old", "user_id": True}, "user_id"),
    ("track", {"user_id": ["u"], "event": "E"}, "user_id"),
    ("track", {"user_id": {"id": 1}, "event": "E"}, "user_id"),
    ("page", {"user_id": "u", "name": 3}, "name"),
    ("screen", {"user_id": "u", "category": ["c"]}, "category"),
]


@pytest.mark.parametrize(
    ("method", "kwargs", "field"),
    INVALID_CALLS,
    ids=[f"{m}-{f}-{i}" for i, (m, _, f) in enumerate(INVALID_CALLS)],
)
def test_invalid_call_raises_validation_error_naming_field(make_client, method, kwargs, field):
    """An invalid call raises ValidationError (a ValueError) naming the field, nothing queued."""
    client = make_client(stub=True)
    with pytest.raises(ValidationError) as info:
        getattr(client, method)(**kwargs)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.field == field
    assert str(error).startswith(f"{field}:")
    assert client.stats().tracked == 0


VALID_EDGE_CALLS = [
    ("track", {"user_id": 0, "event": "E"}, {"userId": "0"}),
    ("track", {"anonymous_id": 0, "event": "E"}, {"anonymousId": "0", "userId": None}),
    ("track", {"user_id": "", "anonymous_id": "a", "event": "E"}, {"anonymousId": "a"}),
    ("group", {"user_id": "u", "group_id": 0}, {"groupId": "0"}),
    ("alias", {"previous_id": 0, "user_id": 0}, {"previousId": "0", "userId": "0"}),
    ("track", {"user_id": "u", "event": "E", "message_id": "x" * 100}, {"messageId": "x" * 100}),
    (
        "track",
        {"user_id": "u", "event": "E", "timestamp": dt.date(2020, 5, 6)},
        {"timestamp": "2020-05-06T00:00:00.000+00:00"},
    ),
    (
        "track",
        {"user_id": "u", "event": "E", "timestamp": " 2020-05-06T07:08:09.123456+02:00 "},
        {"timestamp": "2020-05-06T07:08:09.123+02:00"},
    ),
    (
        "track",
        {"user_id": "u", "event": "E", "timestamp": "2020-05-06"},
        {"timestamp": "2020-05-06T00:00:00.000+00:00"},
    ),
    ("page", {"user_id": "u", "name": "", "category": ""}, {"name": None, "category": None}),
]


@pytest.mark.parametrize(
    ("method", "kwargs", "expected"),
    VALID_EDGE_CALLS,
    ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(VALID_EDGE_CALLS)],
)
def test_valid_edge_cases_are_accepted(server, make_client, method, kwargs, expected):
    """0 is a valid id, 100-character message ids and date/ISO timestamps are accepted."""
    client = make_client()
    ok, _ = getattr(client, method)(**kwargs)
    assert ok
    assert client.flush(timeout=5)
    (message,) = server.accepted()
    for key, value in expected.items():
        assert message[key] == value


def test_validation_error_loses_nothing_already_queued(server, make_client):
    """After invalid calls all earlier and later messages arrive; invalid calls are not counted."""
    client = make_client(flush_interval=60)
    for i in range(3):
        assert client.track("u", "Before", {"i": i})[0]
    for method, kwargs, _ in INVALID_CALLS[:12]:
        with pytest.raises(ValidationError):
            getattr(client, method)(**kwargs)
    assert client.track("u", "After")[0]
    stats = client.stats()
    assert stats.tracked == 4
    assert stats.tracked == stats.delivered + stats.pending + sum(stats.dropped.values())
    assert client.flush(timeout=5)
    events = [(m["event"], m["properties"].get("i")) for m in server.accepted()]
    assert events == [("Before", 0), ("Before", 1), ("Before", 2), ("After", None)]
    final = client.stats()
    assert (final.tracked, final.delivered, final.pending, final.dropped) == (4, 4, 0, {})


def test_validation_error_in_sync_mode_counts_nothing(server, make_client):
    """In sync_mode an invalid call raises before any request is made."""
    client = make_client(sync_mode=True)
    with pytest.raises(ValidationError, match="event"):
        client.track("u")
    assert server.requests == []
    assert client.stats().tracked == 0


def test_validation_error_at_module_level(clean_default, monkeypatch, server):
    """The module-level calls raise the same ValidationError."""
    monkeypatch.setattr(tracklane, "write_key", "k")
    monkeypatch.setattr(tracklane, "host", server.url)
    with pytest.raises(ValidationError) as info:
        tracklane.group("u")
    assert info.value.field == "group_id"


def test_caller_mapping_types_are_accepted(server, make_client):
    """Any Mapping (not only dict) is accepted for properties, context and integrations."""
    client = make_client()
    props: Dict[str, Any] = {"a": 1}
    ok, _ = client.track(
        "u",
        "E",
        MappingProxyType(props),
        context=MappingProxyType({"ip": "1.1.1.1"}),
        integrations=MappingProxyType({"All": True}),
    )
    assert ok
    assert client.flush(timeout=5)
    (message,) = server.accepted()
    assert message["properties"] == {"a": 1}
    assert message["context"]["ip"] == "1.1.1.1"
    assert message["integrations"] == {"All": True}
