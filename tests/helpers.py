"""A small scriptable HTTP server on 127.0.0.1 that records what clients send; free ports,
waiting for a server process to listen, and running a script in a fresh interpreter."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional


@dataclass
class Received:
    """One request as the server saw it."""

    path: str
    headers: Dict[str, str]
    raw: bytes
    body: bytes
    json: Any
    status: int
    at: float = 0.0

    @property
    def batch(self) -> List[Dict[str, Any]]:
        return list(self.json["batch"]) if isinstance(self.json, dict) else []


@dataclass
class Action:
    """How to answer one request: a status, a delay, hanging, or resetting the connection."""

    status: int = 200
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"success":true}'
    delay: float = 0.0
    hang: bool = False
    reset: bool = False
    close: bool = False  # close the connection after answering, without saying so


def _parse(handler: BaseHTTPRequestHandler, raw: bytes) -> Any:
    if handler.headers.get("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class RecordingServer:
    """Answers with scripted actions (then 200) and records every request."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.requests: List[Received] = []
        self.script: List[Action] = []
        self.default = Action()
        self.decide: Optional[Callable[[Any], Action]] = None
        # Looked at first, with the request's headers (lower-case names): an Action to answer
        # with, or None to go on with the script (used to check Authorization).
        self.gate: Optional[Callable[[Dict[str, str]], Optional[Action]]] = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        self._cond = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._handle(self)

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.url = f"https://localhost:{self.port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        arrived = time.monotonic()
        gated = None
        if self.gate is not None:
            gated = self.gate({k.lower(): v for k, v in handler.headers.items()})
        with self._cond:
            if gated is not None:
                action = gated
            elif self.script:
                action = self.script.pop(0)
            elif self.decide is not None:
                action = self.decide(_parse(handler, raw))
            else:
                action = self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if action.delay and action.reset:  # the answer is lost after a while
                time.sleep(action.delay)
            if action.reset:
                handler.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                handler.connection.close()
                handler.close_connection = True
                self._record(handler, raw, 0, arrived)
                return
            if action.hang:
                self.release.wait(30)
                handler.close_connection = True
                return
            if action.delay:
                time.sleep(action.delay)
            self._record(handler, raw, action.status, arrived)
            handler.send_response(action.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(action.body)))
            for key, value in action.headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(action.body)
            if action.close:
                handler.close_connection = True
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    def _record(
        self, handler: BaseHTTPRequestHandler, raw: bytes, status: int, arrived: float
    ) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        received = Received(handler.path, headers, raw, body, parsed, status, arrived)
        with self._cond:
            self.requests.append(received)
            self._cond.notify_all()

    def respond(self, *actions: Action) -> None:
        """Answer the next requests with ``actions``, in order."""
        with self._cond:
            self.script.extend(actions)

    def statuses(self, *codes: int, **headers: str) -> None:
        """Answer the next requests with these status codes."""
        self.respond(*(Action(status=c, headers=dict(headers)) for c in codes))

    def accepted(self) -> List[Dict[str, Any]]:
        """Messages of requests answered 2xx."""
        with self._cond:
            return [m for r in self.requests if 200 <= r.status < 300 for m in r.batch]

    def wait_for(self, count: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Wait until ``count`` messages were accepted (or the timeout), and return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [m for r in self.requests if 200 <= r.status < 300 for m in r.batch]
                remaining = deadline - time.monotonic()
                if len(got) >= count or remaining <= 0:
                    return got
                self._cond.wait(remaining)

    def reset(self) -> None:
        """Forget requests and scripted answers."""
        with self._cond:
            self.requests.clear()
            self.script.clear()
            self.default = Action()
            self.decide = None
            self.gate = None
            self.max_in_flight = 0

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    timeout: float,
    alive: Optional[Any] = None,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll until something accepts connections on ``port``, or fail at the deadline.

    ``alive`` (a ``Popen``) stops the wait early if the process serving the port died;
    ``output()`` (the process's log) is added to the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            pass
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"the server process exited with {alive.returncode}\n{output()}")
        assert time.monotonic() < deadline, (
            f"nothing listens on port {port} after {timeout}s\n{output()}"
        )
        # A failed connect to 127.0.0.1 returns at once: poll at a modest rate.
        threading.Event().wait(0.05)


def run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh Python process; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
