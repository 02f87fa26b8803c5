"""The ``tracklane`` command itself: --version, help with examples, completion, extras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import tracklane
from tracklane.cli import COMMANDS, main

from .conftest import cli_env, run_cli, tracklane_command


def test_version() -> None:
    """``tracklane --version`` prints the package version."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"tracklane {tracklane.__version__}"


def test_help_lists_every_command() -> None:
    """``tracklane --help`` names every command."""
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("send", "track", "alias", "import", "tail", "doctor", "e2e", "serve"):
        assert f"    {name}" in result.stdout


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_command_has_help_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command's --help ends with examples that use the command."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    examples = capsys.readouterr().out.split("examples:\n", 1)[1]
    assert f"tracklane {command}" in examples


def test_no_command_prints_help_and_exits_2() -> None:
    """``tracklane`` alone prints the usage and exits 2."""
    result = run_cli()
    assert result.returncode == 2
    assert "COMMAND" in result.stderr


def _complete(line: str, tmp_path: Path) -> List[str]:
    """Ask the entry point for completions as bash does (argcomplete's protocol)."""
    out = tmp_path / "completions.txt"
    env = cli_env(
        _ARGCOMPLETE="1",
        _ARGCOMPLETE_SHELL="bash",
        COMP_LINE=line,
        COMP_POINT=str(len(line)),
        COMP_TYPE="9",
        _ARGCOMPLETE_STDOUT_FILENAME=str(out),
        _ARGCOMPLETE_IFS="\n",
    )
    result = subprocess.run(
        tracklane_command(), env=env, capture_output=True, text=True, timeout=60, stdin=None
    )
    assert result.returncode == 0, result.stderr
    return sorted(filter(None, out.read_text().split("\n")))


def test_completion_of_commands_and_flags(tmp_path: Path) -> None:
    """Tab completion offers the commands, then a command's flags (analytics-ruby's spelling)."""
    assert _complete("tracklane s", tmp_path) == ["screen", "send", "serve", "status"]
    flags = _complete("tracklane send --user", tmp_path)
    assert [flag.strip() for flag in flags] == ["--userId"]
    types = _complete("tracklane send --type ", tmp_path)
    assert types == ["alias", "group", "identify", "page", "screen", "track"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script(shell: str) -> None:
    """``tracklane completion SHELL`` prints a script that calls back into tracklane."""
    result = run_cli("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "tracklane" in result.stdout
    assert "_ARGCOMPLETE" in result.stdout


def _without(modules: List[str], argv: List[str]) -> subprocess.CompletedProcess[str]:
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    code = f"import sys; {blocked}; from tracklane.cli import main; sys.exit(main({argv!r}))"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60
    )


def test_missing_extra_prints_the_install_hint(tmp_path: Path) -> None:
    """Without the cli extra, completion says how to install it (exit 2) and a progress bar
    falls back to plain lines with the same hint."""
    result = _without(["argcomplete"], ["completion", "bash"])
    assert result.returncode == 2
    assert "pip install 'tracklane[cli]'" in result.stderr
    assert "Traceback" not in result.stderr
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"type": "track", "userId": "u", "event": "E"}) + "\n")
    dry = _without(["rich"], ["import", "--dry-run", "--progress=bar", str(path)])
    assert dry.returncode == 0, dry.stderr
    bar = _without(
        ["rich"],
        [
            "import",
            "--progress=bar",
            "--writeKey=k",
            "--host=http://127.0.0.1:9",
            "--retries=0",
            str(path),
        ],
    )
    assert "pip install 'tracklane[cli]'" in bar.stderr


def test_cli_imports_no_extra_until_needed() -> None:
    """Importing ``tracklane.cli`` loads neither rich, argcomplete, starlette nor uvicorn."""
    code = (
        "import sys, tracklane.cli; "
        "print(sorted(m for m in ('rich', 'argcomplete', 'starlette', 'uvicorn') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_python_m_runs_the_same_command() -> None:
    """``python -m tracklane.cli`` is the same command as the script."""
    result = subprocess.run(
        [sys.executable, "-m", "tracklane.cli", "--version"],
        capture_output=True,
        text=True,
        env={**cli_env(), "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=60,
    )
    assert result.stdout.strip() == f"tracklane {tracklane.__version__}"
