"""The ``tracklane`` command line.

Each command is a :class:`Command`: a name, a help line and a function that imports its
module and returns its :class:`Parts` (examples, an ``add_arguments(parser)`` function and a
``run(args) -> int`` function). Registering one is one entry in :data:`COMMANDS`; only the
command that runs is imported. Modules here import only the standard library and
tracklane's public API at the top; extras (rich, argcomplete, the collector's
starlette/uvicorn) are imported when a command needs them, and a missing extra is reported
with its ``pip install`` line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

from tracklane._version import __version__
from tracklane.cli._fields import TYPES

__all__ = ["COMMANDS", "Command", "Parts", "build_parser", "main"]


@dataclass(frozen=True)
class Parts:
    """What a command's module provides: examples, its flags and what it does."""

    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: Optional[str] = None


@dataclass(frozen=True)
class Command:
    """One ``tracklane`` subcommand: its name and help line here, the rest in its module,
    imported by ``load`` only when the command runs or shows its help (``tracklane
    --version``, ``--help`` and each command start without importing the others)."""

    name: str
    help: str
    load: Callable[[], Parts]


def _load_send() -> Parts:
    from tracklane.cli import _send

    return Parts(_send.EXAMPLES, _send.add_send_arguments, _send.run, _send.DESCRIPTION)


def _load_typed(kind: str) -> Callable[[], Parts]:
    def load() -> Parts:
        from tracklane.cli import _send

        return Parts(_send.TYPED_EXAMPLES[kind], _send.typed_arguments(kind), _send.run)

    return load


def _load_import() -> Parts:
    from tracklane.cli import _import

    return Parts(_import.EXAMPLES, _import.add_import_arguments, _import.run, _import.DESCRIPTION)


def _load_tail() -> Parts:
    from tracklane.cli import _tail

    return Parts(_tail.EXAMPLES, _tail.add_tail_arguments, _tail.run)


def _load_doctor() -> Parts:
    from tracklane.cli import _doctor

    return Parts(_doctor.EXAMPLES, _doctor.add_doctor_arguments, _doctor.run, _doctor.DESCRIPTION)


def _load_e2e() -> Parts:
    from tracklane.cli import _e2e

    return Parts(_e2e.EXAMPLES, _e2e.add_e2e_arguments, _e2e.run)


def _load_serve() -> Parts:
    from tracklane.collector._options import add_serve_arguments, serve

    return Parts(
        "  tracklane serve --port 8787 --db events.db --write-key dev-key",
        add_serve_arguments,
        serve,
        "Run a local collector for Segment's HTTP Tracking API (events in SQLite).",
    )


def _load_status() -> Parts:
    from tracklane.collector import _admin

    return Parts(
        "  tracklane status --url http://127.0.0.1:8787\n"
        "  tracklane status --url http://127.0.0.1:8787 --json",
        _admin.add_status_arguments,
        _admin.status,
    )


def _load_replay() -> Parts:
    from tracklane.collector import _admin

    return Parts(
        "  tracklane replay --url http://127.0.0.1:8787 --destination Hooks",
        _admin.add_replay_arguments,
        _admin.replay,
    )


def _load_completion() -> Parts:
    from tracklane.cli._completion import add_completion_arguments, run_completion

    return Parts(
        '  eval "$(tracklane completion bash)"     # in ~/.bashrc\n'
        "  tracklane completion fish > ~/.config/fish/completions/tracklane.fish",
        add_completion_arguments,
        run_completion,
    )


COMMANDS: Tuple[Command, ...] = (
    Command(
        "send",
        "send one message (analytics-ruby's flags), exit 0 once the server accepted it",
        _load_send,
    ),
    *(
        Command(
            kind,
            f"send one {kind} message (send --type={kind}, flags spelled --user-id ...)",
            _load_typed(kind),
        )
        for kind in TYPES
    ),
    Command(
        "import",
        "import JSON Lines or CSV files (gzip too), resumable, with progress",
        _load_import,
    ),
    Command("tail", "follow the events arriving at a tracklane collector", _load_tail),
    Command(
        "doctor", "check write key, DNS, TLS, proxy and a test event; say what to fix", _load_doctor
    ),
    Command(
        "e2e",
        "run Segment's cross-SDK e2e contract (--input JSON, result JSON on stdout)",
        _load_e2e,
    ),
    Command("serve", "run the local collector (stores events in SQLite)", _load_serve),
    Command(
        "status",
        "show each destination's delivery status (delivered, pending, dead letters, lag)",
        _load_status,
    ),
    Command("replay", "send a destination's dead letters again", _load_replay),
    Command("completion", "print the shell completion script (bash, zsh, fish)", _load_completion),
)


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``tracklane`` parser: every command with its flags, or, given ``only``, that
    command with its flags and the others by name and help line (nothing imported)."""
    parser = argparse.ArgumentParser(
        prog="tracklane",
        description="tracklane: server-side analytics for Segment's HTTP Tracking API.",
        epilog="Run 'tracklane COMMAND --help' for a command's flags and examples.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"tracklane {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        if only is not None and command.name != only:
            commands.add_parser(command.name, help=command.help, add_help=False)
            continue
        parts = command.load()
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=parts.description or command.help[:1].upper() + command.help[1:] + ".",
            epilog="examples:\n" + parts.examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        parts.add_arguments(sub)
        sub.set_defaults(run=parts.run)
    return parser


def _command_in(argv: Sequence[str]) -> str:
    """The command named on the line (its first word that is not a flag), or ""."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``tracklane`` command line and return its exit code."""
    # The commands report every failure themselves, in one line each; the library's own
    # warnings would repeat them (Python prints them when no handler is configured).
    logging.getLogger("tracklane").addHandler(logging.NullHandler())
    if "_ARGCOMPLETE" in os.environ:  # a shell asks for completions: answer and exit
        from tracklane.cli._completion import complete

        complete(build_parser())
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_in(words))
    args, extras = parser.parse_known_args(argv)
    if extras:
        # `tracklane import a.jsonl --writeKey K b.jsonl`: argparse stops collecting a
        # command's files at the first flag; the files after it belong to the same list.
        collects = getattr(args, "collects", None)
        if collects is None or any(extra.startswith("-") and extra != "-" for extra in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        getattr(args, collects).extend(extras)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tracklane tail | head`: the reader left; not an error
        _quiet_stdout()
        return 0
    return code


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a descriptor
        pass
