"""The routing config file: what is accepted, and errors that name the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tracklane.collector.config import ConfigError, load_config

GOOD = """
[[sources]]
name = "backend"
write_keys = ["key-1"]

[[destinations]]
name = "Hooks"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
secret = "s3cret"
sources = ["backend"]
batch_size = 20
headers = { "X-Team" = "growth" }

[[destinations]]
name = "Segment"
type = "relay"
url = "https://api.segment.io"
write_key = "upstream"

[[filters]]
destination = "Hooks"
drop_events = ["Debug *"]
drop_types = ["page"]
drop_properties = ["email", "phone"]
"""


def test_a_full_config_is_read_with_defaults_filled(tmp_path: Path) -> None:
    """Every documented key is accepted and defaults are filled in."""
    path = tmp_path / "tracklane.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert [s.name for s in config.sources] == ["backend"]
    hooks, relay = config.destinations
    assert hooks.settings["batch_size"] == 20
    assert hooks.settings["timeout"] == 10.0
    assert hooks.settings["headers"] == (("X-Team", "growth"),)
    assert hooks.sources == frozenset({"backend"})
    assert relay.sources is None
    assert relay.max_attempts == 10
    (rule,) = config.filters
    assert rule.drops_event({"type": "track", "event": "Debug cache"})
    assert not rule.drops_event({"type": "track", "event": "debug cache"})  # case-sensitive
    assert rule.drops_event({"type": "page", "name": "Home"})
    assert config.source_of() == {"key-1": "backend"}


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (('secret = "s3cret"', 'secrett = "x"'), "destinations[0].secrett", "unknown key"),
        (('url = "http://127.0.0.1:9000/hook"', ""), "destinations[0].url", "is required"),
        (
            ('url = "http://127.0.0.1:9000/hook"', 'url = "ftp://x"'),
            "destinations[0].url",
            "http:// or https:// URL",
        ),
        (("batch_size = 20", "batch_size = 0"), "destinations[0].batch_size", "from 1 to 1000"),
        (('type = "relay"', 'type = "kafka"'), "destinations[1].type", "unknown type"),
        (('sources = ["backend"]', 'sources = ["web"]'), "destinations[0].sources", "'web'"),
        (('name = "Segment"', 'name = "Hooks"'), "destinations[1].name", "already"),
        (('drop_types = ["page"]', 'drop_types = ["pages"]'), "filters[0].drop_types", "'pages'"),
        (('destination = "Hooks"', 'destination = "hooks"'), "filters[0].destination", "'hooks'"),
        (('write_key = "upstream"', "write_key = 3"), "destinations[1].write_key", "string"),
        (("[[sources]]", "[[source]]"), "source", "unknown key"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(
    tmp_path: Path, change: tuple[str, str], key: str, problem: str
) -> None:
    """An unknown key, a missing field or a bad value raises ConfigError naming file and key."""
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*change, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {key}: "), str(caught.value)
    assert problem in str(caught.value)


def test_invalid_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and where it is."""
    path = tmp_path / "broken.toml"
    path.write_text('[[destinations]]\nname = "x\n')
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML: .*line 2"):
        load_config(path)


def test_serve_with_a_bad_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    """``tracklane serve --config`` refuses to start on a bad value, saying where it is."""
    path = tmp_path / "tracklane.toml"
    path.write_text(GOOD.replace("batch_size = 20", 'batch_size = "many"'))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracklane._cli",
            "serve",
            "--config",
            str(path),
            "--db",
            str(tmp_path / "e.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{path}: destinations[0].batch_size: must be a whole number" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "e.db").exists()


@pytest.mark.parametrize(
    ("outbox", "key", "problem"),
    [
        ("[outbox]\nlease_seconds = 0\n", "outbox.lease_seconds", "seconds above 0"),
        ("[outbox]\nlease = 5\n", "outbox.lease", "unknown key"),
        ('outbox = "x"\n', "outbox", "must be a table"),
    ],
)
def test_a_bad_outbox_table_names_the_key(
    tmp_path: Path, outbox: str, key: str, problem: str
) -> None:
    """[outbox] accepts lease_seconds (seconds, positive) and nothing else."""
    path = tmp_path / "bad.toml"
    path.write_text(outbox + GOOD)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {key}: "), str(caught.value)
    assert problem in str(caught.value)
    path.write_text("[outbox]\nlease_seconds = 4.5\n" + GOOD)
    assert load_config(path).lease_seconds == 4.5
