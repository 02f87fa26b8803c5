"""tracklane.context(): scoped Segment context fields, local to threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, List

import pytest

import tracklane
from helpers import RecordingServer

LIBRARY = {"name": "tracklane", "version": tracklane.__version__}


@pytest.fixture
def stub() -> tracklane.Client:
    """A client that sends nothing; the messages it returns are what it would send."""
    return tracklane.Client("k", stub=True)


def test_no_scope_gives_only_the_library(stub: tracklane.Client) -> None:
    """Without a scope, context is just context.library, as before."""
    assert stub.track("u", "E", {})[1]["context"] == {"library": LIBRARY}
    assert stub.identify("u", {"a": 1}, context={"ip": "1.1.1.1"})[1]["context"] == {
        "ip": "1.1.1.1",
        "library": LIBRARY,
    }


def test_scope_fields_reach_every_message_type(stub: tracklane.Client) -> None:
    """Every call inside the scope gets its fields; the scope ends with the block."""
    with tracklane.context(ip="203.0.113.9", page={"path": "/cart"}) as scope:
        assert isinstance(scope, tracklane.context)
        messages = [
            stub.track("u", "E", {})[1],
            stub.identify("u", {})[1],
            stub.page("u", None, "Cart")[1],
            stub.screen("u", None, "Home")[1],
            stub.group("u", "g1")[1],
            stub.alias("old", "u")[1],
        ]
    for message in messages:
        assert message["context"] == {
            "ip": "203.0.113.9",
            "page": {"path": "/cart"},
            "library": LIBRARY,
        }
    assert stub.track("u", "E", {})[1]["context"] == {"library": LIBRARY}


def test_scopes_nest_and_merge_key_by_key(stub: tracklane.Client) -> None:
    """An inner scope merges over the outer one, inside mappings too; None removes a field."""
    with tracklane.context(ip="1.1.1.1", locale="en-GB", page={"path": "/a", "url": "u"}):
        with tracklane.context({"page": {"title": "A"}, "locale": None}, campaign={"name": "x"}):
            inner = stub.track("u", "E", {})[1]["context"]
        outer = stub.track("u", "E", {})[1]["context"]
    assert inner == {
        "ip": "1.1.1.1",
        "page": {"path": "/a", "url": "u", "title": "A"},
        "campaign": {"name": "x"},
        "library": LIBRARY,
    }
    assert outer == {
        "ip": "1.1.1.1",
        "locale": "en-GB",
        "page": {"path": "/a", "url": "u"},
        "library": LIBRARY,
    }


def test_explicit_context_wins_key_by_key_and_is_not_mutated(stub: tracklane.Client) -> None:
    """A call's own context= overrides the scope per key (and per key inside mappings)."""
    mine = {"ip": "9.9.9.9", "page": {"path": "/mine"}, "traits": {"plan": "pro"}}
    with tracklane.context(ip="1.1.1.1", page={"path": "/a", "url": "u"}, userAgent="ua"):
        context = stub.track("u", "E", {}, context=mine)[1]["context"]
    assert context == {
        "ip": "9.9.9.9",
        "page": {"path": "/mine", "url": "u"},
        "userAgent": "ua",
        "traits": {"plan": "pro"},
        "library": LIBRARY,
    }
    assert mine == {"ip": "9.9.9.9", "page": {"path": "/mine"}, "traits": {"plan": "pro"}}


def test_scope_snapshots_its_fields(stub: tracklane.Client) -> None:
    """Changing the dict given to context() afterwards changes nothing sent."""
    page = {"path": "/a", "tags": ["x"]}
    with tracklane.context(page=page):
        page["path"] = "/changed"
        page["tags"].append("y")  # type: ignore[attr-defined]
        first = stub.track("u", "E", {})[1]
        first["context"]["page"]["path"] = "/mutated-message"
        second = stub.track("u", "E", {})[1]
    assert second["context"]["page"] == {"path": "/a", "tags": ["x"]}


def test_scope_ids_are_defaults_for_calls_without_ids(stub: tracklane.Client) -> None:
    """user_id/anonymous_id of a scope fill calls that give none; a call's own ids win."""
    with tracklane.context(user_id=42, anonymous_id="anon-1"):
        bare = stub.track(event="E")[1]
        own = stub.track("me", "E", anonymous_id="anon-2")[1]
        with tracklane.context(page={"path": "/"}):
            nested = stub.page(name="Home")[1]
        with pytest.raises(tracklane.ValidationError, match="previous_id"):
            stub.alias(user_id="x")
    assert (bare["userId"], bare["anonymousId"]) == ("42", "anon-1")
    assert (own["userId"], own["anonymousId"]) == ("me", "anon-2")
    assert (nested["userId"], nested["anonymousId"]) == ("42", "anon-1")
    assert "user_id" not in bare["context"]
    with pytest.raises(tracklane.ValidationError, match="user_id"):
        stub.track(event="E")


def test_bad_scope_arguments_raise_naming_the_field() -> None:
    """A context that is not a mapping, or an id of the wrong type, is refused at once."""
    with pytest.raises(tracklane.ValidationError, match="context"):
        tracklane.context(["ip"])  # type: ignore[arg-type]
    with pytest.raises(tracklane.ValidationError, match="user_id"):
        tracklane.context(user_id=["u"])
    with pytest.raises(tracklane.ValidationError, match="anonymous_id"):
        tracklane.context(anonymous_id=True)


def test_decorator_opens_a_scope_per_call(stub: tracklane.Client) -> None:
    """As a decorator, each call (plain or async) runs inside the scope, and only then."""

    @tracklane.context(app={"name": "shop"})
    def plain() -> Dict[str, Any]:
        return stub.track("u", "E", {})[1]["context"]

    @tracklane.context(app={"name": "shop"})
    async def coroutine() -> Dict[str, Any]:
        await asyncio.sleep(0)
        return stub.track("u", "E", {})[1]["context"]

    assert plain() == {"app": {"name": "shop"}, "library": LIBRARY}
    assert asyncio.run(coroutine()) == {"app": {"name": "shop"}, "library": LIBRARY}
    assert plain.__name__ == "plain"
    assert stub.track("u", "E", {})[1]["context"] == {"library": LIBRARY}


def test_one_scope_object_can_be_entered_twice(stub: tracklane.Client) -> None:
    """Re-entering the same scope object nests, and leaving restores each level."""
    scope = tracklane.context(ip="1.1.1.1")
    with scope, tracklane.context(locale="de"), scope:
        assert stub.track("u", "E")[1]["context"]["locale"] == "de"
    assert stub.track("u", "E")[1]["context"] == {"library": LIBRARY}


def test_scopes_never_leak_between_threads(make_client: Any, server: RecordingServer) -> None:
    """Threads whose scopes are all open at once each send only their own context."""
    client = make_client(flush_interval=60)
    threads, rounds = 8, 25
    barrier = threading.Barrier(threads)
    seen_outside: List[Dict[str, Any]] = []

    def work(n: int) -> None:
        for j in range(rounds):
            request = f"t{n}-{j}"
            with tracklane.context(request={"id": request}, user_id=f"user-{n}"):
                barrier.wait(10)  # every thread is inside its own scope now
                client.track(event="Step", properties={"request": request})
                barrier.wait(10)
        seen_outside.append(client.track("x", "After", {})[1]["context"])

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    with tracklane.context(request={"id": "main"}):
        for worker in workers:
            worker.start()  # a thread started inside a scope does not inherit it
        for worker in workers:
            worker.join(30)
    assert client.flush(10)
    events = [m for m in server.accepted() if m["event"] == "Step"]
    assert len(events) == threads * rounds
    for event in events:
        request = event["properties"]["request"]
        assert event["context"]["request"]["id"] == request
        assert event["userId"] == "user-" + request[1 : request.index("-")]
    assert all(context == {"library": LIBRARY} for context in seen_outside)


def test_scopes_never_leak_between_asyncio_tasks(make_client: Any, server: RecordingServer) -> None:
    """Interleaved tasks each send their own context; a child task's scope stays its own."""
    client = make_client(flush_interval=60)
    tasks, rounds = 20, 10

    async def handle(n: int, j: int, everyone_in: asyncio.Event, count: List[int]) -> None:
        request = f"t{n}-{j}"
        with tracklane.context(request={"id": request}, user_id=f"user-{n}"):
            count[0] += 1
            if count[0] == tasks:
                everyone_in.set()
            await everyone_in.wait()  # every task is inside its own scope now

            async def child() -> None:
                with tracklane.context(child=True):
                    await asyncio.sleep(0)
                    client.track(event="Child", properties={"request": request})

            await asyncio.create_task(child())  # a task inherits a copy of the scope
            client.track(event="Step", properties={"request": request})

    async def main() -> None:
        for j in range(rounds):
            everyone_in = asyncio.Event()
            count = [0]
            await asyncio.gather(*(handle(n, j, everyone_in, count) for n in range(tasks)))

    asyncio.run(main())
    assert client.flush(10)
    events = server.accepted()
    assert len(events) == 2 * tasks * rounds
    for event in events:
        request = event["properties"]["request"]
        assert event["context"]["request"]["id"] == request
        assert event["userId"] == "user-" + request[1 : request.index("-")]
        assert ("child" in event["context"]) == (event["event"] == "Child")
