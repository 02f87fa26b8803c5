"""Shell completion with argcomplete (the ``cli`` extra)."""

from __future__ import annotations

import argparse
import sys

from tracklane.cli._common import CLI_INSTALL_HINT

__all__ = ["add_completion_arguments", "complete", "run_completion"]

SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")


def add_completion_arguments(parser: argparse.ArgumentParser) -> None:
    """``tracklane completion SHELL``."""
    parser.add_argument("shell", choices=SHELLS, help="the shell to print the script for")


def run_completion(args: argparse.Namespace) -> int:
    """Print the completion script of ``args.shell``."""
    try:
        import argcomplete
    except ImportError:
        print(
            f"tracklane completion: shell completion needs argcomplete: {CLI_INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(
        argcomplete.shellcode(  # type: ignore[attr-defined]
            ["tracklane"], shell=args.shell
        )
    )
    return 0


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request (``$_ARGCOMPLETE`` is set) and exit."""
    try:
        import argcomplete
    except ImportError:  # no extra: no completions, and no traceback in the shell
        sys.exit(1)
    argcomplete.autocomplete(parser)
