"""An OAuth 2 token server on 127.0.0.1 that verifies JWT client assertions like Segment's.

It checks the assertion's signature with the client's public key and its ``kid``, ``iss``,
``sub``, ``aud``, ``exp``, ``iat`` and ``jti`` (never reused), then issues ``tok-N`` tokens
valid for ``expires_in`` seconds. Answers can be scripted (429, 500 ...), tokens revoked, and
the server stopped and started again on the same port.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Set
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import Action

CLIENT_ID = "client-7"
KEY_ID = "key-2026"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def new_private_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (made in the test; no key material is checked in)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    """The private key as PEM text, as a user passes it in ``oauth_client_key``."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class TokenRequest:
    """One request to /token, with what the server made of it."""

    at: float
    form: Dict[str, str]
    header: Dict[str, Any] = field(default_factory=dict)
    claims: Dict[str, Any] = field(default_factory=dict)
    status: int = 0
    problem: str = ""


class TokenServer:
    """Verifies client assertions and issues short-lived tokens."""

    def __init__(self, public_key: rsa.RSAPublicKey, expires_in: float = 3600) -> None:
        self.public_key = public_key
        self.expires_in = expires_in
        self.requests: List[TokenRequest] = []
        self.script: List[Action] = []
        self.delay = 0.0  # seconds each token request is held before its answer
        self.issued: Dict[str, float] = {}  # token -> monotonic expiry
        self.revoked: Set[str] = set()
        self.seen_jti: Set[str] = set()
        self._cond = threading.Condition()
        self.port = 0
        self.httpd: Optional[ThreadingHTTPServer] = None
        self.start()
        self.url = f"http://127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on 127.0.0.1, on the same port as before if there was one."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def stop(self) -> None:
        """Stop listening: token requests get 'connection refused'."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    # -- what the tracking endpoint asks --------------------------------------------------

    def valid(self, authorization: Optional[str]) -> bool:
        """True for ``Bearer <token>`` with a token issued here, unexpired and not revoked."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        token = authorization[len("Bearer ") :]
        with self._cond:
            expiry = self.issued.get(token)
            return expiry is not None and time.monotonic() < expiry and token not in self.revoked

    def gate(self, headers: Dict[str, str]) -> Optional[Action]:
        """For ``RecordingServer.gate``: 401 unless the request has a valid token."""
        if self.valid(headers.get("authorization")):
            return None
        return Action(status=401, body=b'{"code":"unauthorized","message":"invalid token"}')

    def revoke_all(self) -> None:
        """Revoke every token issued so far."""
        with self._cond:
            self.revoked.update(self.issued)

    def granted(self) -> List[TokenRequest]:
        """The requests that got a token."""
        with self._cond:
            return [r for r in self.requests if r.status == 200]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> List[TokenRequest]:
        """Wait until ``count`` token requests arrived (or the timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            return list(self.requests)

    # -- the endpoint ---------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode()
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        request = TokenRequest(at=time.monotonic(), form=form)
        with self._cond:
            action = self.script.pop(0) if self.script else None
        if self.delay:  # a slow token server
            time.sleep(self.delay)
        if handler.path != "/token":
            status, body = 404, {"error": "not_found"}
        elif action is not None:
            status, body = action.status, json.loads(action.body or b"{}")
        else:
            status, body = self._grant(request)
        request.status = status
        with self._cond:  # recorded before answering: a client holding its token finds it here
            self.requests.append(request)
            self._cond.notify_all()
        payload = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in (action.headers if action else {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def _grant(self, request: TokenRequest) -> tuple[int, Dict[str, Any]]:
        form = request.form
        problem = ""
        if form.get("grant_type") != "client_credentials":
            problem = f"grant_type {form.get('grant_type')!r}"
        elif form.get("client_assertion_type") != ASSERTION_TYPE:
            problem = f"client_assertion_type {form.get('client_assertion_type')!r}"
        elif form.get("scope") != "tracking_api:write":
            problem = f"scope {form.get('scope')!r}"
        else:
            problem = self._verify(request, form.get("client_assertion", ""))
        if problem:
            request.problem = problem
            return 401, {"error": "invalid_client", "error_description": problem}
        with self._cond:
            token = f"tok-{len(self.issued) + 1}"
            self.issued[token] = time.monotonic() + self.expires_in
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}

    def _verify(self, request: TokenRequest, assertion: str) -> str:
        try:
            request.header = jwt.get_unverified_header(assertion)
            if request.header.get("kid") != KEY_ID:
                return f"unknown kid {request.header.get('kid')!r}"
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                audience=self.url,
                issuer=CLIENT_ID,
                options={"require": ["exp", "iat", "iss", "sub", "aud", "jti"]},
            )
        except jwt.PyJWTError as exc:
            return f"assertion rejected: {exc}"
        request.claims = claims
        if claims["sub"] != CLIENT_ID:
            return f"sub {claims['sub']!r}"
        if not 0 < claims["exp"] - time.time() <= 120:
            return "exp is not within two minutes"
        with self._cond:
            if claims["jti"] in self.seen_jti:
                return "jti reused"
            self.seen_jti.add(claims["jti"])
        return ""
