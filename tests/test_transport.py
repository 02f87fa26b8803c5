"""The HTTP layer: TLS always verified, proxies, stale keep-alive connections, deadlines."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from typing import Iterator, List

import pytest
import trustme

import tracklane
from helpers import Action, RecordingServer
from tracklane import _aio_http, _transport
from tracklane.exceptions import TransportError

pytestmark = pytest.mark.both_clients


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[RecordingServer]:
    """A recording server speaking HTTPS with a certificate for localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    srv = RecordingServer(tls=context)
    yield srv
    srv.close()


def test_https_with_a_ca_bundle(tls_server, ca, tmp_path, make_client):
    """With the server's CA given as ca_bundle, batches go over verified TLS."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    client = make_client(host=tls_server.url, ca_bundle=str(bundle))
    client.track("u", "Secure")
    assert client.flush(timeout=10)
    client.shutdown()
    assert [m["event"] for m in tls_server.accepted()] == ["Secure"]


def test_unknown_certificate_is_refused(tls_server, make_client):
    """A certificate the client cannot verify is never accepted: nothing is sent."""
    errors: List[BaseException] = []
    client = make_client(host=tls_server.url, max_retries=0, on_error=lambda e, b: errors.append(e))
    client.track("u", "Insecure")
    assert client.flush(timeout=10)
    client.shutdown()
    assert tls_server.accepted() == []
    assert isinstance(errors[0].__cause__, TransportError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(errors[0])


def test_plain_http_proxy_gets_absolute_uri_and_credentials(server, make_client):
    """An http:// target through an http proxy: absolute URI, Proxy-Authorization."""
    proxy = RecordingServer()
    try:
        client = make_client(
            host="http://10.255.255.1:8080",
            proxies={"http": f"http://ann:pw@127.0.0.1:{proxy.port}"},
        )
        client.track("u", "Proxied")
        assert client.flush(timeout=10)
        client.shutdown()
        (request,) = proxy.requests
        assert request.path == "http://10.255.255.1:8080/v1/batch"
        assert request.headers["proxy-authorization"] == "Basic YW5uOnB3"
        assert request.batch[0]["event"] == "Proxied"
    finally:
        proxy.close()


class ConnectProxy:
    """A minimal CONNECT proxy on 127.0.0.1 that records the tunnels it opens."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: List[str] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        text = head.decode("latin-1")
        self.requests.append(text)
        host, port = text.split()[1].rsplit(":", 1)
        upstream = socket.create_connection(
            ("127.0.0.1" if host == "localhost" else host, int(port))
        )
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.stopped = True
        self.listener.close()


def test_https_through_a_connect_tunnel(tls_server, ca, tmp_path, make_client):
    """An https:// target through an http proxy goes through CONNECT, TLS end to end."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    proxy = ConnectProxy()
    try:
        client = make_client(
            host=tls_server.url, ca_bundle=str(bundle), proxies=f"127.0.0.1:{proxy.port}"
        )
        client.track("u", "Tunneled")
        assert client.flush(timeout=10)
        client.shutdown()
    finally:
        proxy.close()
    assert proxy.requests[0].startswith(f"CONNECT localhost:{tls_server.port} HTTP/1.")
    assert [m["event"] for m in tls_server.accepted()] == ["Tunneled"]


def test_https_proxy_urls_are_refused_clearly():
    """An https:// proxy URL is a ConfigurationError naming proxies."""
    with pytest.raises(tracklane.ConfigurationError, match="proxies"):
        tracklane.Client("k", host="https://api.example", proxies="https://proxy:3128")


def test_environment_proxies(monkeypatch):
    """HTTPS_PROXY applies unless NO_PROXY matches; loopback targets are never proxied."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "skip.example")
    assert _transport._proxy_for("https", "api.segment.io", None) == "http://proxy.internal:3128"
    assert _transport._proxy_for("https", "skip.example", None) is None
    assert _transport._proxy_for("https", "127.0.0.1", None) is None
    assert _transport._proxy_for("https", "x", {"https": "http://p:1"}) == "http://p:1"


def test_idle_connection_closed_by_the_server_is_reopened_silently(
    server, make_client, monkeypatch
):
    """A kept-alive connection the server dropped while idle costs no retry and no error."""
    # Any idle time counts (both clients' thresholds: the AsyncClient's is its own), so the
    # result does not depend on whether the server's close arrived before the next request.
    monkeypatch.setattr(_transport, "_IDLE_STALE", 0.0)
    monkeypatch.setattr(_aio_http, "_IDLE_STALE", 0.0)
    server.respond(Action(close=True))
    client = make_client()
    client.track("u", "First")
    assert client.flush(timeout=5)
    client.track("u", "Second")
    assert client.flush(timeout=5)
    assert [m["event"] for m in server.accepted()] == ["First", "Second"]
    assert client.stats().retries == 0


def test_an_answer_lost_after_a_long_wait_is_a_counted_retry(server, make_client):
    """A reused connection reset after more than a second in flight is no idle stale one.

    The server may have taken the batch: the re-send goes through the retry policy
    (counted, with backoff), never silently as for a connection closed while idle.
    """
    server.respond(Action(), Action(delay=1.3, reset=True))
    client = make_client(timeout=5)
    client.track("u", "First")
    assert client.flush(timeout=5)
    client.track("u", "Second")
    assert client.flush(timeout=20)
    assert [m["event"] for m in server.accepted()] == ["First", "Second"]
    assert len(server.requests) == 3
    assert client.stats().retries == 1


def test_each_request_has_a_deadline(server, make_client):
    """A server that never answers costs one `timeout` per attempt, then a counted drop."""
    server.default = Action(hang=True)
    client = make_client(timeout=0.3, max_retries=1)
    client.track("u", "E")
    started = time.monotonic()
    assert client.flush(timeout=10)
    assert time.monotonic() - started < 3
    assert client.stats().dropped == {"retries_exhausted": 1}
    server.release.set()
