"""The fields of Segment's six calls, in the wire's camelCase, and the call argument of each."""

from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

__all__ = ["ENVELOPE_FIELDS", "FIELDS", "TYPES"]

TYPES = ("identify", "track", "page", "screen", "group", "alias")

# camelCase field -> (the call's argument, the types that take it)
FIELDS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "userId": ("user_id", TYPES),
    "anonymousId": ("anonymous_id", ("identify", "track", "page", "screen", "group")),
    "event": ("event", ("track",)),
    "name": ("name", ("page", "screen")),
    "category": ("category", ("page", "screen")),
    "properties": ("properties", ("track", "page", "screen")),
    "traits": ("traits", ("identify", "group")),
    "groupId": ("group_id", ("group",)),
    "previousId": ("previous_id", ("alias",)),
    "context": ("context", TYPES),
    "integrations": ("integrations", TYPES),
    "timestamp": ("timestamp", TYPES),
    "messageId": ("message_id", TYPES),
}

# Set by a sender or a receiver, not by the caller: found in Segment's exports and
# replays, ignored on import (``timestamp`` is what is kept).
ENVELOPE_FIELDS: FrozenSet[str] = frozenset(
    {
        "sentAt",
        "receivedAt",
        "originalTimestamp",
        "writeKey",
        "version",
        "channel",
        "projectId",
        "_metadata",
        "seq",
    }
)
