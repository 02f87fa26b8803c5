"""Configure the default client (``tracklane.track(...)`` anywhere) from a framework's settings."""

from __future__ import annotations

from typing import Any, Dict, Mapping

import tracklane

__all__ = ["configure_default"]

# Client options that are not module settings of the default client.
_NOT_SETTINGS = {"thread", "flush_at", "transport"}


def configure_default(options: Mapping[str, Any], where: str) -> None:
    """Validate ``options`` as the client's, then set them as the default client's settings.

    ``where`` names the source in errors (``settings.TRACKLANE``). A default client that
    already exists is shut down (its events flushed), so the next call uses the new settings.
    """
    given: Dict[str, Any] = dict(options)
    rest = {name: value for name, value in given.items() if name != "write_key"}
    try:
        # Validation only (a placeholder key when it comes from the environment instead).
        tracklane.Options.build(given.get("write_key") or "-", **rest)
    except tracklane.ConfigurationError as exc:
        raise tracklane.ConfigurationError(f"{where}: {exc}") from None
    for name in given:
        if name in _NOT_SETTINGS or not hasattr(tracklane, name):
            raise tracklane.ConfigurationError(
                f"{where}: {name!r} is a Client option but not a setting of the default client"
            )
    tracklane.shutdown()
    for name, value in given.items():
        setattr(tracklane, name, value)
