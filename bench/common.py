"""Shared pieces of the benchmark: the event, statistics, and the sink control client."""

from __future__ import annotations

import http.client
import json
import math
import statistics
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

LIBRARIES = ("tracklane", "segment", "posthog", "rudder")
PEERS = ("segment", "posthog", "rudder")

# Settings applied to every library (where the library has the knob).
MAX_QUEUE_SIZE = 200_000
UPLOAD_SIZE = 100
UPLOAD_INTERVAL = 0.5
WRITE_KEY = "bench-write-key"

_PLACED_AT = datetime(2024, 5, 17, 9, 30, 12, 345000, tzinfo=timezone.utc)


def make_event(i: int) -> dict[str, Any]:
    """A fresh, realistic track event: user id, name, ten properties.

    The properties include a nested dict, a list, a timezone-aware datetime and a
    Decimal. A new dict is built for every call, as an application would.
    """
    return {
        "user_id": f"user-{i % 5000}",
        "event": "Order Completed",
        "properties": {
            "order_id": f"ord-{i:08d}",
            "revenue": Decimal("129.99"),
            "currency": "EUR",
            "item_count": 3,
            "coupon": "SPRING24",
            "first_order": i % 7 == 0,
            "placed_at": _PLACED_AT,
            "discount": 0.15,
            "tags": ["gift", "express"],
            "shipping": {
                "method": "express",
                "address": {"city": "Lisbon", "country": "PT", "postcode": "1100-148"},
                "cost": 4.5,
            },
        },
    }


def coerce_event(event: dict[str, Any], coerce: Sequence[str]) -> dict[str, Any]:
    """Replace the types a library cannot serialise (Decimal -> float, datetime -> ISO)."""
    if not coerce:
        return event

    def fix(value: Any) -> Any:
        if "decimal" in coerce and isinstance(value, Decimal):
            return float(value)
        if "datetime" in coerce and isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return {**event, "properties": fix(event["properties"])}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def summarize_ns(samples_ns: list[int]) -> dict[str, float]:
    """p50/p99/p99.9/mean/max of nanosecond samples, in microseconds."""
    values = sorted(samples_ns)
    return {
        "n": float(len(values)),
        "p50_us": percentile(values, 50) / 1000.0,
        "p99_us": percentile(values, 99) / 1000.0,
        "p999_us": percentile(values, 99.9) / 1000.0,
        "mean_us": (statistics.fmean(values) / 1000.0) if values else float("nan"),
        "max_us": (values[-1] / 1000.0) if values else float("nan"),
    }


class SinkControl:
    """Talks to bench/sink.py's /_bench/ control endpoints (127.0.0.1 only)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.hostname != "127.0.0.1":
            raise ValueError(f"the sink must be on 127.0.0.1, got {url!r}")
        self.host = parts.hostname
        self.port = int(parts.port or 80)

    def _call(self, method: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        result: dict[str, Any] = json.loads(data)
        return result

    def reset(self, hang: bool = False) -> dict[str, Any]:
        return self._call("POST", f"/_bench/reset?hang={int(hang)}")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_bench/stats")

    def sample(self) -> Optional[Any]:
        return self._call("GET", "/_bench/sample").get("sample")

    def wait(self, events: int, timeout: float) -> dict[str, Any]:
        return self._call(
            "GET", f"/_bench/wait?events={events}&timeout={timeout}", timeout=timeout + 10.0
        )
