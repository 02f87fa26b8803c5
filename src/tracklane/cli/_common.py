"""What the commands share: where the write key and host come from, JSON flags, error lines.

The CLI sits on tracklane's public API only (``tracklane.Client``, its options and
exceptions), like any application would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

import tracklane

__all__ = [
    "CLI_INSTALL_HINT",
    "ENV_HOSTS",
    "ENV_WRITE_KEYS",
    "describe_error",
    "error",
    "json_object",
    "resolve_host",
    "resolve_write_key",
]

CLI_INSTALL_HINT = "pip install 'tracklane[cli]'"
ENV_WRITE_KEYS = ("TRACKLANE_WRITE_KEY", "SEGMENT_WRITE_KEY")
ENV_HOSTS = ("TRACKLANE_HOST",)
DEFAULT_HOST = "https://api.segment.io"


def resolve_write_key(
    flag_value: Optional[str], flag: str = "--writeKey", environ: Optional[Mapping[str, str]] = None
) -> Tuple[Optional[str], str]:
    """The write key and where it came from: the flag, then ``$TRACKLANE_WRITE_KEY``, then
    ``$SEGMENT_WRITE_KEY`` (the order the client itself uses)."""
    env = os.environ if environ is None else environ
    if flag_value:
        return flag_value, flag
    for name in ENV_WRITE_KEYS:
        if env.get(name):
            return env[name], f"${name}"
    return None, "nowhere"


def resolve_host(
    flag_value: Optional[str], flag: str = "--host", environ: Optional[Mapping[str, str]] = None
) -> Tuple[str, str]:
    """The endpoint and where it came from: the flag, ``$TRACKLANE_HOST``, or the default."""
    env = os.environ if environ is None else environ
    if flag_value:
        return flag_value, flag
    for name in ENV_HOSTS:
        if env.get(name):
            return env[name], f"${name}"
    return DEFAULT_HOST, "the default"


def json_object(flag: str) -> Any:
    """An argparse ``type`` that parses a JSON object, naming ``flag`` when it is not one."""

    def parse(text: str) -> Dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            kind = type(value).__name__
            raise argparse.ArgumentTypeError(f"{flag}: must be a JSON object, not {kind}")
        return value

    parse.__name__ = "JSON object"
    return parse


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong: the status and the server's own error, or the network
    error, in plain words."""
    cause = exc.__cause__ if isinstance(exc, tracklane.RetriesExhaustedError) else None
    if isinstance(exc, tracklane.APIError) or isinstance(cause, tracklane.APIError):
        api = exc if isinstance(exc, tracklane.APIError) else cause
        assert isinstance(api, tracklane.APIError)
        said = _server_error(api.body)
        text = f"the server answered HTTP {api.status_code}" + (f": {said}" if said else "")
        if api.status_code == 401:
            text += " (the write key was refused)"
        if cause is not None:
            text += f" ({exc})"
        return text
    if isinstance(exc, tracklane.RetriesExhaustedError) and isinstance(
        cause, tracklane.TransportError
    ):
        text = str(cause)
        if text.startswith("no response: "):
            text = text[len("no response: ") :]
        attempts = str(exc).split(":", 1)[0]
        return f"no answer from the server: {text} ({attempts})"
    return str(exc)


def _server_error(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:200]
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail"):
            if isinstance(parsed.get(key), str):
                return str(parsed[key])
    return body.strip()[:200]


def error(command: str, message: str) -> int:
    """Print ``tracklane COMMAND: message`` on stderr and return exit code 1."""
    print(f"tracklane {command}: {message}", file=sys.stderr, flush=True)
    return 1
