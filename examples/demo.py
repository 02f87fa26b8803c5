"""``make demo``: the collector, the example shop, and a table of what arrived.

Starts ``tracklane serve`` on a free port with a fresh database and a routing config that
sends every event to a small webhook receiver started here, runs ``examples/shop.py``
against it, reads the stored events back through the collector's read API, prints them and
what the webhook received (signatures checked), stops the collector and exits 0 when
everything arrived. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
WRITE_KEY = "demo-write-key"
EXPECTED = 7
SECRET = "demo-secret"


class Webhook:
    """A webhook receiver on 127.0.0.1 that keeps each message whose signature checks out."""

    def __init__(self) -> None:
        self.messages: List[Dict[str, Any]] = []
        self.bad_signatures = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if hmac.compare_digest(expected, self.headers.get("X-Signature", "")):
                    hook.messages.append(json.loads(body))
                else:
                    hook.bad_signatures += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)


def write_config(path: Path, webhook_url: str) -> None:
    """The routing config: one source, the webhook, and a filter removing e-mail addresses."""
    path.write_text(
        f'[[sources]]\nname = "shop"\nwrite_keys = ["{WRITE_KEY}"]\n\n'
        f'[[destinations]]\nname = "Hooks"\ntype = "webhook"\nurl = "{webhook_url}"\n'
        f'secret = "{SECRET}"\n\n'
        '[[filters]]\ndestination = "Hooks"\ndrop_properties = ["email"]\n'
    )


def start_collector(db: Path, config: Path) -> tuple[subprocess.Popen[str], str]:
    """Run the collector as its own process; return it and its URL once it is listening."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tracklane.collector", "--port", "0"),
            *("--db", str(db), "--config", str(config)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "http://" in line:
            return proc, line[line.index("http://") :].strip()
    proc.kill()
    raise SystemExit("the collector did not start")


def read_events(url: str) -> List[Dict[str, Any]]:
    """What the collector stored, through its read API (newest first)."""
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    request = urllib.request.Request(
        f"{url}/v1/events?limit=100", headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.load(response)["events"])


def describe(event: Dict[str, Any]) -> str:
    kind = event["type"]
    if kind == "track":
        return str(event.get("event"))
    if kind in ("page", "screen"):
        return f"{event.get('category') or ''} / {event.get('name') or ''}".strip(" /")
    if kind == "identify":
        return ", ".join(f"{k}={v}" for k, v in (event.get("traits") or {}).items())
    if kind == "group":
        return f"group {event.get('groupId')}"
    if kind == "alias":
        return f"{event.get('previousId')} -> {event.get('userId')}"
    return ""


def print_table(events: List[Dict[str, Any]]) -> None:
    rows = [("type", "user", "what", "timestamp", "properties")]
    for e in reversed(events):
        props = e.get("properties") or {}
        shown = ", ".join(f"{k}={v!r}" for k, v in props.items() if k in ("revenue", "url"))
        rows.append(
            (
                e["type"],
                str(e.get("userId") or e.get("anonymousId")),
                describe(e)[:48],
                str(e.get("timestamp")),
                shown,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "demo-events.db"
        webhook = Webhook()
        write_config(Path(tmp) / "tracklane.toml", webhook.url)
        collector, url = start_collector(db, Path(tmp) / "tracklane.toml")
        print(f"collector: {url}  (database {db}, routing to the webhook {webhook.url})")
        print(f"debugger:  {url}/  (a live page of what arrives; `tracklane serve` keeps it up)")
        try:
            env = dict(os.environ, TRACKLANE_WRITE_KEY=WRITE_KEY, TRACKLANE_HOST=url)
            app = subprocess.run(
                [sys.executable, str(HERE / "shop.py")], env=env, timeout=60, check=False
            )
            events = read_events(url)
            print(f"\nthe collector stored {len(events)} events:\n")
            print_table(events)
            webhook.wait_for(len(events))
            emails = sum("email" in (m.get("traits") or {}) for m in webhook.messages)
            print(
                f"\nthe webhook received {len(webhook.messages)} messages, each signed "
                f"(X-Signature checked), with e-mail addresses filtered out ({emails} left)"
            )
        finally:
            collector.send_signal(signal.SIGTERM)
            code = collector.wait(timeout=15)
            if collector.stdout is not None:
                collector.stdout.close()
        print(f"\ncollector stopped (exit code {code})")
        webhook.server.shutdown()
        routed = len(webhook.messages) == EXPECTED and webhook.bad_signatures == 0
        ok = app.returncode == 0 and len(events) == EXPECTED and code == 0 and routed
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
