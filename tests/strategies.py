"""Hypothesis strategies for tracklane's inputs: every value a caller might hand a call.

``anything()`` covers the supported conversions (section 3 of BEHAVIOUR.md) and the values
nobody should pass but somebody will: lone surrogates, integers past any limit, NaN, objects
whose ``__str__`` or ``__eq__`` raise, non-string keys, cycles and absurd nesting.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any, Dict, List

from hypothesis import strategies as st

# -- leaves -------------------------------------------------------------------------------

LONE_SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")

#: Text, sometimes with a lone surrogate spliced in (not encodable as UTF-8).
texts = st.one_of(
    st.text(max_size=20),
    st.builds(
        lambda a, s, b: a + s + b,
        st.text(max_size=5),
        st.sampled_from(LONE_SURROGATES),
        st.text(max_size=5),
    ),
)

#: Integers of every size: small, around the 64-bit edges, and far beyond (built lazily so
#: that Hypothesis does not print thousands of digits when it describes the strategy).
_EDGES = (
    (2, 63, -1),
    (2, 63, 0),
    (2, 64, -1),
    (2, 64, 0),
    (-2, 63, 0),
    (-2, 63, -1),
    (10, 100, 0),
    (-10, 100, 0),
    (10, 4299, 0),  # 4,300 digits: the most Python's default int-to-str limit allows
    (-10, 4299, 0),
)
integers = st.one_of(
    st.integers(),
    st.sampled_from(_EDGES).map(lambda edge: edge[0] ** edge[1] + edge[2]),
)
# Integers past that limit are covered by explicit tests: Hypothesis itself cannot repr() them.

floats = st.floats(allow_nan=True, allow_infinity=True)

hashable_decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).filter(lambda d: not d.is_snan()),
    st.sampled_from([Decimal("NaN"), Decimal("-NaN"), Decimal("-0"), Decimal("1E+400")]),
)
decimals = st.one_of(hashable_decimals, st.just(Decimal("sNaN")))  # sNaN cannot be hashed

#: Fixed UTC offsets, whole minutes only (what the wire format can express exactly).
minute_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)

naive_datetimes = st.datetimes()
aware_datetimes = st.datetimes(timezones=st.one_of(minute_offsets, st.timezones()))
datetimes = st.one_of(naive_datetimes, aware_datetimes)
dates = st.dates()
times = st.times()
timedeltas = st.timedeltas()


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 10


class Flavour(str, enum.Enum):
    SWEET = "sweet"


enums = st.sampled_from([Color.RED, Color.GREEN, Level.LOW, Level.HIGH, Flavour.SWEET])


class RaisingStr:
    """An object whose ``__str__`` raises.

    Its ``__repr__`` works: Hypothesis needs it to print a failing example.
    """

    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")

    def __repr__(self) -> str:
        return "RaisingStr()"


class RaisingStrSubclass(str):
    """A ``str`` subclass whose ``__str__`` raises (its text is still there).

    Used by explicit tests only: inside ``one_of`` next to ``text()``, Hypothesis 6.170 mistakes
    a str subclass for one of its own string choices while shrinking and reports
    ``FlakyStrategyDefinition`` instead of the real failure.
    """

    def __str__(self) -> str:
        raise RuntimeError("str subclass __str__ exploded")


class RaisingEq:
    """An object whose comparisons and truth value raise (numpy arrays do much the same)."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ exploded")

    def __ne__(self, other: object) -> bool:
        raise RuntimeError("__ne__ exploded")

    def __bool__(self) -> bool:
        raise RuntimeError("__bool__ exploded")

    __hash__ = object.__hash__


class SurrogateStr:
    """An object whose ``__str__`` returns text that is not valid UTF-8."""

    def __str__(self) -> str:
        return "bad \ud800 text"


class ToDict:
    def to_dict(self) -> Dict[str, Any]:
        return {"kind": "to_dict", "n": 1}


class RaisingToDict:
    def to_dict(self) -> Dict[str, Any]:
        raise ValueError("to_dict exploded")


class ModelLike:
    """Looks like a pydantic v2 model."""

    def model_dump(self, mode: str = "python") -> Dict[str, Any]:
        return {"kind": "model", "mode": mode}


class Plain:
    """No conversion hook at all: falls back to ``str()``."""


@dataclasses.dataclass
class Point:
    x: Any
    y: Any


weird_objects = st.one_of(
    st.builds(RaisingStr),
    st.builds(RaisingEq),
    st.builds(SurrogateStr),
    st.builds(ToDict),
    st.builds(RaisingToDict),
    st.builds(ModelLike),
    st.builds(Plain),
)

#: Hashable scalars, usable as set members and dict keys.
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    texts,
    integers,
    floats,
    hashable_decimals,
    dates,
    naive_datetimes,
    st.uuids(),
    enums,
    st.binary(max_size=8),
)

leaves = st.one_of(
    hashable_scalars,
    decimals,
    datetimes,
    times,
    timedeltas,
    st.builds(PurePosixPath, st.text(max_size=10)),
    st.builds(bytearray, st.binary(max_size=8)),
    st.frozensets(hashable_scalars, max_size=4),
    st.sets(hashable_scalars, max_size=4),
    weird_objects,
)

# -- containers ---------------------------------------------------------------------------


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(texts, children, max_size=4),
        st.dictionaries(hashable_scalars, children, max_size=4),
        st.builds(Point, children, children),
    )


def nested(depth: int, leaf: Any = "x") -> List[Any]:
    """``depth`` lists inside one another around ``leaf``."""
    value: Any = leaf
    for _ in range(depth):
        value = [value]
    return value


def cyclic(value: Any) -> Dict[str, Any]:
    """A dict that contains itself (and ``value``)."""
    loop: Dict[str, Any] = {"value": value}
    loop["self"] = loop
    return loop


values = st.one_of(
    st.recursive(leaves, _extend, max_leaves=12),
    st.builds(nested, st.integers(min_value=200, max_value=600)),
    st.builds(cyclic, leaves),
)
"""Any value at all, of any supported or unsupported type."""

payloads = st.dictionaries(st.one_of(texts, hashable_scalars), values, max_size=5)
"""A properties/traits/context/integrations mapping holding any values."""

# -- JSON-native values (must arrive exactly as given) ------------------------------------

json_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    json_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(json_text, json_values, max_size=6)

# -- call arguments -----------------------------------------------------------------------

valid_ids = st.one_of(
    st.text(min_size=1, max_size=30),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.uuids(),
)
"""Ids every call must accept (strings, numbers, UUIDs)."""

any_ids = st.one_of(st.none(), valid_ids, weird_objects, values)
"""Anything at all in an id position."""

iso_texts = st.one_of(
    datetimes.map(lambda d: d.isoformat()),
    dates.map(lambda d: d.isoformat()),
    st.just("2021-06-01T10:00:00Z"),
)
valid_timestamps = st.one_of(st.none(), datetimes, dates, iso_texts)
any_timestamps = st.one_of(valid_timestamps, values, st.text(max_size=30))

any_message_ids = st.one_of(
    st.none(),
    st.text(min_size=1, max_size=100),
    st.text(min_size=101, max_size=120),
    weird_objects,
    values,
)

__all__ = [
    "Color",
    "Flavour",
    "Level",
    "ModelLike",
    "Plain",
    "Point",
    "RaisingEq",
    "RaisingStr",
    "RaisingStrSubclass",
    "RaisingToDict",
    "SurrogateStr",
    "ToDict",
    "any_ids",
    "any_message_ids",
    "any_timestamps",
    "cyclic",
    "datetimes",
    "decimals",
    "floats",
    "integers",
    "json_objects",
    "json_values",
    "nested",
    "payloads",
    "texts",
    "valid_ids",
    "valid_timestamps",
    "values",
]
