"""How a value becomes a histogram bin, and the histogram itself.

Every binning maps a value to a small int: 0 missing, 1 null, 2 invalid (a value of the wrong type,
or NaN), and 3 on for the value bins. Keeping the data-quality counts in the same index space as the
values lets one `dict[int, int]` per slot hold a whole feature, and lets drift see a feature that
starts arriving null as well as one whose values move.

- `EdgeBins(edges)`: numeric, from a baseline: 3 is below `edges[0]`, then one bin per
  `[edges[i], edges[i + 1])` (the last one closed, so the baseline's maximum is inside), then above
  `edges[-1]`. Booleans and strings are invalid for a numeric feature.
- `CategoryBins(categories)`: categorical: 3 is "other", then one bin per known category. With
  `open_limit` (no baseline), the first `open_limit` distinct values seen become categories. Values
  are compared as strings (`category()`): 1, 1.0 and "1" are the same category, true is "true".
- `LogBins()`: numeric without a baseline: four bins per power of two (frexp's exponent and the top
  bits of the mantissa), signed, with zero apart. No state and no range to know in advance, so
  canary and stable histograms line up; a value's bin is within about 12% of it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import frexp, isfinite
from typing import Any, Literal, Protocol, cast

from gateway.monitoring.pointer import MISSING

__all__ = [
    "FIRST_BIN",
    "INVALID_BIN",
    "MISSING_BIN",
    "NULL_BIN",
    "OTHER_BIN",
    "Binning",
    "CategoryBins",
    "EdgeBins",
    "Histogram",
    "Kind",
    "LogBins",
    "category",
    "number",
]

Kind = Literal["numeric", "categorical"]

MISSING_BIN = 0
NULL_BIN = 1
INVALID_BIN = 2
FIRST_BIN = 3
OTHER_BIN = 3  # categorical: anything outside the known categories
_SPECIAL = ("missing", "null", "invalid")


def number(value: object) -> float | int | None:
    """`value` as a finite number, or None (bools, strings, NaN and infinities are not numbers here)."""
    kind = type(value)
    if kind is int:
        return value  # type: ignore[return-value]
    if kind is float:
        return value if math.isfinite(value) else None  # type: ignore[arg-type,return-value]
    return None


def category(value: object) -> str | None:
    """`value` as a category string, or None when it cannot be one (objects, arrays, null, MISSING)."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        assert isinstance(value, float)
        return str(int(value)) if value.is_integer() else repr(value)
    return None


class Binning(Protocol):
    """Maps a value to a bin index (see the module docstring) and names the bins."""

    @property
    def kind(self) -> Kind: ...

    def index(self, value: object) -> int: ...

    def count(self, values: Iterable[object], counts: dict[int, int]) -> None:
        """Add each value's bin to `counts` (the hot path: `index` inlined where it pays)."""
        ...

    def label(self, index: int) -> str: ...


class EdgeBins:
    """Numeric bins between fixed edges, plus under- and overflow."""

    __slots__ = ("_search", "edges")

    def __init__(self, edges: Sequence[float]) -> None:
        edges = tuple(float(e) for e in edges)
        if len(edges) < 2 or not all(math.isfinite(e) for e in edges):
            raise ValueError("edges: at least two finite numbers")
        # Two equal edges are one closed bin [v, v]: a feature that held one value in the baseline.
        if not (
            all(a < b for a, b in zip(edges, edges[1:], strict=False)) or (len(edges) == 2 and edges[0] == edges[1])
        ):
            raise ValueError("edges must be strictly increasing")
        self.edges = edges
        # Searching with the last edge nudged up one ulp closes the last bin: its edge falls inside it.
        self._search = (*edges[:-1], math.nextafter(edges[-1], math.inf))

    @property
    def kind(self) -> Kind:
        return "numeric"

    @property
    def size(self) -> int:
        """Value bins: underflow, one per pair of edges, overflow."""
        return len(self.edges) + 1

    def index(self, value: object) -> int:
        kind = type(value)
        if kind is float:
            if not isfinite(value):  # type: ignore[arg-type]
                return INVALID_BIN
        elif kind is not int:
            return MISSING_BIN if value is MISSING else NULL_BIN if value is None else INVALID_BIN
        return FIRST_BIN + bisect_right(self._search, cast(float, value))

    def count(self, values: Iterable[object], counts: dict[int, int]) -> None:
        search, get = self._search, counts.get
        for value in values:
            kind = type(value)
            if (kind is float and isfinite(value)) or kind is int:  # type: ignore[arg-type]
                i = FIRST_BIN + bisect_right(search, cast(float, value))
            else:
                i = self.index(value)
            counts[i] = get(i, 0) + 1

    def label(self, index: int) -> str:
        if index < FIRST_BIN:
            return _SPECIAL[index]
        i = index - FIRST_BIN
        edges = self.edges
        if i == 0:
            return f"<{edges[0]:g}"
        if i >= len(edges):
            return f">{edges[-1]:g}"
        close = "]" if i == len(edges) - 1 else ")"
        return f"[{edges[i - 1]:g}, {edges[i]:g}{close}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EdgeBins) and other.edges == self.edges

    def __hash__(self) -> int:
        return hash(self.edges)

    def __repr__(self) -> str:
        return f"<EdgeBins {len(self.edges) - 1} bins [{self.edges[0]:g}, {self.edges[-1]:g}]>"


class CategoryBins:
    """Categorical bins: known categories, plus "other"; optionally admitting the first few seen."""

    __slots__ = ("_index", "categories", "open_limit")

    def __init__(self, categories: Iterable[str] = (), *, open_limit: int = 0) -> None:
        self.categories: list[str] = []
        self._index: dict[str, int] = {}
        self.open_limit = open_limit
        for name in categories:
            if name in self._index:
                raise ValueError(f"duplicate category {name!r}")
            self._admit(name)

    @property
    def kind(self) -> Kind:
        return "categorical"

    def _admit(self, name: str) -> int:
        i = self._index[name] = OTHER_BIN + 1 + len(self.categories)
        self.categories.append(name)
        return i

    def index(self, value: object) -> int:
        if type(value) is str:
            name: str | None = value
        elif value is MISSING:
            return MISSING_BIN
        elif value is None:
            return NULL_BIN
        else:
            name = category(value)
            if name is None:
                return INVALID_BIN
        i = self._index.get(name)  # type: ignore[arg-type]
        if i is not None:
            return i
        if len(self.categories) < self.open_limit:
            return self._admit(name)  # type: ignore[arg-type]
        return OTHER_BIN

    def count(self, values: Iterable[object], counts: dict[int, int]) -> None:
        known = self._index
        for value in values:
            i = known.get(value) if type(value) is str else None
            if i is None:
                i = self.index(value)
            counts[i] = counts.get(i, 0) + 1

    def label(self, index: int) -> str:
        if index < FIRST_BIN:
            return _SPECIAL[index]
        if index == OTHER_BIN:
            return "other"
        return self.categories[index - OTHER_BIN - 1]

    def __repr__(self) -> str:
        return f"<CategoryBins {len(self.categories)} categories open_limit={self.open_limit}>"


# A nonzero value's code is 4 x exponent + quarter (0-3), exponent in [-1073, 1024] for a finite double;
# the offset keeps codes >= 0, and index = FIRST_BIN + 1 + 2 x (code + offset) + (1 if negative).
_LOG_OFFSET = 4 * 1080
_LOG_BASE = FIRST_BIN + 1 + 2 * (_LOG_OFFSET - 4)


class LogBins:
    """Signed log-octave bins for numbers with no baseline range: four per power of two, zero apart."""

    __slots__ = ()

    @property
    def kind(self) -> Kind:
        return "numeric"

    def index(self, value: object) -> int:
        kind = type(value)
        if kind is not float and kind is not int:
            return MISSING_BIN if value is MISSING else NULL_BIN if value is None else INVALID_BIN
        try:
            mantissa, exponent = frexp(value)  # type: ignore[arg-type]
        except OverflowError:  # an int beyond a double
            return INVALID_BIN
        # |mantissa| is in [0.5, 1), so int(|mantissa| * 8) - 4 (its two bits after the leading one) is the quarter.
        if mantissa > 0.0:
            if mantissa < 1.0:  # not inf (frexp passes inf and nan through)
                return _LOG_BASE + 8 * exponent + 2 * int(mantissa * 8.0)
        elif mantissa < 0.0:
            if mantissa > -1.0:
                return _LOG_BASE + 8 * exponent + 2 * int(-mantissa * 8.0) + 1
        elif mantissa == 0.0:
            return FIRST_BIN
        return INVALID_BIN

    def count(self, values: Iterable[object], counts: dict[int, int]) -> None:
        index = self.index
        for value in values:
            i = index(value)
            counts[i] = counts.get(i, 0) + 1

    def label(self, index: int) -> str:
        if index < FIRST_BIN:
            return _SPECIAL[index]
        if index == FIRST_BIN:
            return "0"
        code, negative = divmod(index - FIRST_BIN - 1, 2)
        exponent, quarter = divmod(code - _LOG_OFFSET, 4)
        low = math.ldexp(0.5 + quarter / 8.0, exponent)
        high = math.ldexp(0.5 + (quarter + 1) / 8.0, exponent - 1) * 2.0  # inf past the largest double
        return f"(-{high:.3g}, -{low:.3g}]" if negative else f"[{low:.3g}, {high:.3g})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogBins)

    def __hash__(self) -> int:
        return hash(LogBins)

    def __repr__(self) -> str:
        return "<LogBins>"


@dataclass(slots=True)
class Histogram:
    """Counts per bin index of one binning (a window's worth of one feature, prediction or confidence)."""

    binning: Binning
    counts: dict[int, int] = field(default_factory=dict)

    def add(self, counts: Mapping[int, int]) -> None:
        mine = self.counts
        for index, n in counts.items():
            mine[index] = mine.get(index, 0) + n

    @property
    def total(self) -> int:
        """Every entry: values, missing, null and invalid."""
        return sum(self.counts.values())

    @property
    def missing(self) -> int:
        return self.counts.get(MISSING_BIN, 0)

    @property
    def null(self) -> int:
        return self.counts.get(NULL_BIN, 0)

    @property
    def invalid(self) -> int:
        return self.counts.get(INVALID_BIN, 0)

    @property
    def values(self) -> int:
        return sum(n for index, n in self.counts.items() if index >= FIRST_BIN)

    def to_dict(self) -> dict[str, Any]:
        """For /admin/stats: entry counts, data-quality counts, and the value bins by label (bin order)."""
        bins = {self.binning.label(i): self.counts[i] for i in sorted(self.counts) if i >= FIRST_BIN}
        return {
            "entries": self.total,
            "missing": self.missing,
            "null": self.null,
            "invalid": self.invalid,
            "bins": bins,
        }
