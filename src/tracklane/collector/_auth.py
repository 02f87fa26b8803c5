"""HTTP Basic credentials as the collector reads them: the write key is the user name."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from typing import Optional, Tuple

__all__ = ["basic_user"]


def basic_user(header: Optional[str]) -> Optional[str]:
    """Return the user name of an HTTP Basic ``Authorization`` header (``None`` if absent).

    Raises ValueError when the header is present but not usable Basic credentials.
    """
    if header is None:
        return None
    user, problem = _read_basic(header)
    if problem is not None:
        raise ValueError(problem)
    return user


# Every request of a sender carries the same header: decoding it once per distinct value
# saves a base64 decode and its checks on each ingest request (the cache is bounded).
@lru_cache(maxsize=256)
def _read_basic(header: str) -> Tuple[Optional[str], Optional[str]]:
    """(user name or None, None), or (None, why the header is not usable)."""
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None, "only HTTP Basic auth is supported (write key as the user name)"
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, "malformed HTTP Basic credentials"
    user = decoded.partition(":")[0]
    if "\x00" in user:
        return None, "the write key in HTTP Basic credentials contains a NUL character"
    return user or None, None
