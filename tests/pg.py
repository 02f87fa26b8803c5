"""Debian's PostgreSQL server, started for the tests in a temporary directory.

``PostgresServer.start()`` finds ``initdb``/``pg_ctl`` on PATH or in
``/usr/lib/postgresql/*/bin`` (newest first), creates a cluster in a fresh temporary
directory and runs it on 127.0.0.1 and a free port, TCP only (no Unix socket), with
``trust`` authentication for the superuser ``postgres``. ``initdb`` refuses to run as
root, so as root the cluster is created and run as the unprivileged user ``nobody``
(by ``subprocess``'s ``user=``/``group=``, no su/sudo needed); as any other user it
runs as that user. ``stop()`` shuts it down (``pg_ctl stop -m fast``, then
``immediate``) and removes the directory.

Used by the ``postgres`` fixture in ``tests/conftest.py`` and by the collector bench.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

from helpers import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bin_dir"]

_UNPRIVILEGED = "nobody"
_START_TIMEOUT = 60.0


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed here (tests skip, saying so)."""


def find_bin_dir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    on_path = shutil.which("initdb")
    candidates: List[Path] = [Path(on_path).parent] if on_path else []

    def version(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        candidates.append(Path(found))
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
        "/usr/lib/postgresql/*/bin; install them with `apt-get install postgresql`"
    )


class PostgresServer:
    """One throw-away PostgreSQL cluster; ``dsn`` points at its ``postgres`` database."""

    def __init__(self, *, durable: bool = False) -> None:
        """Prepare (not start) a cluster; ``durable=False`` turns fsync off for speed."""
        self.bin_dir = find_bin_dir()
        self.durable = durable
        self.port = 0
        self._dir: Optional[Path] = None
        self._user: Optional[str] = _UNPRIVILEGED if os.geteuid() == 0 else None

    @property
    def data_dir(self) -> Path:
        assert self._dir is not None, "the server is not started"
        return self._dir / "data"

    @property
    def dsn(self) -> str:
        """The connection URL of the ``postgres`` database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The connection URL of ``database`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = _START_TIMEOUT) -> str:
        kwargs: Dict[str, object] = {}
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
        }
        result = subprocess.run(  # type: ignore[call-overload]
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(self._dir),
            check=False,
            **kwargs,
        )
        if result.returncode != 0:
            log = self._log_tail()
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log}"
            )
        return str(result.stdout)

    def _log_tail(self) -> str:
        if self._dir is None:
            return ""
        log = self._dir / "server.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def start(self) -> PostgresServer:
        """Create the cluster and start the server; returns self once it accepts connections."""
        self._dir = Path(tempfile.mkdtemp(prefix="tracklane-pg-"))
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            *([] if self.durable else ["--no-sync"]),
        )
        settings = [
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",
            "-c max_connections=100",
        ]
        if not self.durable:
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        last_error: Optional[Exception] = None
        for _ in range(3):  # another process may take the free port before the server binds it
            self.port = free_port()
            try:
                self._run(
                    "pg_ctl",
                    "start",
                    "-w",
                    "-t",
                    str(int(_START_TIMEOUT)),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self._dir / "server.log"),
                    "-o",
                    " ".join([f"-c port={self.port}", *settings]),
                )
                return self
            except RuntimeError as exc:
                last_error = exc
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def restart(self) -> None:
        """Restart the server (fast shutdown: open connections are cut)."""
        assert self._dir is not None, "the server is not started"
        log = str(self._dir / "server.log")  # without -l the server would hold our stdout pipe
        self._run("pg_ctl", "restart", "-w", "-m", "fast", "-D", str(self.data_dir), "-l", log)

    def create_database(self, prefix: str = "t") -> str:
        """Create a fresh empty database and return its DSN."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def stop(self) -> None:
        """Stop the server and remove its directory; idempotent."""
        if self._dir is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            for mode in ("fast", "immediate"):
                try:
                    self._run(
                        "pg_ctl", "stop", "-w", "-t", "30", "-m", mode, "-D", str(self.data_dir)
                    )
                    break
                except (RuntimeError, subprocess.TimeoutExpired):
                    continue
        deadline = time.monotonic() + 10
        while (self.data_dir / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def sessions_waiting_on_locks(dsn: str) -> int:
    """How many sessions of ``dsn``'s database wait for a lock right now."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(found[0]) if found else 0
