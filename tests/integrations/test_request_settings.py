"""How the web integrations read a request, and how they refuse bad settings."""

from __future__ import annotations

from typing import Any

import pytest

import tracklane
from tracklane.integrations._request import RequestSettings, parse_locale, request_fields


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("fr-CA, en;q=0.8", "fr-CA"),
        ("de;q=0.5, en-GB;q=0.9, *", "en-GB"),
        ("*;q=1, es", "es"),
        ("en;q=abc, pt-BR;q=0.1", "pt-BR"),
        ("", None),
        (None, None),
        ("*", None),
    ],
)
def test_locale_is_the_preferred_language(header: str, expected: str) -> None:
    """locale is the Accept-Language tag with the highest quality (the first on ties)."""
    assert parse_locale(header) == expected


def test_client_ip_counts_trusted_proxies_from_the_right() -> None:
    """With ip_header, the address proxy_count hops from the right is the client's."""
    chain = "198.51.100.7, 203.0.113.1, 10.0.0.2"
    assert RequestSettings().client_ip("10.0.0.9", chain) == "10.0.0.9", "header ignored"
    assert RequestSettings("X-Forwarded-For").client_ip("10.0.0.9", chain) == "10.0.0.2"
    two = RequestSettings("X-Forwarded-For", proxy_count=2)
    assert two.client_ip("10.0.0.9", chain) == "203.0.113.1"
    assert two.client_ip("10.0.0.9", "198.51.100.7") == "198.51.100.7"
    assert two.client_ip("10.0.0.9", None) == "10.0.0.9", "no header: the peer"


def test_request_fields_follow_segments_names() -> None:
    """ip, userAgent, locale and page (path, url, search, referrer) as Segment names them."""
    fields = request_fields(
        url="https://shop.example/cart?x=1",
        path="/cart",
        query="x=1",
        ip="198.51.100.7",
        user_agent="agent",
        referrer="https://ref.example/",
        accept_language="en-GB",
    )
    assert fields == {
        "ip": "198.51.100.7",
        "userAgent": "agent",
        "locale": "en-GB",
        "page": {
            "path": "/cart",
            "url": "https://shop.example/cart?x=1",
            "search": "?x=1",
            "referrer": "https://ref.example/",
        },
    }
    bare = request_fields(
        url="/", path="/", query="", ip=None, user_agent=None, referrer=None, accept_language=None
    )
    assert bare == {"page": {"path": "/", "url": "/", "search": ""}}


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"proxy_count": 0}, "proxy_count"),
        ({"proxy_count": "1"}, "proxy_count"),
        ({"ip_header": ""}, "ip_header"),
        ({"user_id": 3}, "user_id"),
        ({"ip_heder": "X-Real-IP"}, "ip_heder"),
    ],
)
def test_bad_request_settings_name_the_key(values: dict, field: str) -> None:
    """A bad middleware setting is refused with the key (and where it came from) named."""
    with pytest.raises(tracklane.ConfigurationError, match=field) as caught:
        RequestSettings.from_mapping(values, "settings.TRACKLANE")
    assert "settings.TRACKLANE" in str(caught.value)


def test_django_settings_are_checked_at_startup(default_settings: None) -> None:
    """settings.TRACKLANE with a bad client option stops Django's start-up, naming the key."""
    pytest.importorskip("django", reason="needs Django")
    from tracklane.integrations._config import configure_default
    from tracklane.integrations.django import split_settings

    options, request = split_settings({"write_key": "k", "batch_size": 10, "user_id": True})
    assert options == {"write_key": "k", "batch_size": 10}
    assert request.user_id is True
    with pytest.raises(tracklane.ConfigurationError, match=r"settings\.TRACKLANE: batch_size"):
        configure_default({"batch_size": 0}, "settings.TRACKLANE")
    with pytest.raises(tracklane.ConfigurationError, match=r"settings\.TRACKLANE"):
        split_settings(["write_key"])
    configure_default({"write_key": "k2", "flush_interval": 2}, "settings.TRACKLANE")
    assert (tracklane.write_key, tracklane.flush_interval) == ("k2", 2)


def test_a_failing_user_lookup_never_breaks_the_request(caplog: pytest.LogCaptureFixture) -> None:
    """If reading the user raises, the request is served and its events have no userId."""
    import asyncio

    import httpx

    from tracklane.integrations.asgi import TracklaneMiddleware

    stub = tracklane.Client("k", stub=True)
    sent: list = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        sent.append(stub.track(event="Viewed", anonymous_id="anon")[1])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def broken_user(scope: Any) -> Any:
        raise RuntimeError("user store down")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=TracklaneMiddleware(app, user_id=broken_user))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as http:
            return await http.get("/cart?x=1", headers={"User-Agent": "agent"})

    response = asyncio.run(call())
    assert response.status_code == 200
    assert sent[0]["userId"] is None
    assert sent[0]["context"]["page"]["url"] == "http://shop.test/cart?x=1"
    assert sent[0]["context"]["userAgent"] == "agent"
    assert "could not read the request's user id" in caplog.text
