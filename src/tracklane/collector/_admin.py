"""``tracklane status`` and ``tracklane replay``: asking a running collector (stdlib only).

Both talk to the collector's HTTP API (``GET /v1/destinations``, ``POST
/v1/destinations/NAME/replay``), so they work whatever store the collector uses.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, TextIO, Tuple
from urllib.parse import quote

__all__ = [
    "DEFAULT_URL",
    "add_replay_arguments",
    "add_status_arguments",
    "replay",
    "status",
]

DEFAULT_URL = "http://127.0.0.1:8787"
_COLUMNS = (
    ("destination", "name"),
    ("type", "type"),
    ("delivered", "delivered"),
    ("pending", "pending"),
    ("failed", "failed"),
    ("dead", "deadLettered"),
    ("filtered", "filtered"),
    ("lag s", "lagSeconds"),
    ("last error", "lastError"),
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the collector's address (default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--write-key", metavar="KEY", help="a write key, when the collector requires one"
    )


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tracklane status``."""
    _add_common(parser)
    parser.add_argument("--json", action="store_true", help="print the JSON answer as is")


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tracklane replay``."""
    _add_common(parser)
    parser.add_argument(
        "--destination", required=True, metavar="NAME", help="the destination to replay"
    )


def _call(args: argparse.Namespace, method: str, path: str) -> Tuple[int, Dict[str, Any]]:
    request = urllib.request.Request(args.url.rstrip("/") + path, method=method)
    if args.write_key:
        token = base64.b64encode(f"{args.write_key}:".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": exc.reason}


def _run(args: argparse.Namespace, method: str, path: str, err: TextIO) -> Optional[Dict[str, Any]]:
    try:
        code, body = _call(args, method, path)
    except (OSError, ValueError) as exc:
        print(f"tracklane: cannot reach the collector at {args.url}: {exc}", file=err)
        return None
    if code == 404 and path == "/v1/destinations":
        print(
            f"tracklane: the collector at {args.url} routes nowhere (start it with --config)",
            file=err,
        )
        return None
    if code != 200:
        print(f"tracklane: the collector answered {code}: {body.get('error', body)}", file=err)
        return None
    return body


def status(
    args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None
) -> int:
    """Print every destination's status; 0 on success, 1 when the collector cannot say."""
    out, err = out or sys.stdout, err or sys.stderr
    body = _run(args, "GET", "/v1/destinations", err)
    if body is None:
        return 1
    if args.json:
        print(json.dumps(body, indent=2), file=out)
        return 0
    rows = [[title for title, _ in _COLUMNS]]
    for item in body["destinations"]:
        rows.append(["-" if item.get(key) is None else str(item[key]) for _, key in _COLUMNS])
    if len(rows) == 1:
        print("no destinations configured (start the collector with --config)", file=out)
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        print("  ".join([*cells, row[-1][:120]]).rstrip(), file=out)
    return 0


def replay(
    args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None
) -> int:
    """Send a destination's dead letters again; 0 on success."""
    out, err = out or sys.stdout, err or sys.stderr
    path = f"/v1/destinations/{quote(args.destination, safe='')}/replay"
    body = _run(args, "POST", path, err)
    if body is None:
        return 1
    print(f"{body['replayed']} dead-lettered message(s) of {args.destination} sent again", file=out)
    return 0
