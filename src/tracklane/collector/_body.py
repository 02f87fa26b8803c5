"""Reading request bodies within limits, gzip included, without trusting the sender.

The compressed bytes read are capped, and gzip is inflated incrementally with
``max_length`` so a small "gzip bomb" is refused after inflating at most
``limit + 1`` bytes.
"""

from __future__ import annotations

import zlib
from typing import AsyncIterator, List, Optional

from tracklane.collector._ingest import RequestError

__all__ = ["GzipInflater", "read_limited"]

_GZIP_WBITS = 16 + zlib.MAX_WBITS
# Incompressible data grows a little when gzipped (headers, stored-block framing).
_GZIP_SLACK = 16_384


class GzipInflater:
    """Inflate a gzip stream fed in pieces, refusing to produce more than ``limit`` bytes."""

    def __init__(self, limit: int, what: str = "request body") -> None:
        """Create an inflater that raises RequestError past ``limit`` inflated bytes."""
        self.limit = limit
        self.produced = 0
        self._what = what
        self._chunks: List[bytes] = []
        self._inflater = zlib.decompressobj(_GZIP_WBITS)
        self._in_member = False

    def feed(self, data: bytes) -> None:
        """Inflate ``data``; raises RequestError when over the limit or not gzip."""
        while data:
            self._in_member = True
            try:
                out = self._inflater.decompress(data, self.limit - self.produced + 1)
            except zlib.error as exc:
                raise RequestError(f"invalid gzip body: {exc}") from None
            self.produced += len(out)
            if self.produced > self.limit:
                raise RequestError(f"{self._what} is over the {self.limit}-byte limit (inflated)")
            self._chunks.append(out)
            if self._inflater.eof:  # a gzip member ended; another may follow
                data = self._inflater.unused_data
                self._inflater = zlib.decompressobj(_GZIP_WBITS)
                self._in_member = False
            else:
                data = self._inflater.unconsumed_tail

    def finish(self) -> bytes:
        """Return everything inflated; raises RequestError if the stream was cut short."""
        if self._in_member:
            raise RequestError("invalid gzip body: the stream is truncated")
        return b"".join(self._chunks)


async def read_limited(
    chunks: AsyncIterator[bytes],
    *,
    content_encoding: Optional[str],
    content_length: Optional[str],
    limit: int,
    what: str = "request body",
) -> bytes:
    """Read a body of at most ``limit`` bytes (after decompression); raises RequestError."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise RequestError(f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    gzipped = encoding != "identity"
    read_cap = limit + _GZIP_SLACK if gzipped else limit
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise RequestError("invalid Content-Length") from None
        if declared > read_cap:
            raise RequestError(f"{what} is over the {limit}-byte limit")
    inflater = GzipInflater(limit, what) if gzipped else None
    parts: List[bytes] = []
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > read_cap:
            raise RequestError(f"{what} is over the {limit}-byte limit")
        if inflater is not None:
            inflater.feed(chunk)
        else:
            parts.append(chunk)
    return inflater.finish() if inflater is not None else b"".join(parts)
