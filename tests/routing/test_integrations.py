"""``integrations`` as Segment applies it, through a running collector with four destinations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from tracklane.collector import serve_in_thread
from tracklane.collector._routing import integration_choice

from .recorder import RecorderDestination
from .support import config_of, destinations_status, post_batch, track, wait_until

NAMES = ("Hooks", "Warehouse", "Segment", "Mixpanel")

# integrations object -> the destinations that must receive the message
MATRIX: Dict[str, Any] = {
    "default": (None, {"Hooks", "Warehouse", "Segment", "Mixpanel"}),
    "all true": ({"All": True}, {"Hooks", "Warehouse", "Segment", "Mixpanel"}),
    "All false plus one": ({"All": False, "Hooks": True}, {"Hooks"}),
    "All false plus options": ({"All": False, "Segment": {"region": "eu"}}, {"Segment"}),
    "one false": ({"Warehouse": False}, {"Hooks", "Segment", "Mixpanel"}),
    "wrong case": ({"All": False, "hooks": True, "WAREHOUSE": True}, set()),
    "wrong case false": ({"hooks": False}, {"Hooks", "Warehouse", "Segment", "Mixpanel"}),
    "unknown name": (
        {"Amplitude": False, "Intercom": True},
        {"Hooks", "Warehouse", "Segment", "Mixpanel"},
    ),
    "options keep it on": (
        {"Mixpanel": {"people": True}},
        {"Hooks", "Warehouse", "Segment", "Mixpanel"},
    ),
}


def test_integrations_matrix_reaches_exactly_the_right_destinations(tmp_path: Path) -> None:
    """Each integrations object reaches exactly the destinations Segment's rules pick."""
    names = [f"{name}" for name in NAMES]
    config = config_of(
        {
            "sources": [{"name": "backend", "write_keys": ["key-1"]}],
            "destinations": [{"name": name, "type": "recorder"} for name in names],
        }
    )
    for name in names:
        RecorderDestination.seen.pop(name, None)
    expected: Dict[str, set[str]] = {name: set() for name in names}
    messages = []
    for case, (integrations, targets) in MATRIX.items():
        extra = {} if integrations is None else {"integrations": integrations}
        message = track(event=case, **extra)
        messages.append(message)
        for target in targets:
            expected[target].add(message["messageId"])
    with serve_in_thread(tmp_path / "events.db", config=config) as server:
        post_batch(server.url, "key-1", messages)
        wait_until(
            lambda: all(
                s["pending"] == 0 for s in destinations_status(server.url, "key-1").values()
            ),
            20,
            "every destination to handle the batch",
        )
        status = destinations_status(server.url, "key-1")
    for name in names:
        assert set(RecorderDestination.ids(name)) == expected[name], name
        assert len(RecorderDestination.ids(name)) == len(expected[name])
        assert status[name]["delivered"] == len(expected[name])
        assert status[name]["skipped"] == len(messages) - len(expected[name])
    (segment,) = [e for e in RecorderDestination.seen["Segment"] if e.options is not None]
    assert segment.options == {"region": "eu"}
    assert segment.source == "backend"
    (mixpanel,) = [e for e in RecorderDestination.seen["Mixpanel"] if e.options is not None]
    assert mixpanel.options == {"people": True}
    assert all(e.options is None for e in RecorderDestination.seen["Hooks"])


@pytest.mark.parametrize(
    ("integrations", "enabled", "options"),
    [
        (None, True, None),
        ("not an object", True, None),
        ({}, True, None),
        ({"All": False}, False, None),
        ({"All": False, "Hooks": True}, True, None),
        ({"All": False, "Hooks": {"a": 1}}, True, {"a": 1}),
        ({"Hooks": False}, False, None),
        ({"All": True, "Hooks": False}, False, None),
        ({"All": False, "hooks": True}, False, None),
        ({"Hooks": None}, False, None),
    ],
)
def test_integration_choice(
    integrations: Any, enabled: bool, options: Optional[Dict[str, Any]]
) -> None:
    """``integration_choice`` follows Segment's rules for the destination named ``Hooks``."""
    assert integration_choice(integrations, "Hooks") == (enabled, options)
