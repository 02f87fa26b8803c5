"""``tracklane e2e --input JSON``: Segment's cross-SDK e2e contract, as analytics-ruby's
e2e-cli implements it.

The input has ``writeKey``, ``apiHost``, ``sequences[]`` (each ``delayMs`` and ``events[]``
in camelCase) and ``config`` (``flushAt``, ``flushInterval`` in ms, ``maxRetries``,
``timeout`` in s). The result is one JSON line on stdout: ``{"success": true,
"sentBatches": N}`` (exit 0) or ``{"success": false, "error": "..."}`` (exit 1), ``N`` being
the requests the server acknowledged. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional

import tracklane
from tracklane.cli._common import describe_error
from tracklane.cli._fields import FIELDS

__all__ = ["EXAMPLES", "add_e2e_arguments", "run"]

EXAMPLES = """\
  tracklane e2e --input '{"writeKey": "KEY", "apiHost": "http://127.0.0.1:8787",
      "sequences": [{"delayMs": 0, "events": [
          {"type": "track", "userId": "u1", "event": "Test", "properties": {"a": 1}}]}],
      "config": {"flushAt": 15, "maxRetries": 3}}'"""

_ARGUMENTS = {field: argument for field, (argument, _) in FIELDS.items()}
_CALLS = ("track", "identify", "page", "screen", "group", "alias")


def add_e2e_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input JSON``."""
    parser.add_argument("--input", required=True, metavar="JSON", help="the test description")


def _result(success: bool, sent: int = 0, error: Optional[str] = None) -> int:
    body: Dict[str, Any] = {"success": success, "sentBatches": sent}
    if error is not None:
        body["error"] = error
    print(json.dumps(body), flush=True)
    return 0 if success else 1


def _log(text: str) -> None:
    print(f"[tracklane e2e] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Send the sequences through one client; print the result line."""
    try:
        spec = json.loads(args.input)
    except ValueError as exc:
        return _result(False, error=f"--input is not valid JSON: {exc}")
    if not isinstance(spec, dict):
        return _result(False, error="--input must be a JSON object")
    config = spec.get("config") or {}
    options: Dict[str, Any] = {}
    if spec.get("apiHost"):
        options["host"] = spec["apiHost"]
    if not isinstance(config, dict):
        return _result(False, error="config: must be an object")
    for name, option, scale in (
        ("flushAt", "batch_size", None),
        ("maxRetries", "max_retries", None),
        ("flushInterval", "flush_interval", 1000),
        ("timeout", "timeout", 1),
    ):
        value = config.get(name)
        if value is None:
            continue
        if scale is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return _result(False, error=f"config.{name}: must be a number, not {value!r}")
            value = value / scale
        options[option] = value
    errors: List[BaseException] = []
    try:
        client = tracklane.Client(
            spec.get("writeKey"), on_error=lambda exc, _batch: errors.append(exc), **options
        )
    except tracklane.ConfigurationError as exc:
        return _result(False, error=str(exc))
    try:
        return _send_all(client, spec.get("sequences") or [], errors)
    finally:
        client.shutdown(timeout=1)


def _send_all(client: tracklane.Client, sequences: Any, errors: List[BaseException]) -> int:
    if not isinstance(sequences, list):
        return _result(False, error="sequences: must be a list")
    for index, sequence in enumerate(sequences):
        if not isinstance(sequence, dict):
            return _result(False, error=f"sequences[{index}]: must be an object")
        delay = sequence.get("delayMs") or 0
        if delay:
            _log(f"sequence {index}: waiting {delay} ms")
            time.sleep(float(delay) / 1000)
        for position, event in enumerate(sequence.get("events") or []):
            where = f"sequences[{index}].events[{position}]"
            if not isinstance(event, dict):
                return _result(False, error=f"{where}: must be an object")
            kind = event.get("type")
            if kind not in _CALLS:
                _log(f"{where}: unknown type {kind!r}, skipped")
                continue
            kwargs: Dict[str, Any] = {
                _ARGUMENTS.get(str(k), str(k)): v for k, v in event.items() if k != "type"
            }
            try:
                getattr(client, kind)(**kwargs)
            except tracklane.ValidationError as exc:
                return _result(False, client.stats().batches, f"{where}: {exc}")
            except TypeError as exc:  # a field this type does not take
                return _result(False, client.stats().batches, f"{where}: {exc}")
    result = client.flush()
    sent = result.stats.batches
    if errors:
        return _result(False, sent, describe_error(errors[0]))
    if not result:
        return _result(False, sent, f"{result.pending} messages still pending at the deadline")
    _log(f"{result.stats.delivered} messages delivered in {sent} batches")
    return _result(True, sent)
