"""pytest plugin (the ``pytest11`` entry point): the ``tracklane_events`` fixture."""

from __future__ import annotations

from typing import Iterator

import pytest

from . import CapturedEvents, capture


@pytest.fixture
def tracklane_events() -> Iterator[CapturedEvents]:
    """Capture what the module-level tracklane client is asked to send during one test."""
    with capture() as events:
        yield events
