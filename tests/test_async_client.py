"""What only AsyncClient has: the loop binding, deliver-now, exit and loop-close delivery.

The shared behaviour (wire format, delivery rules, retries, faults, lifecycle, stats
identity, on_error) is tested on both clients by the modules marked ``both_clients``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import threading
import time
from typing import Any, List

import pytest

import tracklane
from helpers import Action, RecordingServer, run_script
from tracklane.exceptions import ConfigurationError, RetriesExhaustedError, ShutdownError

CALLS = ("track", "identify", "page", "screen", "group", "alias")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(server: RecordingServer, **options: Any) -> tracklane.AsyncClient:
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_cap", 0.05)
    return tracklane.AsyncClient("k", host=server.url, **options)


def test_same_signatures_as_client():
    """The six calls and the constructor take exactly Client's parameters."""
    for name in CALLS:
        sync = inspect.signature(getattr(tracklane.Client, name))
        assert inspect.signature(getattr(tracklane.AsyncClient, name)) == sync
        assert inspect.signature(getattr(tracklane._aio_client.DeliverNow, name)) == sync
    sync_init = list(inspect.signature(tracklane.Client).parameters)
    assert list(inspect.signature(tracklane.AsyncClient).parameters) == sync_init


@pytest.mark.parametrize(
    ("options", "key"), [({"sync_mode": True}, "sync_mode"), ({"overflow": "block"}, "overflow")]
)
def test_options_that_would_block_the_loop_are_refused(options, key):
    """sync_mode and overflow='block' are a ConfigurationError naming the option."""
    with pytest.raises(ConfigurationError, match=key):
        tracklane.AsyncClient("k", host="http://127.0.0.1:9", **options)


def test_bad_options_are_refused_like_client():
    """Validation of options is Client's: the same error for the same mistake."""
    with pytest.raises(ConfigurationError, match="batch_size"):
        tracklane.AsyncClient("k", batch_size=0)
    with pytest.raises(ConfigurationError, match="write_key"):
        tracklane.AsyncClient("")


@pytest.mark.anyio
async def test_async_with_delivers_and_results_match_client(server):
    """Calls return (True, message) at once; leaving `async with` delivers them all."""
    async with make(server, flush_interval=60) as client:
        ok, message = client.track("u1", "Signed Up", {"plan": "pro"})
        assert ok is True
        assert message["event"] == "Signed Up"
        client.identify("u1", {"email": "a@b.c"})
        with pytest.raises(tracklane.ValidationError, match="event"):
            client.track("u1", "")
        assert server.requests == []  # nothing sent before flush_interval or shutdown
    assert [m["type"] for m in server.accepted()] == ["track", "identify"]
    stats = client.stats()
    assert (stats.tracked, stats.delivered, stats.pending) == (2, 2, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("gzip", [False, True])  # True: 25 KB bodies, gzipped in a thread
async def test_busy_loop_answers_settled_in_the_socket_callback_arrive_once(
    server, monkeypatch, gzip
):
    """With the app keeping the loop busy, answers settled in the socket callback (the next
    batch written in the same turn) still follow the rules: 500s retried, a 400 split, every
    event once and in order, stats consistent."""
    from tracklane import _aio_worker

    written_in_callback = []
    follow = _aio_worker.AsyncPipeline._follow

    def counting(self: Any, result: Any) -> Any:
        following = follow(self, result)
        written_in_callback.append(following is not None)
        return following

    monkeypatch.setattr(_aio_worker.AsyncPipeline, "_follow", counting)
    faults = {3: Action(status=500), 6: Action(status=400), 7: Action(status=503)}
    seen = []

    def decide(_body: Any) -> Action:
        seen.append(1)
        return faults.get(len(seen), Action())

    server.decide = decide
    client = make(server, batch_size=50, flush_interval=60, gzip=gzip)
    padding = "x" * 500 if gzip else ""
    for turn in range(40):  # 2,000 calls, 50 per loop turn, as request handlers make them
        for i in range(turn * 50, turn * 50 + 50):
            client.track("u", "E", {"i": i, "padding": padding})
        await asyncio.sleep(0)
    assert await client.flush(20)
    values = [m["properties"]["i"] for m in server.accepted()]
    assert values == list(range(2000)), "each event once, in the order tracked"
    stats = client.stats()
    assert (stats.delivered, stats.pending, stats.dropped, stats.retries) == (2000, 0, {}, 2)
    assert any(written_in_callback), "no batch was written from the socket callback"
    await client.shutdown(2)


@pytest.mark.anyio
async def test_flush_returns_a_flush_result(server):
    """await flush(timeout) gives a truthy FlushResult when done, a falsy one at its timeout."""
    client = make(server, flush_interval=60)
    client.track("u", "E")
    result = await client.flush(5)
    assert isinstance(result, tracklane.FlushResult)
    assert result
    assert result.stats.delivered == 1
    server.default = Action(hang=True)
    client.track("u", "Stuck")
    started = time.monotonic()
    result = await client.flush(0.3)
    assert not result
    assert result.pending == 1
    assert time.monotonic() - started < 2
    server.release.set()
    await client.shutdown(2)


def test_created_outside_a_loop_binds_to_the_loop_of_first_use(server):
    """A client made at import time queues calls made without a loop, and delivers on first use."""
    client = make(server, flush_interval=60)
    client.track("u", "Before any loop")  # no loop running: queued, nothing can send yet

    async def main() -> tracklane.FlushResult:
        client.track("u", "In the loop")
        return await client.flush(5)

    assert asyncio.run(main())
    assert sorted(m["event"] for m in server.accepted()) == ["Before any loop", "In the loop"]
    asyncio.run(client.shutdown(2))


def test_messages_left_when_a_loop_closes_go_with_the_next_loop(server):
    """asyncio.run ending with messages queued loses nothing: the next loop delivers them."""
    client = make(server, flush_interval=60)

    async def first() -> None:
        for i in range(5):
            client.track("u", "First loop", {"i": i})

    asyncio.run(first())  # the loop closes; its task is cancelled with 5 messages queued
    assert client.stats().pending == 5

    async def second() -> tracklane.FlushResult:
        return await client.shutdown(5)

    assert asyncio.run(second())
    assert len(server.accepted()) == 5
    assert client.stats().delivered == 5


def test_in_flight_batch_goes_back_when_its_loop_closes(server):
    """A request cut off by its loop closing is sent again on the next loop (same messageIds)."""
    server.respond(Action(delay=1.0))
    client = make(server, flush_interval=0)
    arrived = threading.Event()

    async def first() -> None:
        client.track("u", "Cut off")
        deadline = time.monotonic() + 5
        while not server.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        arrived.set()

    asyncio.run(first())
    assert arrived.is_set()
    assert client.stats().pending == 1

    assert asyncio.run(client.shutdown(5))
    ids = {m["messageId"] for m in server.wait_for(2, timeout=5)}
    assert len(ids) == 1  # delivered at least once, always with the same id
    assert client.stats().delivered == 1


def test_calls_from_other_threads_are_safe(server):
    """Threads tracking while the loop delivers: every event arrives exactly once."""
    client = make(server, batch_size=50, flush_interval=0.05)

    async def main() -> tracklane.FlushResult:
        client.track("u", "From the loop")

        def worker(n: int) -> None:
            for i in range(250):
                client.track("u", "From a thread", {"t": n, "i": i})

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
        return await client.shutdown(10)

    assert asyncio.run(main())
    got = server.accepted()
    assert len(got) == 1001
    assert len({m["messageId"] for m in got}) == 1001
    stats = client.stats()
    assert stats.tracked == stats.delivered == 1001


@pytest.mark.anyio
async def test_deliver_now_sends_inside_the_call(server):
    """await client.deliver.track(...) returns (True, message) once the server has it."""
    client = make(server)
    ok, message = await client.deliver.track("u", "Paid", {"amount": 3})
    assert ok is True
    assert [m["messageId"] for m in server.accepted()] == [message["messageId"]]
    assert client.stats().delivered == 1
    await client.shutdown(2)


@pytest.mark.anyio
async def test_deliver_now_never_raises_on_network_trouble(server):
    """A failing or unreachable server gives (False, message), on_error and a count."""
    errors: List[BaseException] = []
    server.default = Action(status=503)
    client = make(server, max_retries=1, on_error=lambda e, b: errors.append(e))
    ok, _ = await client.deliver.identify("u", {"x": 1})
    assert ok is False
    assert isinstance(errors[0], RetriesExhaustedError)
    refused = tracklane.AsyncClient(
        "k", host="http://127.0.0.1:9", max_retries=0, on_error=lambda e, b: errors.append(e)
    )
    ok, _ = await refused.deliver.track("u", "Nowhere")
    assert ok is False
    assert refused.stats().dropped == {"retries_exhausted": 1}
    with pytest.raises(tracklane.ValidationError):
        client.deliver.track(None, "No user")  # a bad call still raises, at the call
    await client.shutdown(1)
    await refused.shutdown(1)


@pytest.mark.anyio
async def test_deliver_now_after_shutdown_is_refused_and_counted(server):
    """After shutdown, deliver-now returns False, reports ShutdownError and counts it."""
    errors: List[BaseException] = []
    client = make(server, on_error=lambda e, b: errors.append(e))
    await client.shutdown(1)
    ok, _ = await client.deliver.track("u", "Late")
    assert ok is False
    assert isinstance(errors[0], ShutdownError)
    assert client.stats().dropped == {"shutdown": 1}


@pytest.mark.anyio
async def test_on_error_may_track_again(server):
    """on_error runs on the loop and may call track() on its own client."""
    server.statuses(400)

    def on_error(exc: BaseException, batch: List[dict]) -> None:
        client.track("u", "Reported", {"bad": batch[0]["event"]})

    client = make(server, on_error=on_error)
    client.track("u", "Bad")
    assert await client.flush(5)
    assert await client.flush(5)
    assert [m["event"] for m in server.accepted()] == ["Reported"]
    await client.shutdown(1)


def test_script_that_never_shuts_down_still_delivers_at_exit(server):
    """asyncio.run returns with messages queued; the exit hook delivers them without a loop."""
    result = run_script(
        f"""
        import asyncio, tracklane
        client = tracklane.AsyncClient("k", host={server.url!r}, flush_interval=60)
        async def main():
            for i in range(30):
                client.track("u", "Exit", {{"i": i}})
        asyncio.run(main())
        """
    )
    assert result.returncode == 0, result.stderr
    assert len(server.wait_for(30, timeout=10)) == 30


def test_exit_delivery_is_bounded_and_counts_the_rest(server):
    """Against a hanging server, the exit hook gives up after shutdown_timeout and says so."""
    server.default = Action(hang=True)
    started = time.monotonic()
    result = run_script(
        f"""
        import asyncio, tracklane
        client = tracklane.AsyncClient(
            "k", host={server.url!r}, flush_interval=60, shutdown_timeout=1, timeout=30
        )
        async def main():
            client.track("u", "Stuck")
        asyncio.run(main())
        """
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert "dropped 1 message(s), reason shutdown" in result.stderr
    server.release.set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_delivers_its_own_on_its_own_loop(server):
    """After fork the child starts empty and delivers on its own loop; the parent keeps its own."""
    result = run_script(
        f"""
        import asyncio, os, sys, tracklane
        client = tracklane.AsyncClient("k", host={server.url!r}, flush_interval=60)
        async def before():
            client.track("u", "Parent before")
        asyncio.run(before())
        pid = os.fork()
        if pid == 0:
            async def child():
                client.track("u", "Child")
                ok = await client.flush(10)
                s = client.stats()
                return ok and s.tracked == 1 and s.delivered == 1
            os._exit(0 if asyncio.run(child()) else 3)
        async def parent():
            client.track("u", "Parent after")
            return await client.shutdown(10)
        ok = asyncio.run(parent())
        _, status = os.waitpid(pid, 0)
        sys.exit(0 if ok and os.waitstatus_to_exitcode(status) == 0 else 4)
        """
    )
    assert result.returncode == 0, result.stderr
    events = sorted(m["event"] for m in server.wait_for(3, timeout=5))
    assert events == ["Child", "Parent after", "Parent before"]


@pytest.mark.anyio
async def test_durable_queue_keeps_what_is_left_for_the_next_process(server, tmp_path):
    """With queue_path, what shutdown could not send stays on disk and a later client sends it."""
    path = str(tmp_path / "async.db")
    server.default = Action(status=503)
    client = make(server, queue_path=path, max_retries=100_000, flush_interval=0)
    for i in range(20):
        client.track("u", "Durable", {"i": i})
    await client.shutdown(0.5)
    assert client.stats().dropped == {}
    server.default = Action()
    later = make(server, queue_path=path)
    assert later.stats().recovered == 20
    assert await later.flush(10)
    assert sorted(m["properties"]["i"] for m in server.accepted()) == list(range(20))
    await later.shutdown(2)


@pytest.mark.anyio
async def test_stub_validates_and_sends_nothing(server):
    """stub=True validates and counts but sends nothing; no exit hook is registered."""
    client = make(server, stub=True)
    assert client.track("u", "E")[0] is True
    assert (await client.deliver.track("u", "Now"))[0] is True
    assert await client.flush(1)
    assert client.stats().delivered == 2
    assert server.requests == []


@pytest.mark.anyio
async def test_capturing_async_client_records_calls_at_once():
    """tracklane.testing.CapturingAsyncClient captures each call before it returns."""
    from tracklane.testing import CapturingAsyncClient

    client = CapturingAsyncClient()
    client.track("u1", "Signed Up", {"plan": "pro"})
    client.events.assert_tracked("Signed Up", user_id="u1", properties={"plan": "pro"})
    ok, _ = await client.deliver.track("u1", "Paid")
    assert ok is True
    assert [m["event"] for m in client.events.tracked()] == ["Signed Up", "Paid"]
    with pytest.raises(tracklane.ValidationError):
        client.track("u1", None)
    stats = client.stats()
    assert (stats.tracked, stats.delivered) == (2, 2)
    await client.shutdown(1)


def test_importing_tracklane_does_not_import_asyncio():
    """Programs that only use Client do not pay for asyncio: AsyncClient loads on first use."""
    code = (
        "import sys, tracklane; assert 'asyncio' not in sys.modules; "
        "assert tracklane.AsyncClient.__name__ == 'AsyncClient'; assert 'asyncio' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
