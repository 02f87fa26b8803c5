"""SQL statements with many bound values, in a few sizes only (SQLite stores).

SQLite compiles each distinct statement text once, and the sqlite3 module keeps the last
128 it compiled per connection. Compiling an INSERT of N rows costs 2-8 µs per row, about
what running it costs; with a statement for every count of rows, groups of every size
(clients flush part-filled batches, and rows already stored are left out) compiled most
of theirs anew: 2.5 µs more per event with groups of 1 to 400 rows (docs/performance.md).
So many values are bound in statements of ``unit`` values and then of powers of two: a
dozen texts per kind of statement, which stay compiled.
"""

from __future__ import annotations

from typing import Dict, List

__all__ = ["sizes", "text"]


def sizes(count: int, unit: int) -> List[int]:
    """Statement sizes that add up to ``count``: ``unit`` as often as it fits, then the
    powers of two of the rest, largest first (each below ``unit``)."""
    full, rest = divmod(count, unit)
    return [unit] * full + [
        1 << bit for bit in reversed(range(rest.bit_length())) if rest >> bit & 1
    ]


def text(cache: Dict[int, str], template: str, mark: str, count: int) -> str:
    """``template`` with ``count`` marks joined by commas, built once per count."""
    statement = cache.get(count)
    if statement is None:
        statement = cache[count] = template.format(", ".join([mark] * count))
    return statement
