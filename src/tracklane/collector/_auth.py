"""HTTP Basic credentials as the collector reads them: the write key is the user name."""

from __future__ import annotations

import base64
import binascii
from typing import Optional

__all__ = ["basic_user"]


def basic_user(header: Optional[str]) -> Optional[str]:
    """Return the user name of an HTTP Basic ``Authorization`` header (``None`` if absent).

    Raises ValueError when the header is present but not usable Basic credentials.
    """
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise ValueError("only HTTP Basic auth is supported (write key as the user name)")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("malformed HTTP Basic credentials") from None
    user = decoded.partition(":")[0]
    if "\x00" in user:
        raise ValueError("the write key in HTTP Basic credentials contains a NUL character")
    return user or None
