"""The ``tracklane`` command (stdlib argparse). ``tracklane serve`` runs the local collector.

The collector and its extra dependencies are imported only when ``serve`` runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from tracklane.collector import _admin
from tracklane.collector._options import add_serve_arguments, serve

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracklane", description="tracklane: server-side analytics for Segment's API."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="run the local collector (stores events in SQLite)",
        description="Run a local collector for Segment's HTTP Tracking API (events in SQLite).",
    )
    add_serve_arguments(serve_parser)
    _admin.add_status_arguments(commands.add_parser("status", help="destinations' delivery status"))
    _admin.add_replay_arguments(commands.add_parser("replay", help="resend dead letters"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``tracklane`` command line and return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command in ("status", "replay"):
        return int(getattr(_admin, args.command)(args))
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
