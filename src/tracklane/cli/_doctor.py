"""``tracklane doctor``: the Troubleshooting checklist of Segment's guide, run for you.

Write key (and where it comes from), endpoint, proxy settings, DNS, TCP, TLS certificate,
then one test event through ``tracklane.Client`` and what the server answered; against a
tracklane collector, whether the event was stored. Each failure says what to do. Exit 0
only when every check passes.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import tracklane
from tracklane.cli._common import describe_error, resolve_host, resolve_write_key

__all__ = ["DESCRIPTION", "EXAMPLES", "add_doctor_arguments", "run"]

DESCRIPTION = (
    "Check the set-up step by step: write key, endpoint, proxy, DNS, connection, TLS, a test "
    "event and (against a tracklane collector) whether it was stored. Exit 0 only when "
    "every check passes."
)
EXAMPLES = """\
  tracklane doctor                                   # key and host from the environment
  tracklane doctor --writeKey KEY --host http://127.0.0.1:8787
  tracklane doctor --host https://events.internal --ca-bundle corp-ca.pem"""

DOCTOR_USER = "tracklane-doctor"


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str  # "ok", "warn", "fail", "skip"
    detail: str
    fix: str = ""


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tracklane doctor``."""
    parser.add_argument("--writeKey", "--write-key", dest="write_key", metavar="KEY")
    parser.add_argument("--host", metavar="URL", help="the endpoint (default: api.segment.io)")
    parser.add_argument("--ca-bundle", metavar="PATH", help="trust these CA certificates")
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per step (default 5)"
    )


class Doctor:
    """Runs the checks in order; later ones are skipped when what they need failed."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.checks: List[Check] = []
        self.timeout: float = args.timeout

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        _print(check)
        return check

    def run(self) -> bool:
        key = self.write_key()
        url = self.endpoint()
        if url is None:
            return False
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        proxy = self.proxy(parts.scheme, host)
        target = proxy or (host, port)
        addresses = self.dns(*target, via_proxy=proxy is not None)
        reachable = bool(addresses) and self.connect(target, addresses, via_proxy=proxy is not None)
        if parts.scheme == "https" and not reachable:
            self.add("TLS", "skip", "the server cannot be reached")
        elif parts.scheme == "https" and proxy is None:
            reachable = self.tls(host, port)
        elif parts.scheme == "https" and proxy is not None:
            self.add("TLS", "skip", "through the proxy's tunnel: checked by the test event")
        else:
            self.add("TLS", "skip", "plain http: no TLS")
        if not reachable:
            self.add("test event", "skip", "the server cannot be reached (see above)")
            return False
        if key is None:
            self.add("test event", "skip", "needs a write key")
            return False
        message_id = self.test_event(key, url)
        if message_id is not None:
            self.stored(url, key, message_id)
        return all(check.status != "fail" for check in self.checks)

    def write_key(self) -> Optional[str]:
        key, source = resolve_write_key(self.args.write_key, "--writeKey")
        if key is None:
            self.add(
                "write key",
                "fail",
                "no write key is set",
                "pass --writeKey KEY, or export TRACKLANE_WRITE_KEY=KEY (SEGMENT_WRITE_KEY also "
                "works); find it in your source's settings (Settings > API Keys)",
            )
            return None
        if key != key.strip():
            self.add(
                "write key",
                "fail",
                f"from {source}, but it has spaces or a newline around it",
                "copy the key again without the surrounding whitespace",
            )
            return key
        self.add("write key", "ok", f"from {source} ({len(key)} characters)")
        return key

    def endpoint(self) -> Optional[str]:
        host, source = resolve_host(self.args.host)
        try:
            url = tracklane.Options.build("doctor", host=host).host
        except tracklane.ConfigurationError as exc:
            self.add("endpoint", "fail", f"{host!r} from {source}: {exc}", "give an http(s) URL")
            return None
        plain = url.startswith("http://") and not _loopback(urlsplit(url).hostname or "")
        if plain:
            self.add(
                "endpoint",
                "warn",
                f"{url} (from {source}) over plain http: events and the key travel unencrypted",
                "use https:// unless this is a trusted network",
            )
        else:
            self.add("endpoint", "ok", f"{url} (from {source})")
        return url

    def proxy(self, scheme: str, host: str) -> Optional[Tuple[str, int]]:
        # The same rule as the client's transport: loopback never, else the environment.
        if _loopback(host):
            self.add("proxy", "ok", f"none ({host} is this machine)")
            return None
        env = urllib.request.getproxies_environment()
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        names = [n for n in os.environ if n.lower() in (f"{scheme}_proxy", "no_proxy")]
        if not env.get(scheme):
            self.add("proxy", "ok", f"none (no {scheme}_proxy in the environment)")
            return None
        if bypass(host):
            self.add("proxy", "ok", f"none: {host} is in $no_proxy")
            return None
        proxy = urlsplit(env[scheme] if "://" in env[scheme] else "http://" + env[scheme])
        shown = f"{proxy.hostname}:{proxy.port or 80}"
        self.add("proxy", "ok", f"{scheme} goes through {shown} (from ${', $'.join(names)})")
        return proxy.hostname or "", proxy.port or 80

    def dns(self, host: str, port: int, via_proxy: bool) -> List[str]:
        what = "the proxy " if via_proxy else ""
        try:
            ip = ipaddress.ip_address(host)
            self.add("DNS", "ok", f"{host} is an address")
            return [str(ip)]
        except ValueError:
            pass
        pool = concurrent.futures.ThreadPoolExecutor(1)
        future = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            self.add(
                "DNS",
                "fail",
                f"resolving {what}{host} took over {self.timeout:g}s",
                "check your DNS servers or VPN",
            )
            return []
        except OSError as exc:
            self.add(
                "DNS",
                "fail",
                f"cannot resolve {what}{host}: {exc.strerror or exc}",
                "check the host name (--host or $TRACKLANE_HOST) for typos; "
                "check your DNS, VPN or network",
            )
            return []
        finally:
            pool.shutdown(wait=False)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self.add("DNS", "ok", f"{what}{host} -> {', '.join(addresses[:4])}")
        return addresses

    def connect(self, target: Tuple[str, int], addresses: List[str], via_proxy: bool) -> bool:
        host, port = target
        what = "the proxy " if via_proxy else ""
        last: Optional[OSError] = None
        for address in addresses:
            started = time.monotonic()
            try:
                with socket.create_connection((address, port), timeout=self.timeout):
                    took = (time.monotonic() - started) * 1000
                    self.add("connection", "ok", f"TCP to {what}{address}:{port} in {took:.1f} ms")
                    return True
            except OSError as exc:
                last = exc
        if isinstance(last, ConnectionRefusedError):
            fix = (
                "is the server running and on that port? For a local collector: "
                f"tracklane serve --port {port}"
            )
            self.add("connection", "fail", f"nothing listens on {what}{host}:{port} (refused)", fix)
        elif isinstance(last, socket.timeout):
            self.add(
                "connection",
                "fail",
                f"no answer from {what}{host}:{port} within {self.timeout:g}s",
                "a firewall may drop the traffic; an HTTPS proxy may be required (HTTPS_PROXY)",
            )
        else:
            self.add(
                "connection",
                "fail",
                f"cannot connect to {what}{host}:{port}: {last}",
                "check the network and firewall",
            )
        return False

    def tls(self, host: str, port: int) -> bool:
        context = _tls_context(self.args.ca_bundle)
        try:
            with (
                socket.create_connection((host, port), timeout=self.timeout) as sock,
                context.wrap_socket(sock, server_hostname=host) as tls,
            ):
                cert: Dict[str, Any] = tls.getpeercert() or {}
                version = tls.version()
        except ssl.SSLCertVerificationError as exc:
            self.add(
                "TLS",
                "fail",
                f"the certificate of {host} is not trusted: {exc.verify_message or exc}",
                "if your network inspects TLS, pass its CA with --ca-bundle PATH (and the "
                "client's ca_bundle option); otherwise the server's certificate is wrong",
            )
            return False
        except (ssl.SSLError, OSError) as exc:
            self.add(
                "TLS",
                "fail",
                f"TLS handshake with {host} failed: {exc}",
                "check that the port speaks HTTPS (use http:// for a local collector)",
            )
            return False
        subject = _name(cert.get("subject"))
        issuer = _name(cert.get("issuer"))
        expires = cert.get("notAfter")
        days = ""
        if isinstance(expires, str):
            when = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(expires), dt.timezone.utc)
            days = (
                f", expires {when:%Y-%m-%d} ({(when - dt.datetime.now(dt.timezone.utc)).days} days)"
            )
        self.add("TLS", "ok", f"{version}, certificate for {subject} by {issuer}{days}")
        return True

    def test_event(self, key: str, url: str) -> Optional[str]:
        errors: List[BaseException] = []
        message_id = f"tracklane-doctor-{uuid.uuid4()}"
        client = tracklane.Client(
            key,
            host=url,
            sync_mode=True,
            max_retries=1,
            backoff_base=0.2,
            timeout=self.timeout,
            ca_bundle=self.args.ca_bundle,
            on_error=lambda exc, _batch: errors.append(exc),
        )
        started = time.monotonic()
        try:
            ok, _ = client.track(
                DOCTOR_USER,
                "tracklane doctor",
                {"check": "connectivity"},
                message_id=message_id,
            )
        finally:
            client.shutdown(timeout=1)
        took = (time.monotonic() - started) * 1000
        if ok:
            self.add("test event", "ok", f"accepted by {url} in {took:.0f} ms ({message_id})")
            return message_id
        exc = errors[0] if errors else None
        detail = describe_error(exc) if exc is not None else "not delivered"
        fix = "see the line above"
        status = _status(exc)
        if status == 401 or status == 403:
            fix = "the write key is not valid for this endpoint: copy it again from the source"
        elif status is not None and status >= 500:
            fix = "the server has a problem; try again later (the client retries by itself)"
        elif status is None:
            fix = "the request got no answer; check the network, proxy and TLS lines above"
        self.add("test event", "fail", detail, fix)
        return None

    def stored(self, url: str, key: str, message_id: str) -> None:
        try:
            health = _get_json(f"{url}/health", None, self.timeout)
        except (OSError, ValueError):
            health = None
        if not (isinstance(health, dict) and health.get("ok") is True):
            self.add("stored", "skip", "not a tracklane collector: cannot look the event up")
            return
        try:
            body = _get_json(f"{url}/v1/events?userId={DOCTOR_USER}&limit=20", key, self.timeout)
        except (OSError, ValueError) as exc:
            self.add("stored", "fail", f"cannot read the collector's events: {exc}")
            return
        events = body.get("events") if isinstance(body, dict) else None
        found = any(e.get("messageId") == message_id for e in events or [])
        if found:
            self.add("stored", "ok", "the collector stored the test event")
        else:
            self.add(
                "stored",
                "fail",
                "accepted but not found in the collector's events",
                "check the collector's log and its database file",
            )


def _status(exc: Optional[BaseException]) -> Optional[int]:
    if isinstance(exc, tracklane.APIError):
        return exc.status_code
    cause = exc.__cause__ if exc is not None else None
    return cause.status_code if isinstance(cause, tracklane.APIError) else None


def _get_json(url: str, key: Optional[str], timeout: float) -> Any:
    headers = {"Accept": "application/json"}
    if key is not None:
        token = base64.b64encode(f"{key}:".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code}") from None


def _tls_context(ca_bundle: Optional[str]) -> ssl.SSLContext:
    """The trust the client uses: a given CA bundle, else the system store plus certifi's."""
    if ca_bundle:
        return ssl.create_default_context(cafile=ca_bundle)
    context = ssl.create_default_context()
    try:
        import certifi

        context.load_verify_locations(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi is a core dependency
        pass
    return context


def _name(parts: Any) -> str:
    if not parts:
        return "?"
    fields = {key: value for rdn in parts for key, value in rdn}
    return str(fields.get("commonName") or fields.get("organizationName") or "?")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_MARKS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}


def _print(check: Check) -> None:
    print(f"{_MARKS[check.status]} {check.name:<11} {check.detail}", flush=True)
    if check.fix and check.status in ("fail", "warn"):
        print(f"       {'':<11} fix: {check.fix}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run every check; 0 only when all pass."""
    doctor = Doctor(args)
    ok = doctor.run()
    failed = [check.name for check in doctor.checks if check.status == "fail"]
    if ok and not failed:
        print("All checks passed.")
        return 0
    print(f"Failed: {', '.join(failed) or 'see above'}.", file=sys.stdout)
    return 1
