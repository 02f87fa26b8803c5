"""Kept for imports of 0.1: request bodies now live in ``_core.batching``."""

from __future__ import annotations

from typing import List

from ._core.batching import ENVELOPE_BYTES, body_size, take_batch
from .messages import now_timestamp

__all__ = ["ENVELOPE_BYTES", "batch_body", "body_size", "take_batch"]


def batch_body(messages: List[bytes]) -> bytes:
    """``{"batch": [...], "sentAt": now}`` around encoded messages."""
    from ._core.batching import batch_body as build

    return build(messages, now_timestamp())
