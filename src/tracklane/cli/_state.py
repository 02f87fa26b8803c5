"""The importer's state file: how far each input got, written only after the server
acknowledged everything up to there.

One JSON document, replaced atomically (write, fsync, rename), so a kill at any moment
leaves either the previous state or the new one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

__all__ = ["Progress", "StateError", "StateFile"]

VERSION = 1


class StateError(Exception):
    """The state file cannot be used (unreadable, or written for another file)."""


@dataclass
class Progress:
    """One input's progress: ``done`` records are acknowledged (or rejected or skipped)."""

    done: int = 0
    sent: int = 0
    rejected: int = 0
    skipped: int = 0
    fingerprint: Optional[str] = None
    reasons: Dict[str, int] = field(default_factory=dict)

    def copy(self) -> Progress:
        """An independent copy."""
        return Progress(
            self.done, self.sent, self.rejected, self.skipped, self.fingerprint, dict(self.reasons)
        )


class StateFile:
    """A state file holding the progress of one or more inputs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.inputs: Dict[str, Progress] = {}
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read the state file {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise StateError(f"{path} is not a tracklane import state file (version {VERSION})")
        for name, entry in (data.get("inputs") or {}).items():
            try:
                self.inputs[name] = Progress(**entry)
            except TypeError as exc:
                raise StateError(f"{path}: bad entry for {name}: {exc}") from exc

    def get(self, name: str) -> Optional[Progress]:
        """The saved progress of ``name``, if any."""
        saved = self.inputs.get(name)
        return None if saved is None else saved.copy()

    def save(self, name: str, progress: Progress) -> None:
        """Record ``progress`` for ``name`` durably (atomic replace)."""
        self.inputs[name] = progress.copy()
        document: Dict[str, Any] = {
            "version": VERSION,
            "inputs": {key: asdict(value) for key, value in self.inputs.items()},
        }
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
