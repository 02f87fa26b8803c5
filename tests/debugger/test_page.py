"""The debugger page in a real browser: live rows, filters in the URL, pause, payload, refusals."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest

import tracklane
from tracklane.collector import CollectorServer, serve_in_thread

from .conftest import WRITE_KEY

pytest.importorskip("playwright", reason="the browser tests need playwright (the 'test' extra)")
from playwright.sync_api import expect

REPO = Path(__file__).resolve().parents[2]
PIP = (sys.executable, "-m", "pip", "-q")
ROWS = """() => [...document.querySelectorAll('.spacer > .row:not([hidden])')]
  .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top)
  .map((row) => ({
    name: row.querySelector('.name').textContent,
    type: row.querySelector('.type').textContent,
    user: row.querySelector('.user').textContent,
    status: row.querySelector('.status').textContent,
    rejected: row.classList.contains('rejected'),
  }))"""
RUBY_FLAGS = {
    "--writeKey",
    "--type",
    "--userId",
    "--anonymousId",
    "--event",
    "--name",
    "--properties",
    "--traits",
    "--context",
    "--integrations",
    "--groupId",
    "--previousId",
    "--timestamp",
    "--messageId",
    "--category",
    "--host",
}


def open_debugger(page: Any, query: str = "") -> None:
    page.goto("/" + query)
    expect(page.locator("#live")).to_have_text("live")


def rows(page: Any) -> List[Dict[str, Any]]:
    return list(page.evaluate(ROWS))


def names(page: Any) -> List[str]:
    return [row["name"] for row in rows(page)]


def row(page: Any, text: str) -> Any:
    return page.locator(".spacer > .row:not([hidden])", has_text=text)


def test_events_sent_with_the_client_appear_without_a_reload(
    page: Any, client: tracklane.Client
) -> None:
    """Events the client sends show up at the top of an open page within its poll interval."""
    client.track("ada", "Signed Up")
    client.flush()
    open_debugger(page)
    expect(row(page, "Signed Up")).to_have_count(1)
    for n in range(3):
        client.track("ada", f"Step {n}", {"n": n})
        client.flush()
        expect(row(page, f"Step {n}")).to_have_count(1)
    assert names(page) == ["Step 2", "Step 1", "Step 0", "Signed Up"]
    first = rows(page)[0]
    assert (first["type"], first["user"], first["status"]) == ("track", "ada", "stored")


def test_filters_are_kept_in_the_url_and_restored(
    page: Any, client: tracklane.Client, collector: CollectorServer
) -> None:
    """Filters narrow the list, live arrivals included, and the URL restores the same view."""
    client.identify("ada", {"email": "ada@example.com"})
    client.track("ada", "Order Completed", {"colour": "violet"})
    client.track("bob", "Order Completed", {"colour": "green"})
    client.track("ada", "Cart Viewed")
    client.flush()
    open_debugger(page)
    expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(4)
    page.select_option("select[name=type]", "track")
    page.fill("input[name=event]", "Order Completed")
    page.fill("input[name=user]", "ada")
    expect(page).to_have_url(re.compile(r"type=track&event=Order\+Completed&user=ada$"))
    expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(1)
    client.track("bob", "Order Completed", {"late": True})  # filtered out
    client.track("ada", "Order Completed", {"late": True})  # matches
    client.flush()
    expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(2)
    assert {(r["name"], r["user"]) for r in rows(page)} == {("Order Completed", "ada")}
    url = page.url
    page.reload()
    expect(page.locator("input[name=user]")).to_have_value("ada")
    expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(2)
    other = page.context.new_page()
    other.goto(url)
    expect(other.locator("select[name=type]")).to_have_value("track")
    expect(other.locator("input[name=event]")).to_have_value("Order Completed")
    expect(other.locator(".spacer > .row:not([hidden])")).to_have_count(2)
    other.goto(f"{collector.url}/?q=VIOLET")  # text search, any case
    expect(other.locator(".spacer > .row:not([hidden])")).to_have_count(1)
    expect(other.locator(".spacer > .row", has_text="ada")).to_have_count(1)
    other.close()


def test_pause_holds_arrivals_and_counts_them(page: Any, client: tracklane.Client) -> None:
    """While paused, new events wait and the button counts them; resume shows them at the top."""
    client.track("ada", "Before Pause")
    client.flush()
    open_debugger(page)
    expect(row(page, "Before Pause")).to_have_count(1)
    page.locator("#list").focus()
    page.keyboard.press("p")
    expect(page.locator("#pause")).to_have_attribute("aria-pressed", "true")
    for n in range(3):
        client.track("ada", f"While Paused {n}")
    client.flush()
    expect(page.locator("#pause")).to_have_text("Resume (3 new)")
    assert names(page) == ["Before Pause"]
    page.click("#pause")
    expect(page.locator("#pause")).to_have_text("Pause")
    expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(4)
    assert names(page) == ["While Paused 2", "While Paused 1", "While Paused 0", "Before Pause"]


def test_payload_view(page: Any, client: tracklane.Client, collector: CollectorServer) -> None:
    """A row opens the payload: pretty JSON (exact), three timestamps, copy as JSON or command."""
    properties = {
        "big": 2**70,
        "price": 12.5,
        "name": "Zoë ✓ it's",
        "html": "<img src=x onerror=window.__xss=1>",
        "nested": {"list": [1, None, True], "empty": {}},
    }
    client.track(
        "ada",
        "Order Completed",
        properties,
        context={"ip": "203.0.113.9"},
        integrations={"All": False, "Hooks": {"beta": True}},
        timestamp=datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc),
    )
    client.flush()
    [stored] = httpx.get(collector.url + "/v1/events").json()["events"]
    stored.pop("seq")
    open_debugger(page)
    page.locator("#list").focus()
    page.keyboard.press("ArrowDown")  # the keyboard selects and opens the first row
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text("track · Order Completed")
    shown = page.locator("#payload").text_content()
    assert shown == json.dumps(stored, indent=2, ensure_ascii=False)
    assert page.locator("#payload img, .spacer img").count() == 0
    assert page.evaluate("window.__xss") is None
    times = dict(
        zip(
            page.locator("#times dt").all_text_contents(),
            page.locator("#times dd").all_text_contents(),
        )
    )
    assert times["Sent"].startswith(stored["sentAt"])
    assert times["Received"] == stored["receivedAt"]
    assert times["Corrected"].startswith(stored["timestamp"])
    assert times["Client's timestamp"] == stored["originalTimestamp"]
    assert stored["originalTimestamp"].startswith("2024-03-01T10:00:00")
    expect(page.locator("#deliveries")).to_contain_text("once routing is configured")

    page.click("#copy-json")
    expect(page.locator("#copied")).to_have_text("JSON copied")
    assert json.loads(page.evaluate("navigator.clipboard.readText()")) == stored

    page.click("#copy-send")
    expect(page.locator("#copied")).to_have_text("Command copied")
    command = page.evaluate("navigator.clipboard.readText()")
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == ["tracklane", "send"]
    flags = dict(zip(argv[2::2], argv[3::2]))
    assert set(flags) <= RUBY_FLAGS
    assert flags["--writeKey"] == "$TRACKLANE_WRITE_KEY"
    assert (flags["--type"], flags["--userId"], flags["--event"]) == (
        "track",
        "ada",
        stored["event"],
    )
    assert json.loads(flags["--properties"]) == properties
    assert json.loads(flags["--context"]) == stored["context"]
    assert json.loads(flags["--integrations"]) == stored["integrations"]
    assert flags["--timestamp"] == stored["originalTimestamp"]
    assert flags["--messageId"] == stored["messageId"]
    assert flags["--host"] == collector.url

    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.locator("#list")).to_be_focused()


def test_delivery_statuses_fill_their_slot(page: Any, client: tracklane.Client) -> None:
    """When the API carries per-destination statuses (routing), row and payload show them."""

    def add_deliveries(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        for item in body["events"]:
            item["deliveries"] = {
                "Hooks": {"status": "delivered", "attempts": 1},
                "Warehouse": {"status": "failed", "attempts": 3, "lastError": "HTTP 500"},
            }
        route.fulfill(response=response, json=body)

    client.track("ada", "Routed")
    client.flush()
    page.route(re.compile(r"/debugger/api/events\?"), add_deliveries)
    open_debugger(page)
    expect(row(page, "Routed")).to_contain_text("1 delivered, 1 failed")
    row(page, "Routed").click()
    table = page.locator("#deliveries table")
    expect(table).to_contain_text("Warehouse")
    expect(table).to_contain_text("HTTP 500")
    page.unroute_all(behavior="ignoreErrors")  # a poll may be in the handler as the page closes


def test_payload_view_shows_each_destinations_delivery_status(browser: Any, tmp_path: Path) -> None:
    """With routing, an event's payload view lists delivered and dead-lettered destinations."""
    from routing.support import WebhookReceiver, config_of, destinations_status, wait_until

    good, bad = WebhookReceiver(), WebhookReceiver(status=400)
    config = config_of(
        {
            "destinations": [
                {"name": "Good", "type": "webhook", "url": good.url},
                {"name": "Bad", "type": "webhook", "url": bad.url},
            ]
        }
    )
    try:
        with serve_in_thread(tmp_path / "routed.db", config=config) as server:
            client = tracklane.Client(WRITE_KEY, host=server.url)
            client.track("ada", "Routed")
            client.flush()
            client.shutdown(timeout=5)
            assert good.wait_for_unique(1, 10) == 1
            wait_until(
                lambda: destinations_status(server.url)["Bad"]["deadLettered"] == 1, 10, "dead"
            )
            context = browser.new_context(base_url=server.url)
            page = context.new_page()
            errors: List[Any] = []
            page.on("pageerror", lambda error: errors.append(error))
            open_debugger(page)
            expect(row(page, "Routed")).to_contain_text("1 delivered, 1 dead-lettered")
            row(page, "Routed").click()
            table = page.locator("#deliveries table")
            expect(table.locator("tr", has_text="Good")).to_contain_text("delivered")
            expect(table.locator("tr", has_text="Bad")).to_contain_text("dead-lettered")
            expect(table.locator("tr", has_text="Bad")).to_contain_text("400")
            context.close()
            assert errors == [], f"JavaScript errors on the page: {errors}"
    finally:
        good.close()
        bad.close()


def test_rejected_messages_show_marked_with_their_reason(
    page: Any, collector: CollectorServer
) -> None:
    """Messages the collector refuses appear live, marked, and their payload gives the reason."""
    open_debugger(page)
    with httpx.Client(base_url=collector.url, auth=(WRITE_KEY, ""), timeout=10) as http:
        batch = [
            {"type": "track", "event": "Fine", "userId": "ada"},
            {"type": "track", "event": "Nobody"},
            {"type": "track", "event": "Huge", "userId": "ada", "properties": {"x": "y" * 40_000}},
        ]
        assert http.post("/v1/batch", json={"batch": batch}).json()["stored"] == 1
    expect(page.locator(".spacer > .row.rejected:not([hidden])")).to_have_count(2)
    expect(row(page, "Fine")).to_have_count(1)  # events and refusals arrive by separate polls
    statuses = [(r["name"], r["status"], r["rejected"]) for r in rows(page)]
    assert ("Nobody", "rejected: invalid", True) in statuses
    assert ("Fine", "stored", False) in statuses
    assert ("/v1/batch", "rejected: oversize", True) in statuses
    row(page, "Nobody").click()
    expect(page.locator("#reason")).to_contain_text("missing both 'userId' and 'anonymousId'")
    expect(page.locator("#reason")).to_contain_text("message 1 of the batch")
    expect(page.locator("#detail-title")).to_have_text("Rejected (invalid): Nobody")
    page.select_option("select[name=status]", "rejected")
    expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(2)
    expect(page).to_have_url(re.compile(r"status=rejected"))


def test_unknown_write_key_shows_to_a_keyed_reader(browser: Any, tmp_path: Path) -> None:
    """With write keys, the page asks for one; a mistyped key's requests show as refused."""
    with serve_in_thread(tmp_path / "keyed.db", ["key-production"]) as server:
        anonymous = browser.new_context()
        assert anonymous.request.get(server.url + "/").status == 401
        anonymous.close()
        context = browser.new_context(
            base_url=server.url, http_credentials={"username": "key-production", "password": ""}
        )
        page = context.new_page()
        open_debugger(page)
        typo = tracklane.Client("key-prodcution", host=server.url, max_retries=0)
        typo.track("ada", "Lost To A Typo")
        typo.flush()
        typo.shutdown(timeout=5)
        expect(page.locator(".spacer > .row.rejected:not([hidden])")).to_have_count(1)
        row(page, "/v1/batch").click()
        expect(page.locator("#reason")).to_contain_text("unknown write key")
        context.close()


def test_page_follows_a_collector_restart(browser: Any, tmp_path: Path) -> None:
    """The page says when the collector is gone, and picks up events and refusals after it
    restarts on the same address (refusal numbering restarts with the process)."""
    bad = {"batch": [{"type": "track", "event": "Nobody"}]}
    first = serve_in_thread(tmp_path / "events.db")
    host, port = first.host, first.port
    context = browser.new_context(base_url=first.url)
    page = context.new_page()
    with first:
        for _ in range(3):
            httpx.post(first.url + "/v1/batch", json=bad, auth=(WRITE_KEY, ""))
        open_debugger(page)
        expect(page.locator(".spacer > .row.rejected:not([hidden])")).to_have_count(3)
    expect(page.locator("#live")).to_contain_text("offline")
    with serve_in_thread(tmp_path / "events.db", host=host, port=port) as second:
        message = {"type": "track", "event": "After Restart", "userId": "ada"}
        httpx.post(second.url + "/v1/batch", json={"batch": [message, bad["batch"][0]]})
        expect(row(page, "After Restart")).to_have_count(1)
        expect(page.locator(".spacer > .row.rejected:not([hidden])")).to_have_count(1)
        expect(page.locator("#live")).to_have_text("live")
    context.close()


def test_keyboard_and_colour_schemes(
    browser: Any, client: tracklane.Client, collector: CollectorServer, tmp_path: Path
) -> None:
    """Keys move through rows, open the payload and search; light and dark schemes follow the
    system and stay readable (WCAG AA contrast)."""
    client.identify("ada", {"email": "ada@example.com", "plan": "pro"})
    client.group("ada", "acme", {"seats": 12})
    client.page("ada", "Docs", "Quickstart", {"path": "/docs/quickstart"})
    client.alias("anon-7", "ada")
    for n in range(5):
        client.track("ada", f"Event {n}", {"n": n, "plan": "pro"}, context={"ip": "203.0.113.9"})
    client.flush()
    nobody = {"batch": [{"type": "track", "event": "Nobody"}]}
    httpx.post(collector.url + "/v1/batch", json=nobody, auth=(WRITE_KEY, ""))
    contrasts = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(color_scheme=scheme, viewport={"width": 1280, "height": 720})
        page = context.new_page()
        page.goto(collector.url + "/")
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(10)
        page.locator("#list").focus()
        page.keyboard.press("j")
        expect(page.locator("#detail-title")).to_have_text("Rejected (invalid): Nobody")
        page.keyboard.press("ArrowDown")
        expect(page.locator("#detail-title")).to_have_text("track · Event 4")
        contrasts[scheme] = page.evaluate(CONTRAST)
        page.keyboard.press("k")
        expect(page.locator("#detail-title")).to_have_text("Rejected (invalid): Nobody")
        page.keyboard.press("End")
        expect(page.locator("#detail-title")).to_have_text("identify · ada@example.com")
        page.keyboard.press("Enter")
        expect(page.locator("#payload")).to_be_focused()
        page.keyboard.press("Escape")
        expect(page.locator("#detail")).to_be_hidden()
        page.keyboard.press("/")
        expect(page.locator("input[name=q]")).to_be_focused()
        page.keyboard.type("event 3")
        expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(1)
        page.keyboard.press("Escape")
        expect(page.locator("#list")).to_be_focused()
        page.keyboard.press("Home")
        expect(page.locator("#detail-title")).to_have_text("track · Event 3")
        page.locator("input[name=q]").fill("")
        expect(page.locator(".spacer > .row:not([hidden])")).to_have_count(10)
        page.locator(".spacer > .row", has_text="Event 3").click()
        expect(page.locator("#list")).to_be_focused()
        shot = tmp_path / f"debugger-{scheme}.png"
        page.screenshot(path=str(shot))
        _keep_screenshot(shot)
        context.close()
    light, dark = contrasts["light"], contrasts["dark"]
    assert light["background"] > 0.8 > 0.1 > dark["background"]  # relative luminance
    for scheme, found in contrasts.items():
        for name, ratio in found["ratios"].items():
            assert ratio >= 4.5, f"{name} contrast {ratio:.1f} in {scheme} mode"


def _keep_screenshot(shot: Path) -> None:
    """With TRACKLANE_UPDATE_SCREENSHOTS=1, copy the screenshot into docs/ (committed)."""
    if os.environ.get("TRACKLANE_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, REPO / "docs" / shot.name)


def test_assets_are_served_from_an_installed_wheel(tmp_path: Path) -> None:
    """The wheel carries the page's assets, and a collector installed from it serves them."""
    hatchling = pytest.importorskip("hatchling", reason="building the wheel needs hatchling")
    del hatchling
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), REPO],
        check=True,
        timeout=120,
        capture_output=True,
    )
    [wheel] = (tmp_path / "wheel").glob("tracklane-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    static = target / "tracklane" / "collector" / "debugger" / "static"
    assert {p.name for p in static.iterdir()} >= {"index.html", "debugger.js", "payload.js"}
    script = (
        "import sys, httpx, tracklane.collector as c\n"
        "from tracklane.collector import serve_in_thread\n"
        f"with serve_in_thread({str(tmp_path / 'w.db')!r}) as s:\n"
        "    print(c.__file__)\n"
        "    print(httpx.get(s.url + '/debugger/static/debugger.js').text == "
        f"open({str(static / 'debugger.js')!r}).read())\n"
        "    print(httpx.get(s.url + '/').status_code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out[0].startswith(str(target))
    assert out[1:] == ["True", "200"]


def test_50k_stored_events_load_and_scroll(tmp_path: Path) -> None:
    """50,000 stored events: first rows render, scrolling keeps frames coming, history reaches
    the oldest event. The figures are printed (see docs/debugger.md); only a freeze fails."""
    output = tmp_path / "scroll.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "debugger_scroll.py"),
            *("--events", "50000"),
            *("--output", str(output)),
            *("--live", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if proc.returncode == 2:
        pytest.skip(proc.stderr.strip())
    assert output.exists(), proc.stdout + proc.stderr
    figures = json.loads(output.read_text())
    print("debugger with 50,000 events:", json.dumps(figures))
    assert figures["reached_oldest"], figures
    assert figures["scroll_height_px"] == 50_000 * 28
    # A freeze, not a speed target: no frame of the scroll may take seconds.
    assert figures["scroll_frame_ms"]["max"] < 2_000, figures
    assert figures["load_all_longest_frame_ms"] < 2_000, figures
    assert figures["live_ms"]["max"] < 5_000, figures  # live rows keep coming with 50,000 loaded


# WCAG relative luminance and contrast ratios of the page's text against its backgrounds.
CONTRAST = """() => {
  const rgb = (css) => css.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const channel = (v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  const lum = (c) => {
    const [r, g, b] = c.map(channel);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => {
    const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const style = (selector) => getComputedStyle(document.querySelector(selector));
  const bg = rgb(getComputedStyle(document.body).backgroundColor);
  const panel = rgb(style('.json').backgroundColor);
  return {
    background: lum(bg),
    ratios: {
      text: ratio(rgb(style('.spacer > .row:not(.rejected)').color), bg),
      muted: ratio(rgb(style('.row.head').color), bg),
      rejected: ratio(rgb(style('.spacer > .row.rejected').color), bg),
      jsonKey: ratio(rgb(style('.j-key').color), panel),
      jsonString: ratio(rgb(style('.j-str').color), panel),
      jsonNumber: ratio(rgb(style('.j-num').color), panel),
    },
  };
}"""
