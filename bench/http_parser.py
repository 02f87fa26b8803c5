"""CPU per request of the HTTP/1.1 framing delivery uses: tracklane's parser against h11.

One iteration frames a POST of a 47 KB batch (head prepared once, as the transport does)
and parses the server's answer from bytes, as the drivers do after a read. No sockets:
this is the Python work a request costs the application's thread or event loop.

    .venv/bin/python bench/http_parser.py
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, List

import h11

from tracklane._http import ResponseParser

BODY = b'{"batch":[' + b",".join([b'{"event":"x","pad":"' + b"y" * 450 + b'"}'] * 100) + b"]}"
HEAD = (
    b"POST /v1/batch HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\n"
    b"User-Agent: tracklane/0\r\nAuthorization: Basic a2V5Og==\r\nConnection: keep-alive\r\n"
    b"Content-Length: "
)
OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n"
    b"Date: Sun, 29 Nov 2026 23:00:00 GMT\r\n\r\n"
    b'{"success":true}'
)
CHUNKED_400 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
    b"1a\r\n" + b'{"error":"bad message 17"}' + b"\r\n0\r\n\r\n"
)


def ours(answer: bytes) -> Callable[[], None]:
    parser = ResponseParser()

    def once() -> None:
        request = b"".join((HEAD, str(len(BODY)).encode("ascii"), b"\r\n\r\n", BODY))
        assert request
        parser.feed(answer)
        response = parser.next()
        assert response is not None
        assert response.keep_alive

    return once


def with_h11(answer: bytes) -> Callable[[], None]:
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", "api.example.com"),
        ("Content-Type", "application/json"),
        ("User-Agent", "tracklane/0"),
        ("Authorization", "Basic a2V5Og=="),
        ("Connection", "keep-alive"),
        ("Content-Length", str(len(BODY))),
    ]

    def once() -> None:
        # Framed as cheaply as h11 allows: the body passed through, one join.
        parts = [conn.send(h11.Request(method="POST", target="/v1/batch", headers=headers))]
        parts += conn.send_with_data_passthrough(h11.Data(data=BODY)) or []
        parts.append(conn.send(h11.EndOfMessage()))
        assert b"".join(p for p in parts if p)
        conn.receive_data(answer)
        body = b""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        conn.start_next_cycle()

    return once


def measure(fn: Callable[[], None], count: int = 20_000) -> float:
    start = time.process_time()
    for _ in range(count):
        fn()
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    rows: List[str] = []
    for name, answer in (("200 answer (16 bytes)", OK), ("chunked 400 answer", CHUNKED_400)):
        results = {"ResponseParser": [], "h11": []}  # type: ignore[var-annotated]
        for _ in range(5):  # interleaved, so that noise from other processes hits both
            results["ResponseParser"].append(measure(ours(answer)))
            results["h11"].append(measure(with_h11(answer)))
        mine = statistics.median(results["ResponseParser"])
        theirs = statistics.median(results["h11"])
        rows.append(
            f"{name:24} ResponseParser {mine:6.1f} µs   h11 {h11.__version__} {theirs:6.1f} µs"
            f"   ratio {theirs / mine:4.1f}x"
        )
    print("CPU per request (framing + answer parsing), median of 5 x 20,000:")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
