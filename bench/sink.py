"""A minimal, fast HTTP/1.1 keep-alive sink for the benchmark (127.0.0.1 only).

It answers ``200 {}`` to every POST and counts the events it receives: the body is
decoded (gzip/deflate), JSON-parsed, and the length of its ``batch`` list is added to
the count whatever the path (Segment and RudderStack post ``{"batch": [...]}`` to
``/v1/batch``; PostHog posts ``{"api_key": ..., "batch": [...]}`` to ``/batch/``).

Control endpoints, on the same port, under ``/_bench/``:

* ``POST /_bench/reset?hang=0|1``: zero the counters; ``hang=1`` switches to
  "never answer" mode (requests are read, counted as ``hung``, and never answered).
* ``GET /_bench/stats``: the counters as JSON.
* ``GET /_bench/wait?events=N&timeout=S``: long-poll until N events were counted
  (or S seconds passed), then the counters. One request, so the measuring process
  spends no CPU polling.
* ``GET /_bench/sample``: the first item of the last batch received (to check how
  each library serialised the event).

The process exits by itself when its parent process goes away or after
``--max-seconds``. It is deliberately dependency-free (orjson is used when present).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import sys
import time
import zlib
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

try:  # orjson parses the bodies faster; the sink must not be the bottleneck.
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the interpreter
    _loads = json.loads

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_MAX_HEADER = 64 * 1024


class SinkState:
    def __init__(self) -> None:
        self.hang = False
        self.events = 0
        self.requests = 0
        self.body_bytes = 0
        self.unparsed = 0
        self.hung = 0
        self.paths: dict[str, int] = {}
        self.encodings: dict[str, int] = {}
        self.first_at: Optional[float] = None
        self.last_at: Optional[float] = None
        self.sample: Any = None
        self.changed = asyncio.Event()

    def reset(self, hang: bool) -> None:
        self.hang = hang
        self.events = 0
        self.requests = 0
        self.body_bytes = 0
        self.unparsed = 0
        self.hung = 0
        self.paths = {}
        self.encodings = {}
        self.first_at = None
        self.last_at = None
        self.sample = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "hang": self.hang,
            "events": self.events,
            "requests": self.requests,
            "body_bytes": self.body_bytes,
            "unparsed": self.unparsed,
            "hung": self.hung,
            "paths": dict(self.paths),
            "encodings": dict(self.encodings),
            "first_at": self.first_at,
            "last_at": self.last_at,
        }

    def record(self, path: str, encoding: str, body: bytes) -> None:
        now = time.monotonic()
        self.requests += 1
        self.body_bytes += len(body)
        self.paths[path] = self.paths.get(path, 0) + 1
        self.encodings[encoding or "identity"] = self.encodings.get(encoding or "identity", 0) + 1
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            doc = _loads(body)
        except Exception:
            self.unparsed += 1
            return
        batch = doc.get("batch") if isinstance(doc, dict) else doc
        if isinstance(batch, list):
            self.events += len(batch)
            if batch:
                self.sample = batch[0]
        else:
            self.unparsed += 1
            return
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.changed.set()


def _json_response(obj: Any) -> bytes:
    payload = json.dumps(obj, default=str).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailers (if any) end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


async def _control(state: SinkState, method: str, target: str) -> bytes:
    parts = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    name = parts.path[len("/_bench/") :].strip("/")
    if name == "reset":
        state.reset(hang=query.get("hang", "0") == "1")
        return _json_response(state.snapshot())
    if name == "stats":
        return _json_response(state.snapshot())
    if name == "sample":
        return _json_response({"sample": state.sample})
    if name == "wait":
        want = int(query.get("events", "0"))
        deadline = time.monotonic() + float(query.get("timeout", "30"))
        while state.events < want:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            state.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.changed.wait(), min(remaining, 0.5))
        snap = state.snapshot()
        snap["reached"] = state.events >= want
        return _json_response(snap)
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


async def _handle(
    state: SinkState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = [*lines[0].split(" ", 2), "", ""][:3]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    key, value = line.split(":", 1)
                    headers[key.strip().lower()] = value.strip()
            body = await _read_body(reader, headers)
            if target.startswith("/_bench/"):
                writer.write(await _control(state, method, target))
            elif state.hang:
                # "Never answer": hold the request open until the client goes away.
                state.hung += 1
                with contextlib.suppress(Exception):
                    while await reader.read(65536):
                        pass
                return
            else:
                if method == "POST":
                    path = urlsplit(target).path
                    state.record(path, headers.get("content-encoding", "").lower(), body)
                writer.write(_OK)
            if headers.get("connection", "").lower() == "close":
                await writer.drain()
                return
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _watchdog(ppid: int, max_seconds: float) -> None:
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        if ppid and os.getppid() != ppid:
            break
        await asyncio.sleep(0.5)
    os._exit(0)


async def _main(port: int, ppid: int, max_seconds: float) -> None:
    state = SinkState()
    server = await asyncio.start_server(
        lambda r, w: _handle(state, r, w), host="127.0.0.1", port=port, limit=_MAX_HEADER
    )
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    watchdog = asyncio.ensure_future(_watchdog(ppid, max_seconds))
    async with server:
        await watchdog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ppid", type=int, default=0, help="exit when this parent goes away")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args()
    asyncio.run(_main(args.port, args.ppid, args.max_seconds))


if __name__ == "__main__":
    main()
