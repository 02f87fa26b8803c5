"""OAuth 2 client credentials against a real token server and tracking endpoint on 127.0.0.1.

The token server verifies every JWT client assertion with the public key (kid, iss, sub,
aud, exp, iat, jti); the tracking endpoint answers 401 unless the request carries a token
that server issued and that is still valid. The tests that take ``make_client`` run on
both ``Client`` and ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import tracklane
from helpers import Action, RecordingServer
from oauth_server import CLIENT_ID, KEY_ID, TokenServer, new_private_key, pem

pytestmark = pytest.mark.both_clients

KEY = new_private_key()
KEY_PEM = pem(KEY)


@pytest.fixture
def tokens() -> Iterator[TokenServer]:
    """A token server that trusts KEY's public key."""
    srv = TokenServer(KEY.public_key())
    yield srv
    srv.stop()


@pytest.fixture
def api(server: RecordingServer, tokens: TokenServer) -> RecordingServer:
    """The tracking endpoint, accepting only tokens issued by ``tokens``."""
    server.gate = tokens.gate
    return server


@pytest.fixture
def oauth_client(api, tokens, make_client) -> Callable[..., tracklane.Client]:
    """Clients configured with segment's OAuth option names, pointed at the local servers."""

    def make(**options: Any) -> tracklane.Client:
        return make_client(
            oauth_client_id=CLIENT_ID,
            oauth_client_key=KEY_PEM,
            oauth_key_id=KEY_ID,
            oauth_auth_server=tokens.url + "/",
            **options,
        )

    return make


def bearer_tokens(server: RecordingServer) -> List[Tuple[str, int]]:
    """(Authorization header, status) of every request the tracking endpoint saw."""
    return [(r.headers.get("authorization", ""), r.status) for r in server.requests]


def test_batches_carry_a_bearer_token_from_a_verified_assertion(api, tokens, oauth_client):
    """The assertion verifies (kid, iss, sub, aud, exp, jti) and the token is sent as Bearer."""
    client = oauth_client()
    for n in range(3):
        assert client.track("u", f"E{n}")[0]
        assert client.flush(timeout=10)
    assert [m["event"] for m in api.accepted()] == ["E0", "E1", "E2"]
    assert bearer_tokens(api) == [("Bearer tok-1", 200)] * 3
    (request,) = tokens.requests  # cached: one token for three batches
    assert request.status == 200, request.problem
    assert request.header == {"alg": "RS256", "kid": KEY_ID, "typ": "JWT"}
    claims = request.claims
    assert (claims["iss"], claims["sub"], claims["aud"]) == (CLIENT_ID, CLIENT_ID, tokens.url)
    assert 0 < claims["exp"] - time.time() <= 60
    assert len(claims["jti"]) == 36
    assert request.form["scope"] == "tracking_api:write"
    assert client.stats().delivered == 3


def test_token_is_refreshed_before_it_expires(api, tokens, oauth_client):
    """A token about to expire is replaced before the API would refuse it: no 401 is seen."""
    tokens.expires_in = 1.5  # refreshed when under half its lifetime is left
    client = oauth_client()
    deadline = time.monotonic() + 10
    sent = 0
    while len(tokens.granted()) < 2 and time.monotonic() < deadline:
        client.track("u", f"E{sent}")
        sent += 1
        assert client.flush(timeout=5)
        time.sleep(0.05)  # polling the server's state, bounded by the deadline
    assert len(tokens.granted()) == 2
    assert {status for _, status in bearer_tokens(api)} == {200}
    assert [auth for auth, _ in bearer_tokens(api)][-1] == "Bearer tok-2"
    assert len(api.accepted()) == sent
    assert client.stats().retries == 0


def test_failed_early_refresh_keeps_using_the_valid_token(api, tokens, oauth_client):
    """If the token server fails while the token is still valid, batches keep going with it."""
    tokens.expires_in = 4  # refreshed from 2 s on; still valid until 4 s
    client = oauth_client()
    client.track("u", "First")
    assert client.flush(timeout=5)
    tokens.script.extend(Action(status=503, body=b'{"error":"unavailable"}') for _ in range(50))
    deadline = time.monotonic() + 3.5
    while len(tokens.requests) < 2 and time.monotonic() < deadline:
        client.track("u", "Later")
        assert client.flush(timeout=5)
        time.sleep(0.05)  # polling the server's state, bounded by the deadline
    for _ in range(5):  # the next batches do not ask again at once
        client.track("u", "Later")
        assert client.flush(timeout=5)
    assert [r.status for r in tokens.requests] == [200, 503]
    assert {auth for auth, _ in bearer_tokens(api)} == {"Bearer tok-1"}
    assert {status for _, status in bearer_tokens(api)} == {200}
    assert client.stats().retries == 0


def test_a_401_fetches_a_new_token_and_sends_again(api, tokens, oauth_client):
    """After the API refuses the token (401), a new one is fetched and the batch resent."""
    seen: List[Any] = []
    client = oauth_client(on_error=lambda exc, batch: seen.append(exc))
    client.track("u", "Before")
    assert client.flush(timeout=10)
    tokens.revoke_all()
    client.track("u", "After")
    assert client.flush(timeout=10)
    assert bearer_tokens(api) == [
        ("Bearer tok-1", 200),
        ("Bearer tok-1", 401),
        ("Bearer tok-2", 200),
    ]
    assert [m["event"] for m in api.accepted()] == ["Before", "After"]
    stats = client.stats()
    assert (stats.delivered, stats.dropped) == (2, {})
    assert seen == []


def test_token_endpoint_down_then_back_delivers_everything_once(api, tokens, oauth_client):
    """With the token server down, batches are retried and counted; all arrive once it is back."""
    seen: List[Any] = []
    tokens.stop()
    client = oauth_client(
        on_error=lambda exc, batch: seen.append(exc), max_retries=10_000, max_total_backoff=60
    )
    events = [f"E{n}" for n in range(5)]
    for event in events:
        assert client.track("u", event)[0]
    result = client.flush(timeout=0.5)
    assert not result
    stats = client.stats()
    assert stats.retries > 0
    assert (stats.pending, stats.delivered, stats.dropped) == (5, 0, {})
    assert api.requests == []  # nothing goes out without a token
    tokens.start()
    assert client.flush(timeout=10)
    assert sorted(m["event"] for m in api.accepted()) == events
    stats = client.stats()
    assert (stats.delivered, stats.pending, stats.dropped) == (5, 0, {})
    assert seen == []


def test_token_endpoint_down_for_good_is_a_counted_reported_drop(api, tokens, oauth_client):
    """When no token can be had within the retries, the batch is dropped, counted and reported."""
    reports: List[Tuple[BaseException, List[Dict[str, Any]]]] = []
    tokens.stop()
    client = oauth_client(on_error=lambda exc, batch: reports.append((exc, batch)), max_retries=2)
    assert client.track("u", "Lost")[0]  # never raises into the caller
    assert client.flush(timeout=10)
    stats = client.stats()
    assert stats.dropped == {"retries_exhausted": 1}
    assert stats.retries == 2
    ((error, batch),) = reports
    assert isinstance(error, tracklane.RetriesExhaustedError)
    assert isinstance(error.__cause__, tracklane.OAuthError)
    assert "OAuth server" in str(error.__cause__)
    assert [m["event"] for m in batch] == ["Lost"]


@pytest.mark.parametrize("header", ["Retry-After", "X-RateLimit-Reset"])
def test_429_from_the_token_endpoint_is_honoured(api, tokens, oauth_client, header):
    """A 429 from the token endpoint delays the next token request by the time it asks."""
    tokens.script.append(
        Action(status=429, headers={header: "0.6"}, body=b'{"error":"rate_limited"}')
    )
    client = oauth_client()
    client.track("u", "Later")
    assert client.flush(timeout=10)
    first, second = tokens.requests
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.55
    assert [m["event"] for m in api.accepted()] == ["Later"]
    assert client.stats().retries >= 1


@pytest.mark.thread_only("AsyncClient has no sync_mode (see the deliver-now test)")
def test_sync_mode_with_oauth(api, tokens, oauth_client):
    """sync_mode delivers inside the call with a Bearer token too."""
    client = oauth_client(sync_mode=True)
    assert client.track("u", "Inline")[0]
    assert bearer_tokens(api) == [("Bearer tok-1", 200)]


@pytest.mark.thread_only("the module functions use the threaded default client")
def test_module_settings_configure_oauth(api, tokens, monkeypatch):
    """Segment's module-level OAuth settings reach the default client."""
    monkeypatch.setattr(tracklane, "default_client", None)
    for name, value in {
        "write_key": "module-key",
        "host": api.url,
        "oauth_client_id": CLIENT_ID,
        "oauth_client_key": KEY_PEM,
        "oauth_key_id": KEY_ID,
        "oauth_auth_server": tokens.url,
    }.items():
        monkeypatch.setattr(tracklane, name, value)
    try:
        tracklane.track("u", "Module")
        assert tracklane.flush(timeout=10)
    finally:
        tracklane.shutdown(timeout=2)
    assert bearer_tokens(api) == [("Bearer tok-1", 200)]


def test_secrets_never_reach_the_logs(api, tokens, oauth_client, caplog):
    """Neither the private key, the assertion nor a token is logged, even at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="tracklane")
    tokens.script.append(Action(status=500, body=b'{"error":"server_error"}'))
    client = oauth_client()
    client.track("u", "One")
    assert client.flush(timeout=10)
    tokens.revoke_all()
    client.track("u", "Two")
    assert client.flush(timeout=10)
    assert len(api.accepted()) == 2
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "HTTP 500" in text  # the failures were logged...
    key_body = KEY_PEM.splitlines()[1]
    for secret in ("tok-1", "tok-2", key_body, "eyJ"):  # ...without any secret
        assert secret not in text


def test_missing_extra_names_the_pip_install(monkeypatch):
    """Without PyJWT the error names the extra to install."""
    monkeypatch.setitem(sys.modules, "jwt", None)  # makes `import jwt` fail
    with pytest.raises(tracklane.ConfigurationError, match=r"pip install 'tracklane\[oauth\]'"):
        tracklane.Client(
            "k", oauth_client_id=CLIENT_ID, oauth_client_key=KEY_PEM, oauth_key_id=KEY_ID
        )


@pytest.mark.parametrize(
    ("key", "problem"),
    [("not a key", "not a PEM private key"), (42, "PEM private key")],
)
def test_unusable_private_key_is_a_configuration_error(key, problem):
    """A key that cannot sign is refused when the client is built, naming oauth_client_key."""
    with pytest.raises(tracklane.ConfigurationError, match=f"oauth_client_key: .*{problem}"):
        tracklane.Client("k", oauth_client_id=CLIENT_ID, oauth_client_key=key, oauth_key_id=KEY_ID)


def test_async_client_fetches_tokens_without_blocking_the_loop(api, tokens):
    """AsyncClient: token requests (each answered after 0.6 s) never stall the event loop.

    Batches carry Bearer tokens, a 401 brings a new token and one resend, and the
    deliver-now call shares the cached token.
    """
    lags: List[float] = []

    async def main() -> Tuple[bool, tracklane.Stats]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                start = loop.time()
                await asyncio.sleep(0.005)
                lags.append(loop.time() - start - 0.005)

        tick = asyncio.create_task(ticker())
        async with tracklane.AsyncClient(
            "k",
            host=api.url,
            oauth_client_id=CLIENT_ID,
            oauth_client_key=KEY_PEM,
            oauth_key_id=KEY_ID,
            oauth_auth_server=tokens.url,
        ) as client:
            for n in range(3):
                client.track("u", f"Queued{n}")
            assert await client.flush(10)
            tokens.revoke_all()
            client.track("u", "After")
            assert await client.flush(10)
            delivered, _ = await client.deliver.track("u", "Inline")
            stats = client.stats()
        stop.set()
        await tick
        return delivered, stats

    tokens.delay = 0.6
    delivered, stats = asyncio.run(main())
    assert delivered
    assert [m["event"] for m in api.accepted()] == [
        "Queued0",
        "Queued1",
        "Queued2",
        "After",
        "Inline",
    ]
    assert bearer_tokens(api) == [
        ("Bearer tok-1", 200),
        ("Bearer tok-1", 401),
        ("Bearer tok-2", 200),
        ("Bearer tok-2", 200),
    ]
    assert len(tokens.granted()) == 2
    assert (stats.delivered, stats.dropped, stats.retries) == (5, {}, 0)
    assert lags
    # A token fetch on the loop would stall it 0.6 s; the bound leaves room for a busy machine.
    assert max(lags) < 0.4, f"the loop stalled {max(lags) * 1000:.0f} ms"


@pytest.mark.parametrize("kind", ["Client", "AsyncClient"])
def test_unusable_private_key_is_refused_by_both_clients(kind):
    """AsyncClient refuses a key that cannot sign like Client, naming oauth_client_key."""
    with pytest.raises(tracklane.ConfigurationError, match="oauth_client_key: "):
        getattr(tracklane, kind)(
            "k", oauth_client_id=CLIENT_ID, oauth_client_key="not a key", oauth_key_id=KEY_ID
        )
