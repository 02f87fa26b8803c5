"""``tracklane tail --url URL``: follow the events arriving at a tracklane collector.

It polls the collector's read API with ``after=<seq>`` (events stored after the last one
seen, oldest first), so nothing is skipped or shown twice however fast events arrive.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List

from tracklane.cli._common import error, resolve_write_key

__all__ = ["EXAMPLES", "add_tail_arguments", "run"]

EXAMPLES = """\
  tracklane tail --url http://127.0.0.1:8787
  tracklane tail --url http://127.0.0.1:8787 --type track --event 'Order Completed'
  tracklane tail --url http://127.0.0.1:8787 --user u1 --json | jq .properties
  tracklane tail --url http://127.0.0.1:8787 --last 20 --count 20   # the last 20, then exit"""

_PAGE = 1000


def add_tail_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tracklane tail``."""
    parser.add_argument("--url", required=True, help="the collector, e.g. http://127.0.0.1:8787")
    parser.add_argument(
        "--writeKey",
        "--write-key",
        dest="write_key",
        metavar="KEY",
        help="read this key's events (needed when the collector has write keys)",
    )
    parser.add_argument("--type", help="only this message type")
    parser.add_argument("--event", help="only this event name (track)")
    parser.add_argument("--user", metavar="ID", help="only this userId")
    parser.add_argument("--anonymous", metavar="ID", help="only this anonymousId")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--last", type=int, default=0, metavar="N", help="first show the N latest events"
    )
    parser.add_argument("--count", type=int, metavar="N", help="exit after N events")
    parser.add_argument(
        "--interval", type=float, default=0.5, metavar="SECONDS", help="poll interval (0.5)"
    )


class _Reader:
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.url.rstrip("/")
        self.headers = {"Accept": "application/json"}
        key, _ = resolve_write_key(args.write_key, "--writeKey")
        if key:
            token = base64.b64encode(f"{key}:".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        self.filters: Dict[str, str] = {}
        for name, value in (
            ("type", args.type),
            ("event", args.event),
            ("userId", args.user),
            ("anonymousId", args.anonymous),
        ):
            if value:
                self.filters[name] = value

    def events(self, **params: Any) -> List[Dict[str, Any]]:
        query = urllib.parse.urlencode({**self.filters, **params})
        request = urllib.request.Request(f"{self.base}/v1/events?{query}", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            hint = " (pass --writeKey)" if exc.code == 401 else ""
            raise RuntimeError(f"the collector answered HTTP {exc.code}: {detail}{hint}") from None
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise RuntimeError(f"{self.base} is not a tracklane collector (no events list)")
        return events


def describe(event: Dict[str, Any]) -> str:
    """One readable line: when it arrived, type, what, who, and the payload."""
    kind = str(event.get("type", "?"))
    what = {
        "track": event.get("event"),
        "page": event.get("name"),
        "screen": event.get("name"),
        "group": event.get("groupId"),
        "alias": event.get("previousId"),
    }.get(kind)
    who = []
    if event.get("userId") is not None:
        who.append(f"user={event['userId']}")
    if event.get("anonymousId") is not None:
        who.append(f"anon={event['anonymousId']}")
    payload = event.get("properties") or event.get("traits")
    parts = [str(event.get("receivedAt", "")), f"{kind:<8}"]
    if what is not None:
        parts.append(json.dumps(what, ensure_ascii=False) if kind == "track" else str(what))
    parts.extend(who)
    if payload:
        parts.append(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Print events as they arrive until Ctrl-C (or ``--count`` events)."""
    reader = _Reader(args)
    shown = 0
    limit = args.count

    def show(event: Dict[str, Any]) -> bool:
        nonlocal shown
        text = json.dumps(event, ensure_ascii=False) if args.json else describe(event)
        sys.stdout.write(text + "\n")
        shown += 1
        return limit is not None and shown >= limit

    try:
        latest = reader.events(limit=max(args.last, 1))
    except (RuntimeError, OSError) as exc:
        return error("tail", f"cannot read {args.url}: {exc}")
    if latest and "seq" not in latest[0]:
        return error("tail", f"{args.url}: this collector cannot be followed (no seq); upgrade it")
    after = latest[0]["seq"] if latest else 0
    for event in reversed(latest[: args.last]):
        if show(event):
            return 0
    sys.stdout.flush()
    warned = False
    while True:
        try:
            batch = reader.events(after=after, limit=_PAGE)
            warned = False
        except (RuntimeError, OSError) as exc:
            if not warned:
                print(f"tracklane tail: {exc}; retrying", file=sys.stderr, flush=True)
                warned = True
            time.sleep(max(args.interval, 1.0))
            continue
        for event in batch:
            after = max(after, int(event["seq"]))
            if show(event):
                sys.stdout.flush()
                return 0
        sys.stdout.flush()
        if len(batch) < _PAGE:
            time.sleep(args.interval)
