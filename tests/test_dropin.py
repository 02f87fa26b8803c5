"""Code written for segment-analytics-python, run with only the import changed.

First segment's own module tests (``segment/analytics/test/test_init.py`` and
``test_module.py``, read from the installed package) with ``import segment.analytics as
analytics`` replaced by ``import tracklane as analytics``; then unittest cases written the
way a segment user writes them (``assertRaises(AssertionError, ...)``, module settings,
``client.log.setLevel``), each against a recording server on 127.0.0.1.
"""

from __future__ import annotations

import gzip as gzip_module
import importlib.util
import logging
import types
import unittest
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import tracklane
from helpers import RecordingServer

SEGMENT_TESTS = Path(importlib.util.find_spec("segment.analytics").origin).parent / "test"
SETTINGS = sorted(
    name
    for name in tracklane.Options.accepted_names() | {"write_key", "default_client"}
    if hasattr(tracklane, name)
)

# segment's tests that read its internals: documented in the README's migration table.
NEEDS_SEGMENT_INTERNALS = {
    "test_max_queue_size": "client.queue",
    "test_max_retries": "client.consumers",
}


@pytest.fixture
def module_state(monkeypatch, server: RecordingServer) -> Iterator[RecordingServer]:
    """Every module setting restored afterwards; the environment's host is the local server."""
    for name in SETTINGS:
        monkeypatch.setattr(tracklane, name, getattr(tracklane, name))
    monkeypatch.setattr(tracklane, "default_client", None)
    for name in ("TRACKLANE_WRITE_KEY", "SEGMENT_WRITE_KEY", "TRACKLANE_SYNC_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRACKLANE_HOST", server.url)
    yield server
    client = tracklane.default_client
    if client is not None:
        client.shutdown(timeout=2)
    logging.getLogger("tracklane").setLevel(logging.NOTSET)


def segment_test_module(name: str) -> types.ModuleType:
    """One of segment's test modules, with its imports pointed at tracklane."""
    source = (SEGMENT_TESTS / f"{name}.py").read_text()
    for original, replacement in [
        ("import segment.analytics as analytics", "import tracklane as analytics"),
        ("from segment.analytics.client import Client", "from tracklane import Client"),
    ]:
        source = source.replace(original, replacement)
    assert "import segment" not in source
    assert "from segment" not in source
    module = types.ModuleType(f"segment_{name}_on_tracklane")
    module.__dict__["__path__"] = []
    exec(compile(source, f"<segment {name} on tracklane>", "exec"), module.__dict__)
    return module


def run_unittest(module: types.ModuleType) -> Dict[str, str]:
    """Run a module's TestCases; the outcome of each test by method name."""
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    outcomes = {test.id().rsplit(".", 1)[-1]: "passed" for test in _tests(suite)}
    result = unittest.TestResult()
    suite.run(result)
    for test, trace in result.errors + result.failures:
        outcomes[test.id().rsplit(".", 1)[-1]] = trace.strip().splitlines()[-1]
    return outcomes


def _tests(suite: unittest.TestSuite) -> List[unittest.TestCase]:
    found: List[unittest.TestCase] = []
    for item in suite:
        found.extend(_tests(item) if isinstance(item, unittest.TestSuite) else [item])
    return found


def test_segments_own_module_tests_pass_on_tracklane(module_state):
    """segment's test_module.py passes unchanged but for the import (on_error = False too)."""
    outcomes = run_unittest(segment_test_module("test_module"))
    assert outcomes
    assert set(outcomes.values()) == {"passed"}, outcomes
    events = {m["type"] for m in module_state.accepted()}
    assert events == {"track", "identify", "group", "alias", "page", "screen"}


def test_segments_own_init_tests_pass_on_tracklane(module_state):
    """segment's test_init.py (module settings reach the default client that flush() builds)
    passes, but for the two tests that read segment's internals."""
    outcomes = run_unittest(segment_test_module("test_init"))
    failed = {name: outcome for name, outcome in outcomes.items() if outcome != "passed"}
    assert set(failed) == set(NEEDS_SEGMENT_INTERNALS), failed
    for name, attribute in NEEDS_SEGMENT_INTERNALS.items():
        assert f"has no attribute '{attribute.split('.')[1]}'" in failed[name]
    assert len(outcomes) - len(failed) >= 6


# -- written the way a segment user writes tests --------------------------------------------


class SegmentStyleTest(unittest.TestCase):
    """A recording server per test; module settings saved and restored."""

    def setUp(self) -> None:
        self.server = RecordingServer()
        self.saved = {name: getattr(tracklane, name) for name in SETTINGS}
        tracklane.default_client = None
        tracklane.write_key = "segment-style-key"
        tracklane.host = self.server.url

    def tearDown(self) -> None:
        client = tracklane.default_client
        if client is not None:
            client.shutdown(timeout=2)
        for name, value in self.saved.items():
            setattr(tracklane, name, value)
        self.server.close()


class TestArgumentErrors(SegmentStyleTest):
    """Point 1: every argument check raises AssertionError, as segment's do."""

    def test_missing_write_key(self) -> None:
        """Client() and Client(None) raise AssertionError (and ValueError)."""
        self.assertRaises(AssertionError, tracklane.Client)
        self.assertRaises(AssertionError, tracklane.Client, None)
        self.assertRaises(ValueError, tracklane.Client, None)

    def test_invalid_calls(self) -> None:
        """Each invalid call raises AssertionError; nothing invalid is sent."""
        client = tracklane.Client("k", host=self.server.url)
        invalid: List[Any] = [
            lambda: client.track(None, "Event"),
            lambda: client.track("u", None),
            lambda: client.track("u", "Event", properties="not a dict"),
            lambda: client.track("u", "Event", context=["no"]),
            lambda: client.track("u", "Event", integrations="no"),
            lambda: client.track("u", "Event", timestamp=12),
            lambda: client.identify(None, {"a": 1}),
            lambda: client.identify("u", traits=[1]),
            lambda: client.group("u", None),
            lambda: client.alias(None, "u"),
            lambda: client.page("u", name=5),
            lambda: client.screen("u", category=["x"]),
        ]
        for number, call in enumerate(invalid):
            with self.subTest(number=number):
                self.assertRaises(AssertionError, call)
        success, _ = client.track("u", "Valid")
        self.assertTrue(success)
        self.assertTrue(client.flush(timeout=5))
        self.assertEqual([m["event"] for m in self.server.accepted()], ["Valid"])
        client.shutdown(timeout=2)

    def test_module_level_invalid_call(self) -> None:
        """The module functions raise AssertionError too; except AssertionError catches it."""
        try:
            tracklane.track(event="No user")
        except AssertionError as exc:
            self.assertIn("user_id", str(exc))
        else:
            self.fail("no AssertionError")


class TestClientAttributes(SegmentStyleTest):
    """Point 2: segment's public Client attributes, with segment's values."""

    def test_attributes(self) -> None:
        """The attributes read back what was configured; send is the opposite of stub."""

        def on_error(exc: BaseException, batch: List[Dict[str, Any]]) -> None:
            pass

        client = tracklane.Client(
            "attr-key", host=self.server.url, gzip=True, timeout=7, on_error=on_error
        )
        self.assertEqual(client.write_key, "attr-key")
        self.assertEqual(client.host, self.server.url)
        self.assertEqual((client.gzip, client.timeout, client.debug), (True, 7, False))
        self.assertEqual((client.send, client.sync_mode, client.max_retries), (True, False, 10))
        self.assertIs(client.on_error, on_error)
        self.assertIsNone(client.proxies)
        client.log.setLevel(logging.WARNING)
        self.assertEqual(logging.getLogger("tracklane").level, logging.WARNING)
        client.log.setLevel(logging.NOTSET)
        client.track("u", "Gzipped")
        self.assertTrue(client.flush(timeout=5))
        request = self.server.requests[0]
        self.assertEqual(request.headers["content-encoding"], "gzip")
        self.assertIn(b"Gzipped", gzip_module.decompress(request.raw))
        client.shutdown(timeout=2)
        self.assertIsNone(tracklane.Client("k", send=False).host)
        self.assertFalse(tracklane.Client("k", stub=True).send)


class TestModuleDefaultClient(SegmentStyleTest):
    """Point 3: flush/join/shutdown build the default client from the module settings."""

    def test_flush_join_shutdown_build_the_default_client(self) -> None:
        """Each of them builds the client, which then has the module's write key."""
        for function in (tracklane.flush, tracklane.join, tracklane.shutdown):
            tracklane.default_client = None
            function()
            self.assertEqual(tracklane.default_client.write_key, "segment-style-key")

    def test_settings_reach_the_default_client(self) -> None:
        """host, gzip, sync_mode, timeout, max_queue_size, upload_size... all apply."""
        tracklane.gzip = True
        tracklane.sync_mode = True
        tracklane.timeout = 3.5
        tracklane.max_queue_size = 77
        tracklane.upload_size = 20
        tracklane.decimal_as = "number"
        tracklane.flush()
        client = tracklane.default_client
        self.assertEqual((client.gzip, client.sync_mode, client.timeout), (True, True, 3.5))
        self.assertEqual((client.options.max_queue_size, client.options.batch_size), (77, 20))
        success, _ = tracklane.track("u", "Inline", {"price": Decimal("9.90")})
        self.assertTrue(success)  # sync_mode: delivered in the call
        self.assertEqual(self.server.requests[0].headers["content-encoding"], "gzip")
        self.assertIn(b'"price":9.90', self.server.requests[0].body)

    def test_settings_changed_after_shutdown_apply_to_the_next_client(self) -> None:
        """After shutdown() the next call builds a new client from the current settings."""
        tracklane.track("u", "First")
        tracklane.shutdown()
        first = tracklane.default_client
        other = RecordingServer()
        try:
            tracklane.host = other.url
            tracklane.track("u", "Second")
            tracklane.flush()
            self.assertIsNot(tracklane.default_client, first)
            self.assertEqual([m["event"] for m in self.server.accepted()], ["First"])
            self.assertEqual([m["event"] for m in other.accepted()], ["Second"])
        finally:
            tracklane.shutdown()
            other.close()

    def test_no_write_key_anywhere(self) -> None:
        """Without a write key a call raises AssertionError; flush() has nothing to do."""
        tracklane.write_key = None
        self.assertRaises(AssertionError, tracklane.track, "u", "E")
        self.assertTrue(tracklane.flush())
        self.assertIsNone(tracklane.default_client)


class TestFalsyOnError(SegmentStyleTest):
    """Point 4: on_error=None or False means no handler, as in segment."""

    def test_falsy_on_error_is_no_handler(self) -> None:
        """A rejected batch with on_error=False is counted and nothing raises."""
        for value in (None, False, 0, ""):
            with self.subTest(on_error=value):
                self.server.reset()
                self.server.statuses(400)
                client = tracklane.Client("k", host=self.server.url, on_error=value)
                self.assertTrue(client.track("u", "Rejected")[0])
                self.assertTrue(client.flush(timeout=5))
                self.assertEqual(client.stats().dropped, {"rejected": 1})
                client.shutdown(timeout=2)

    def test_module_on_error_false(self) -> None:
        """analytics.on_error = False (segment's own tests do this) is accepted."""
        tracklane.on_error = False
        tracklane.track("u", "Fine")
        self.assertTrue(tracklane.flush())
        self.assertEqual(len(self.server.accepted()), 1)

    def test_truthy_non_callable_is_refused(self) -> None:
        """Only a truthy non-callable is refused, naming on_error."""
        with self.assertRaisesRegex(tracklane.ConfigurationError, "on_error"):
            tracklane.Client("k", on_error="log it")
