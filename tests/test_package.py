"""The installed package: public names, module names, imports, typing marker, version."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import inspect
import json
import pickle
import subprocess
import sys

import pytest

import tracklane

HEAVY = ("starlette", "uvicorn", "click", "rich", "requests", "django", "flask", "celery", "kombu")


def test_all_is_sorted():
    """__all__ is sorted (as ruff's RUF022 and readers expect) and has no duplicates."""
    assert list(tracklane.__all__) == sorted(tracklane.__all__)
    assert len(set(tracklane.__all__)) == len(tracklane.__all__)


@pytest.mark.parametrize("name", tracklane.__all__)
def test_every_public_name_exists(name):
    """Every name in __all__ is an attribute of the package."""
    assert hasattr(tracklane, name), f"tracklane.{name} is listed in __all__ but missing"


def test_star_import_gives_exactly_all():
    """`from tracklane import *` gives exactly the names of __all__."""
    namespace: dict = {}
    exec("from tracklane import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(tracklane.__all__)


def test_module_level_api_is_public():
    """The segment-style module-level functions are exported and callable."""
    for name in ("identify", "track", "page", "screen", "group", "alias", "flush", "shutdown"):
        assert name in tracklane.__all__
        assert callable(getattr(tracklane, name))


PUBLIC_CLASSES = [
    name for name in tracklane.__all__ if inspect.isclass(getattr(tracklane, name, None))
]


def test_public_classes_live_in_tracklane():
    """Public classes (exceptions included) show __module__ == "tracklane" in reprs/tracebacks."""
    elsewhere = {
        name: getattr(tracklane, name).__module__
        for name in PUBLIC_CLASSES
        if getattr(tracklane, name).__module__ != "tracklane"
    }
    assert elsewhere == {}
    assert all(getattr(tracklane, name).__qualname__ == name for name in PUBLIC_CLASSES)


def test_core_classes_are_listed():
    """The classes users need are all public."""
    expected = {"Client", "Options", "Stats", "FlushResult", "DropReason", "OverflowPolicy"}
    expected |= {"ValidationError", "ConfigurationError", "DeliveryError", "APIError"}
    assert expected <= set(PUBLIC_CLASSES)


EXCEPTIONS = [
    tracklane.ValidationError("user_id", "is required"),
    tracklane.ConfigurationError("host: bad"),
    tracklane.MessageTooLargeError(40_000, 32_768),
    tracklane.APIError(429, "slow down", 1.5),
    tracklane.QueueFullError("queue full"),
    tracklane.RetriesExhaustedError("gave up"),
]


@pytest.mark.parametrize("error", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_public_exceptions_survive_pickling(error):
    """Exceptions pickle and unpickle intact (multiprocessing, Celery, concurrent.futures)."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def _imported_modules(code: str) -> list:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


def test_import_does_not_pull_heavy_dependencies():
    """`import tracklane` imports none of starlette, uvicorn, click, rich or requests."""
    modules = _imported_modules("import tracklane")
    assert "tracklane" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []


def test_testing_helpers_do_not_need_pytest():
    """`import tracklane.testing` works without importing pytest (unittest suites use capture)."""
    modules = _imported_modules("import tracklane.testing")
    assert "tracklane.testing" in modules
    assert "pytest" not in modules
    assert "_pytest" not in modules


def test_py_typed_is_shipped():
    """The PEP 561 marker py.typed is part of the package."""
    marker = importlib.resources.files("tracklane").joinpath("py.typed")
    assert marker.is_file()


def test_version_matches_distribution():
    """tracklane.__version__ is the installed distribution's version."""
    assert tracklane.__version__ == importlib.metadata.version("tracklane")


def test_version_is_in_user_agent_and_library():
    """The version string is what context.library reports."""
    from tracklane.testing import CapturingClient

    client = CapturingClient()
    client.track("u", "E")
    (message,) = client.events.messages
    assert message["context"]["library"] == {"name": "tracklane", "version": tracklane.__version__}


def test_pytest_plugin_entry_point():
    """The pytest11 entry point names the plugin module."""
    everything = importlib.metadata.entry_points()
    if hasattr(everything, "select"):  # Python 3.10 and newer
        points = everything.select(group="pytest11")
    else:  # Python 3.9: a dict of group -> entry points
        points = everything.get("pytest11", [])
    values = {p.name: p.value for p in points}
    assert values.get("tracklane") == "tracklane.testing.pytest_plugin"
