"""``tracklane send``: one message with analytics-ruby's ``bin/analytics`` flags, spelled as it
spells them (``--writeKey``, ``--userId``, ...), so Segment's library-e2e-tester can drive it.

It sends through a ``tracklane.Client`` in ``sync_mode`` and exits 0 only when the server
accepted the message; otherwise it prints one line (the status and the server's error, the
network error, or the invalid flag) and exits 1. Bad flags exit 2, as argparse does.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, List, Tuple

import tracklane
from tracklane.cli._common import (
    describe_error,
    error,
    json_object,
    resolve_host,
    resolve_write_key,
)
from tracklane.cli._fields import FIELDS as _FIELDS
from tracklane.cli._fields import TYPES

__all__ = [
    "DESCRIPTION",
    "EXAMPLES",
    "TYPED_EXAMPLES",
    "add_send_arguments",
    "run",
    "typed_arguments",
]

DESCRIPTION = (
    "Send one message and exit 0 once the server accepted it. The flags are analytics-ruby's "
    "(bin/analytics). The write key comes from --writeKey, $TRACKLANE_WRITE_KEY or "
    "$SEGMENT_WRITE_KEY; the endpoint from --host, $TRACKLANE_HOST or api.segment.io."
)
EXAMPLES = """\
  tracklane send --writeKey=KEY --type=track --userId=u1 --event='Order Completed' \\
      --properties='{"total": 42.5, "items": [{"sku": "a-1"}]}'
  tracklane send --type=identify --userId=u1 --traits='{"email": "ann@example.com"}'
  tracklane send --type=group --userId=u1 --groupId=acme --traits='{"plan": "pro"}'
  tracklane send --type=alias --previousId=anon-7 --userId=u1
  tracklane send --type=page --anonymousId=a1 --name=Pricing --category=Docs \\
      --host=http://127.0.0.1:8787 --timestamp=2024-05-01T10:00:00Z"""

_FLAG_OF = {argument: f"--{flag}" for flag, (argument, _) in _FIELDS.items()}


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    """analytics-ruby's flags, plus --timestamp, --messageId, --category and --host."""
    parser.add_argument("--writeKey", metavar="KEY", help="the write key")
    parser.add_argument(
        "--type", required=True, choices=TYPES, help="the message type: %(choices)s"
    )
    parser.add_argument("--userId", metavar="ID", help="the user id")
    parser.add_argument("--anonymousId", metavar="ID", help="the anonymous id")
    parser.add_argument("--event", help="the event name (track)")
    parser.add_argument("--name", help="the page or screen name")
    parser.add_argument("--category", help="the page or screen category")
    for flag, what in (
        ("properties", "the properties (track, page, screen)"),
        ("traits", "the traits (identify, group)"),
        ("context", "the context"),
        ("integrations", "which destinations get it, with their options"),
    ):
        parser.add_argument(
            f"--{flag}",
            type=json_object(f"--{flag}"),
            metavar="JSON",
            help=f"{what}: a JSON object",
        )
    parser.add_argument("--groupId", metavar="ID", help="the group id (group)")
    parser.add_argument("--previousId", metavar="ID", help="the previous id (alias)")
    parser.add_argument("--timestamp", metavar="ISO8601", help="when it happened (default: now)")
    parser.add_argument("--messageId", metavar="ID", help="the message id (default: a new UUID)")
    parser.add_argument("--host", metavar="URL", help="the endpoint (default: api.segment.io)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="give up after this long, retries included (default 15)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="retries on connection errors, 429 and 5xx (default 3)",
    )


def call_arguments(args: argparse.Namespace) -> Tuple[Dict[str, Any], List[str]]:
    """The call's keyword arguments, and the flags given that the type does not take."""
    kwargs: Dict[str, Any] = {}
    unused: List[str] = []
    for flag, (argument, types) in _FIELDS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if args.type not in types:
            unused.append(f"--{flag}")
            continue
        kwargs[argument] = value
    return kwargs, unused


def flag_for(exc: tracklane.ValidationError, names: Dict[str, str]) -> str:
    """A validation error in the words of the flags (``names``: argument -> flag)."""
    if exc.field == "user_id" and "anonymous_id" in exc.problem:
        return f"{names['user_id']} or {names['anonymous_id']} is required"
    return f"{names.get(exc.field, exc.field)}: {exc.problem}"


def run(args: argparse.Namespace) -> int:
    """Send the message; 0 when the server accepted it."""
    command = args.command
    names = getattr(args, "flag_names", None) or _FLAG_OF
    kwargs, unused = call_arguments(args)
    if unused:
        return error(
            command, f"{', '.join(unused)}: not part of {_article(args.type)} {args.type} message"
        )
    key, _ = resolve_write_key(args.writeKey)
    if key is None:
        return error(
            command,
            f"no write key: pass {names.get('write_key', '--writeKey')} or set "
            "$TRACKLANE_WRITE_KEY / $SEGMENT_WRITE_KEY",
        )
    host, _ = resolve_host(args.host)
    errors: List[BaseException] = []
    try:
        client = tracklane.Client(
            key,
            host=host,
            sync_mode=True,
            timeout=args.timeout,
            max_retries=args.retries,
            on_error=lambda exc, _batch: errors.append(exc),
        )
    except tracklane.ConfigurationError as exc:
        return error(command, _option_flag(str(exc)))
    try:
        ok, _message = getattr(client, args.type)(**kwargs)
    except tracklane.ValidationError as exc:
        return error(command, flag_for(exc, names))
    finally:
        client.shutdown(timeout=1)
    if ok:
        return 0
    reason = describe_error(errors[0]) if errors else "the message was not delivered"
    return error(command, reason)


def _option_flag(text: str) -> str:
    for option, flag in (
        ("host", "--host"),
        ("timeout", "--timeout"),
        ("max_retries", "--retries"),
    ):
        if text.startswith(f"{option}:"):
            return flag + text[len(option) :]
    return text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# The per-type forms: `tracklane track --user-id u --event E`, the usual spelling.
_KEBAB = {
    "userId": "--user-id",
    "anonymousId": "--anonymous-id",
    "groupId": "--group-id",
    "previousId": "--previous-id",
    "messageId": "--message-id",
}


def typed_arguments(kind: str) -> Callable[[argparse.ArgumentParser], None]:
    """``add_arguments`` of ``tracklane KIND``: only the fields KIND takes, in kebab-case."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--write-key", dest="writeKey", metavar="KEY", help="the write key")
        for field, (_argument, types) in _FIELDS.items():
            if kind not in types:
                continue
            flag = _KEBAB.get(field, f"--{field}")
            if field in ("properties", "traits", "context", "integrations"):
                parser.add_argument(
                    flag, dest=field, type=json_object(flag), metavar="JSON", help="a JSON object"
                )
            else:
                metavar = "ID" if field.endswith("Id") else field.upper()
                parser.add_argument(flag, dest=field, metavar=metavar)
        for field, (_argument, types) in _FIELDS.items():
            if kind not in types:
                parser.set_defaults(**{field: None})
        parser.add_argument("--host", metavar="URL", help="the endpoint (default: api.segment.io)")
        parser.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS")
        parser.add_argument("--retries", type=int, default=3, metavar="N")
        parser.set_defaults(type=kind, flag_names=_KEBAB_OF)

    return add


_KEBAB_OF = {argument: _KEBAB.get(field, f"--{field}") for field, (argument, _) in _FIELDS.items()}
_KEBAB_OF["write_key"] = "--write-key"

TYPED_EXAMPLES = {
    "track": "  tracklane track --user-id u1 --event Bought --properties '{\"total\": 9.5}'",
    "identify": '  tracklane identify --user-id u1 --traits \'{"email": "ann@example.com"}\'',
    "page": "  tracklane page --anonymous-id a1 --name Pricing --category Docs",
    "screen": "  tracklane screen --user-id u1 --name Settings",
    "group": '  tracklane group --user-id u1 --group-id acme --traits \'{"plan": "pro"}\'',
    "alias": "  tracklane alias --previous-id anon-7 --user-id u1",
}
