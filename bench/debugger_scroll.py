"""The debugger page with many stored events: time to first render, and scrolling.

Stores N events (default 50,000) straight into a collector database, serves it on a free
loopback port, opens the page in Debian's Chromium (headless, through Playwright) and
measures in the browser:

- first render: from navigation start to the first event row in the DOM;
- smooth scrolling: 240 frames of 140 px each, frame intervals (median, p95, max);
- history: jumps to the bottom until every event is loaded (pages of 1,000 from the
  store), the time this takes, and the longest main-thread task meanwhile;
- that the last row then shows the oldest event;
- live: how long after a POST is answered its row appears (10 events, one at a time).

    python bench/debugger_scroll.py --events 200000 --output result.json

Prints one JSON object. Exit code 0 when the oldest event was reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EVENT_NAMES = ["Product Viewed", "Cart Updated", "Checkout Started", "Order Completed"]

# Installed before the page's own script: records the first row and every long task.
INIT_SCRIPT = """
window.__perf = { firstRow: null, longTasks: [] };
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__perf.longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
new MutationObserver((_, observer) => {
  if (document.querySelector(".spacer .row")) {
    window.__perf.firstRow = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""

SMOOTH_SCROLL = """
async (step) => {
  const list = document.getElementById("list");
  const frames = [];
  let last = await new Promise(requestAnimationFrame);
  for (let i = 0; i < 240; i++) {
    list.scrollTop += step;
    const now = await new Promise(requestAnimationFrame);
    frames.push(now - last);
    last = now;
  }
  return frames;
}
"""

LOAD_ALL = """
async (total) => {
  const list = document.getElementById("list");
  const started = performance.now();
  let longestGap = 0;
  let last = performance.now();
  while (performance.now() - started < 120000) {
    list.scrollTop = list.scrollHeight;
    const now = await new Promise(requestAnimationFrame);
    longestGap = Math.max(longestGap, now - last);
    last = now;
    if (document.querySelectorAll(".spacer > .row").length && list.scrollHeight >= total * 28
        && !document.getElementById("counts").textContent.includes("older")) break;
  }
  list.scrollTop = list.scrollHeight;
  await new Promise(requestAnimationFrame);
  await new Promise(requestAnimationFrame);
  const rows = [...document.querySelectorAll(".spacer > .row:not([hidden])")];
  rows.sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top);
  const bottom = rows[rows.length - 1];
  return {
    ms: performance.now() - started,
    longestGap,
    lastRow: bottom ? bottom.querySelector(".name").textContent : null,
    scrollHeight: list.scrollHeight,
  };
}
"""


def seed(db: Path, count: int) -> str:
    """Store ``count`` realistic track events; return the oldest one's event name."""
    from tracklane.collector.storage import Storage, StoredMessage

    storage = Storage(db)
    try:
        for start in range(0, count, 5_000):
            rows: List[StoredMessage] = []
            for n in range(start, min(count, start + 5_000)):
                name = "The Oldest Event" if n == 0 else EVENT_NAMES[n % len(EVENT_NAMES)]
                message_id = str(uuid.UUID(int=n))
                body = {
                    "type": "track",
                    "event": name,
                    "userId": f"user-{n % 977}",
                    "messageId": message_id,
                    "properties": {"sku": f"SKU-{n % 311}", "price": n % 100 + 0.99, "n": n},
                    "context": {"library": {"name": "tracklane", "version": "0.1.0"}},
                }
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_700_000_000 + n))
                rows.append(
                    StoredMessage(
                        write_key="bench-key",
                        message_id=message_id,
                        type="track",
                        user_id=body["userId"],  # type: ignore[arg-type]
                        anonymous_id=None,
                        event=name,
                        received_at=f"{stamp}.000Z",
                        timestamp=f"{stamp}.000Z",
                        original_timestamp=None,
                        body=json.dumps(body, separators=(",", ":")),
                    )
                )
            storage.insert(rows)
    finally:
        storage.close()
    return "The Oldest Event"


SEEN_ROWS = """() => {
  window.__seen = {};
  const spacer = document.getElementById("spacer");
  new MutationObserver(() => {
    const now = performance.timeOrigin + performance.now();
    for (const cell of spacer.querySelectorAll(".name")) {
      if (!(cell.textContent in window.__seen)) window.__seen[cell.textContent] = now;
    }
  }).observe(spacer, { subtree: true, childList: true, characterData: true });
}"""


def live_latencies(page: Any, url: str, count: int = 10) -> List[float]:
    """Milliseconds from a stored POST's answer to its row in the page's DOM.

    Timed in the page (a MutationObserver's wall clock), not by Playwright's own waiting,
    which only notices changes on its next polling round.
    """
    import httpx

    page.evaluate("document.getElementById('list').scrollTop = 0")  # the newest rows in view
    page.evaluate(SEEN_ROWS)
    found: List[float] = []
    with httpx.Client(base_url=url, timeout=10) as http:
        for n in range(count):
            name = f"Live {n} {uuid.uuid4().hex[:6]}"
            message = {"type": "track", "event": name, "userId": "live"}
            http.post("/v1/track", json=message, auth=("bench-key", "")).raise_for_status()
            answered = time.time() * 1000
            deadline = time.monotonic() + 10
            seen = None
            while seen is None and time.monotonic() < deadline:
                seen = page.evaluate("(name) => window.__seen[name] ?? null", name)
                if seen is None:
                    page.wait_for_timeout(20)  # polling the page's own record, bounded
            if seen is None:
                raise RuntimeError(f"{name!r} did not appear within 10 s")
            found.append(seen - answered)
    return found


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(count: int, live: int = 10) -> Dict[str, Any]:
    """Run the scenario with ``count`` stored events; return the figures."""
    from playwright.sync_api import sync_playwright

    from tracklane.collector import serve_in_thread

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "events.db"
        started = time.perf_counter()
        oldest = seed(db, count)
        seed_s = time.perf_counter() - started
        with serve_in_thread(db) as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.add_init_script(INIT_SCRIPT)
                page.goto(server.url + "/")
                page.locator(".spacer .row").first.wait_for(state="attached", timeout=30_000)
                first_row_ms = page.evaluate("window.__perf.firstRow")
                idle = page.evaluate(SMOOTH_SCROLL, 0)
                frames = page.evaluate(SMOOTH_SCROLL, 140)
                loaded = page.evaluate(LOAD_ALL, count)
                long_tasks = page.evaluate("window.__perf.longTasks")
                latencies = live_latencies(page, server.url, max(1, live))
            finally:
                browser.close()
    return {
        "events": count,
        "seed_s": round(seed_s, 2),
        "first_row_ms": round(first_row_ms, 1),
        "idle_frame_ms": {
            "median": round(percentile(idle, 0.5), 1),
            "p95": round(percentile(idle, 0.95), 1),
        },
        "scroll_frame_ms": {
            "median": round(percentile(frames, 0.5), 1),
            "p95": round(percentile(frames, 0.95), 1),
            "max": round(max(frames), 1),
        },
        "load_all_ms": round(loaded["ms"], 1),
        "load_all_longest_frame_ms": round(loaded["longestGap"], 1),
        "long_tasks": len(long_tasks),
        "longest_task_ms": round(max(long_tasks, default=0.0), 1),
        "scroll_height_px": loaded["scrollHeight"],
        "live_ms": {
            "median": round(percentile(latencies, 0.5), 1),
            "max": round(max(latencies), 1),
        },
        "last_row": loaded["lastRow"],
        "reached_oldest": loaded["lastRow"] == oldest,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events stored (50,000)")
    parser.add_argument("--output", type=Path, help="also write the JSON result here")
    parser.add_argument("--live", type=int, default=10, help="live events timed one by one (10)")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        print(f"needs Chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2
    result = run(args.events, args.live)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0 if result["reached_oldest"] else 1


if __name__ == "__main__":
    sys.exit(main())
