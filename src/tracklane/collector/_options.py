"""Command-line options of the collector, shared by ``tracklane serve`` and ``-m``.

Stdlib only: this module must import without the ``collector`` extra, so that a
missing extra is reported with the install command instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Mapping, Optional, Sequence, Tuple

__all__ = [
    "DEFAULT_DB",
    "ENV_WRITE_KEYS",
    "INSTALL_HINT",
    "add_serve_arguments",
    "main",
    "serve",
    "write_keys_from",
]

DEFAULT_DB = "tracklane-events.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_WORKERS = 0
ENV_WRITE_KEYS = "TRACKLANE_COLLECTOR_WRITE_KEYS"
INSTALL_HINT = "pip install 'tracklane[collector]'"
_EXTRA_MODULES = frozenset({"starlette", "uvicorn", "anyio", "h11"})


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 0 to 65535, not {port}")
    return port


MAX_WORKERS = 64  # the same bound as collector._check.MAX_WORKERS (this module is stdlib-only)


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= workers <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_WORKERS}, not {workers}")
    return workers


def _write_key(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a write key must not be empty")
    return text.strip()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the collector's flags: --port, --host, --db, --config, --write-key, --workers."""
    parser.add_argument(
        "--port", type=_port, default=0, help="port to listen on; 0 (default) picks a free one"
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="FILE|URL",
        help=f"SQLite file (default ./{DEFAULT_DB}) or postgresql://user@host/db URL",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="routing config (TOML): sources, destinations, filters; see docs/routing.md",
    )
    parser.add_argument(
        "--write-key",
        dest="write_keys",
        action="append",
        type=_write_key,
        default=[],
        metavar="KEY",
        help=(
            "accept only this write key (repeatable; also comma-separated in "
            f"${ENV_WRITE_KEYS}); with none, any key is accepted"
        ),
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=(
            "processes that parse and validate ingest bodies beside the server process "
            f"(default {DEFAULT_WORKERS}; 0 does everything in one process); see docs/collector.md"
        ),
    )


def write_keys_from(flags: Sequence[str], environ: Mapping[str, str]) -> Tuple[str, ...]:
    """Combine ``--write-key`` flags with the comma-separated environment variable."""
    from_env = (key.strip() for key in environ.get(ENV_WRITE_KEYS, "").split(","))
    return tuple(dict.fromkeys([*flags, *(key for key in from_env if key)]))


def _missing_extra(exc: ImportError) -> bool:
    return (exc.name or "").split(".")[0] in _EXTRA_MODULES


def serve(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> int:
    """Run the collector with parsed flags until SIGTERM/Ctrl-C; return the exit code."""
    try:
        from tracklane.collector._runner import CollectorStartError, run_until_signalled
        from tracklane.collector.storage import StorageError
    except ImportError as exc:
        if not _missing_extra(exc):
            raise
        print(
            f"tracklane: the collector needs extra packages ({exc.name} is missing): "
            f"{INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    keys = write_keys_from(args.write_keys, os.environ if environ is None else environ)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = None
    if getattr(args, "config", None):
        from tracklane.collector.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"tracklane collector: {exc}", file=sys.stderr)
            return 2
    try:
        return run_until_signalled(
            args.db, keys, args.host, args.port, config=config, workers=args.workers
        )
    except (StorageError, CollectorStartError) as exc:
        print(f"tracklane collector: {exc}", file=sys.stderr)
    except OSError as exc:
        print(
            f"tracklane collector: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m tracklane.collector``."""
    parser = argparse.ArgumentParser(
        prog="python -m tracklane.collector",
        description="Local collector for Segment's HTTP Tracking API, storing events in SQLite.",
    )
    add_serve_arguments(parser)
    return serve(parser.parse_args(argv))
