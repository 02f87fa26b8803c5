"""Requests with distinct context, and the check that each event carries its own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Tuple

import httpx


def send_requests(port: int, path: str, count: int) -> Dict[str, Dict[str, Any]]:
    """Send ``count`` requests, six at a time, each with its own ip, agent, referrer, user."""

    def one(i: int) -> Tuple[str, Dict[str, Any]]:
        request_id = f"r{i}"
        headers = {
            "User-Agent": f"agent/{i}",
            "X-Forwarded-For": f"203.0.113.{i}, 10.0.0.1, 198.51.100.{i}",
            "Referer": f"https://ref.example/{i}",
            "Accept-Language": "de;q=0.5, fr-CA, en;q=0.8",
        }
        if i % 2 == 0:
            headers["X-Test-User"] = f"{1000 + i}"
        response = http.get(path, params={"id": request_id, "q": "x y"}, headers=headers)
        assert response.status_code == 200, response.text
        return request_id, {"i": i, "user": headers.get("X-Test-User")}

    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=10) as http, ThreadPoolExecutor(6) as pool:
        return dict(pool.map(one, range(count)))


def check_events(
    events: List[Dict[str, Any]], sent: Dict[str, Dict[str, Any]], port: int, path: str
) -> None:
    """Each request's event is stored once, with that request's context and user."""
    by_id = {event["properties"]["id"]: event for event in events}
    assert set(by_id) == set(sent), "every request's event is stored"
    assert len(events) == len(sent), "and stored once"
    for request_id, info in sent.items():
        event = by_id[request_id]
        context = event["context"]
        i = info["i"]
        # X-Forwarded-For with one trusted proxy: the right-most address is the client's.
        assert context["ip"] == f"198.51.100.{i}"
        assert context["userAgent"] == f"agent/{i}"
        assert context["locale"] == "fr-CA"
        assert context["page"] == {
            "path": path,
            "url": f"http://127.0.0.1:{port}{path}?id={request_id}&q=x+y",
            "search": f"?id={request_id}&q=x+y",
            "referrer": f"https://ref.example/{i}",
        }
        assert context["library"]["name"] == "tracklane"
        assert event["anonymousId"] == "anon"
        assert event.get("userId") == info["user"], "userId only for an authenticated user"
