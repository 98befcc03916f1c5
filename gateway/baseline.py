"""Drift baselines: each monitored feature's expected distribution, built from logged requests.

`gateway baseline --config FILE --route NAME --input REQUESTS.jsonl --output BASELINE.json` calls
`build_baseline_from_jsonl` and `write_baseline`; the gateway reads the file back with
`load_baseline` (the route's `monitor.drift.baseline`) and compares live traffic against it.

The file (JSON, `"version": 1`)::

    {
      "format": "inference-gateway/baseline",
      "version": 1,
      "created": "2025-06-01T12:00:00Z",          # when it was built (UTC)
      "route": "credit",                          # the route it was built for
      "documents": 5000,                          # request bodies read
      "responses": 0,                             # response bodies read (for "prediction")
      "features": {
        "age": {
          "kind": "numeric",
          "pointer": "/instances/*/age",
          "edges": [18, 24, 31, 40, 52, 77],      # numeric: quantile edges of the data, deduplicated
          "expected": [0, 0.2, 0.2, 0.2, 0.2, 0.2, 0],  # share per bin: below edges[0], each
                                                  #   [edges[i], edges[i+1]) (the last closed), above
          "missing": 0.0, "null": 0.0, "invalid": 0.0,  # shares of entries absent, null, not a number
          "counts": {"entries": 10000, "missing": 0, "null": 0, "invalid": 0, "bins": [0, 2000, ...]}
        },
        "country": {
          "kind": "categorical",
          "pointer": "/instances/*/country",
          "categories": ["US", "DE", "FR"],       # the 20 most frequent, most frequent first
          "expected": [0.5, 0.3, 0.15, 0.05],     # share per category, then "other"
          "missing": 0.0, "null": 0.0, "invalid": 0.0,
          "counts": {...}
        }
      },
      "prediction": null                          # or one more entry like the features
    }

An entry is one value the pointer reached (`/instances/*/age` on a 10-row request gives 10), so
`expected`, `missing`, `null` and `invalid` together sum to 1. `counts` is informative and optional
in a hand-written file; when present it must add up. Quantile edges give every bin about the same
baseline mass, so each PSI term has an expected share to compare with; live values outside the
baseline's range land in the under- and overflow bins, whose baseline share is 0 (PSI's epsilon
floor takes care of that: `gateway.monitoring.divergence`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.config import Monitor, Route
from gateway.monitoring.bins import (
    FIRST_BIN,
    INVALID_BIN,
    MISSING_BIN,
    NULL_BIN,
    OTHER_BIN,
    CategoryBins,
    EdgeBins,
    Kind,
    category,
    number,
)
from gateway.monitoring.pointer import MISSING, PointerError, compile_pointer, parse_pointer

__all__ = [
    "FORMAT",
    "PREDICTION_BINS",
    "TOP_K",
    "VERSION",
    "Baseline",
    "BaselineError",
    "BaselineInputError",
    "Counts",
    "Distribution",
    "baseline_problems",
    "build_baseline",
    "build_baseline_from_jsonl",
    "load_baseline",
    "read_jsonl",
    "write_baseline",
]

FORMAT = "inference-gateway/baseline"
VERSION = 1
TOP_K = 20  # categories kept per feature; the rest is "other"
PREDICTION_BINS = 10  # quantile bins of a numeric prediction (features say theirs in `bins`)
_SUM_TOLERANCE = 1e-3  # a hand-edited file with rounded shares still loads (and is renormalised)


class BaselineError(ValueError):
    """A baseline file that cannot be used; `problems` lists every (key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "; ".join(f"{path}: {message}" if path else message for path, message in problems)
        super().__init__(f"baseline {source}: {lines}")


class BaselineInputError(ValueError):
    """A request log that cannot be read; `line` is 1-based (0 when the file itself failed)."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        where = f"{source} line {line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class Counts:
    entries: int
    missing: int
    null: int
    invalid: int
    bins: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Distribution:
    """One feature's (or the prediction's) expected distribution; shares are of all entries."""

    kind: Kind
    pointer: str
    expected: tuple[float, ...]  # numeric: under, bins..., over; categorical: categories..., other
    edges: tuple[float, ...] | None = None
    categories: tuple[str, ...] | None = None
    missing: float = 0.0
    null: float = 0.0
    invalid: float = 0.0
    counts: Counts | None = None

    def binning(self) -> EdgeBins | CategoryBins:
        """The live binning that lines up with `expected`."""
        if self.kind == "numeric":
            assert self.edges is not None
            return EdgeBins(self.edges)
        assert self.categories is not None
        return CategoryBins(self.categories)

    def shares(self) -> dict[int, float]:
        """Expected share per bin index of `binning()` (data-quality bins included)."""
        out = {MISSING_BIN: self.missing, NULL_BIN: self.null, INVALID_BIN: self.invalid}
        if self.kind == "numeric":
            out.update((FIRST_BIN + i, p) for i, p in enumerate(self.expected))
        else:
            *per_category, other = self.expected
            out[OTHER_BIN] = other
            out.update((OTHER_BIN + 1 + i, p) for i, p in enumerate(per_category))
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "pointer": self.pointer}
        if self.edges is not None:
            out["edges"] = list(self.edges)
        if self.categories is not None:
            out["categories"] = list(self.categories)
        out.update(expected=list(self.expected), missing=self.missing, null=self.null, invalid=self.invalid)
        if self.counts is not None:
            c = self.counts
            out["counts"] = {
                "entries": c.entries,
                "missing": c.missing,
                "null": c.null,
                "invalid": c.invalid,
                "bins": list(c.bins),
            }
        return out


@dataclass(frozen=True, slots=True)
class Baseline:
    route: str
    created: str
    documents: int
    features: dict[str, Distribution] = field(default_factory=dict)
    prediction: Distribution | None = None
    responses: int = 0
    source: str = field(default="<baseline>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "route": self.route,
            "documents": self.documents,
            "responses": self.responses,
            "features": {name: d.to_dict() for name, d in self.features.items()},
            "prediction": self.prediction.to_dict() if self.prediction is not None else None,
        }

    @classmethod
    def from_dict(cls, data: object, source: str = "<baseline>") -> Baseline:
        """Validate a parsed file; raises `BaselineError` listing every problem."""
        return _Reader(source).baseline(data)

    def __repr__(self) -> str:
        extra = " +prediction" if self.prediction is not None else ""
        return f"<Baseline {self.route!r} features={sorted(self.features)}{extra} documents={self.documents}>"


# -- building ---------------------------------------------------------------------------------------


class _Collector:
    """Everything one pointer reached across the documents."""

    def __init__(self, kind: Kind, pointer: str, bins: int) -> None:
        self.kind = kind
        self.pointer = pointer
        self.bins = bins
        self.get = compile_pointer(pointer)
        self.missing = self.null = self.invalid = 0
        self.numbers: list[float] = []
        self.categories: Counter[str] = Counter()

    def add(self, document: object) -> None:
        for value in self.get(document):
            if value is MISSING:
                self.missing += 1
            elif value is None:
                self.null += 1
            elif self.kind == "numeric":
                n = number(value)
                if n is None:
                    self.invalid += 1
                else:
                    self.numbers.append(float(n))
            else:
                name = category(value)
                if name is None:
                    self.invalid += 1
                else:
                    self.categories[name] += 1

    def distribution(self, what: str) -> Distribution:
        valid = len(self.numbers) if self.kind == "numeric" else sum(self.categories.values())
        entries = valid + self.missing + self.null + self.invalid
        if valid == 0:
            raise ValueError(
                f"{what}: no {'numbers' if self.kind == 'numeric' else 'values'} found at {self.pointer} "
                f"({entries} entries: {self.missing} missing, {self.null} null, {self.invalid} invalid)"
            )
        edges: tuple[float, ...] | None = None
        categories: tuple[str, ...] | None = None
        if self.kind == "numeric":
            edges = quantile_edges(self.numbers, self.bins)
            binning = EdgeBins(edges)
            bins = [0] * binning.size
            for value in self.numbers:
                bins[binning.index(value) - FIRST_BIN] += 1
        else:
            ranked = sorted(self.categories.items(), key=lambda item: (-item[1], item[0]))
            categories = tuple(name for name, _ in ranked[:TOP_K])
            bins = [n for _, n in ranked[:TOP_K]] + [sum(n for _, n in ranked[TOP_K:])]
        return Distribution(
            kind=self.kind,
            pointer=self.pointer,
            edges=edges,
            categories=categories,
            expected=tuple(n / entries for n in bins),
            missing=self.missing / entries,
            null=self.null / entries,
            invalid=self.invalid / entries,
            counts=Counts(entries, self.missing, self.null, self.invalid, tuple(bins)),
        )


def quantile_edges(values: Iterable[float], bins: int) -> tuple[float, ...]:
    """`bins` + 1 quantile edges of the values (nearest rank, so edges are data values), deduplicated.

    Ties collapse edges, so a feature with few distinct values gets fewer, heavier bins; a constant
    feature gets the single closed bin [v, v].
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values to take quantiles of")
    last = len(ordered) - 1
    edges: list[float] = []
    for i in range(bins + 1):
        edge = ordered[round(i * last / bins)]
        if not edges or edge > edges[-1]:
            edges.append(edge)
    if len(edges) == 1:
        edges.append(edges[0])
    return tuple(edges)


def build_baseline(
    config: Route | Monitor,
    documents: Iterable[object],
    *,
    responses: Iterable[object] | None = None,
    route: str | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """The baseline file's content from request bodies (and, for the prediction, response bodies).

    `config` is the route (its name goes in the file) or its `monitor` section (then pass `route`).
    Raises ValueError when a feature's pointer finds no usable value in any document.
    """
    if isinstance(config, Route):
        if config.monitor is None:
            raise ValueError(f"route {config.name!r} has no `monitor` section")
        monitor, route = config.monitor, route or config.name
    else:
        monitor = config
    if not monitor.features and (monitor.prediction is None or responses is None):
        raise ValueError("the monitor lists no features: nothing to build a baseline of")
    collectors = {f.name: _Collector(f.kind, f.pointer, f.bins) for f in monitor.features}
    count = 0
    for document in documents:
        count += 1
        for collector in collectors.values():
            collector.add(document)
    if count == 0 and collectors:
        raise ValueError("no request documents to build a baseline from")
    prediction: Distribution | None = None
    answered = 0
    if monitor.prediction is not None and responses is not None:
        predicted = _Collector(monitor.prediction.kind, monitor.prediction.pointer, PREDICTION_BINS)
        for response in responses:
            answered += 1
            predicted.add(response)
        prediction = predicted.distribution("prediction")
    baseline = Baseline(
        route=route or "",
        created=created or datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        documents=count,
        responses=answered,
        features={name: c.distribution(f"features.{name}") for name, c in collectors.items()},
        prediction=prediction,
    )
    return baseline.to_dict()


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[object]:
    """One JSON document per line (blank lines skipped); raises `BaselineInputError` naming the line."""
    source = os.fspath(path)
    try:
        handle = open(source, "rb")  # closed by the `with` below, once an open error is mapped
    except OSError as exc:
        raise BaselineInputError(source, 0, f"cannot read: {exc.strerror or exc}") from None
    with handle:
        for number_, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise BaselineInputError(source, number_, f"not JSON: {exc}") from None


def build_baseline_from_jsonl(
    config: Route | Monitor,
    path: str | os.PathLike[str],
    *,
    responses_path: str | os.PathLike[str] | None = None,
    route: str | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """`build_baseline` over a JSON-lines file of request bodies (and optionally one of response bodies)."""
    responses = read_jsonl(responses_path) if responses_path is not None else None
    return build_baseline(config, read_jsonl(path), responses=responses, route=route, created=created)


# -- files ------------------------------------------------------------------------------------------


def write_baseline(path: str | os.PathLike[str], baseline: Mapping[str, Any] | Baseline) -> None:
    """Validate, then write atomically (a temporary file renamed over the target)."""
    target = Path(path)
    data = baseline.to_dict() if isinstance(baseline, Baseline) else dict(baseline)
    Baseline.from_dict(data, str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(temporary, target)


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read and validate a baseline file; raises `BaselineError` (a ValueError) saying what is wrong."""
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise BaselineError(source, [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BaselineError(source, [("", f"not JSON: {exc}")]) from None
    return Baseline.from_dict(data, source)


def baseline_problems(baseline: Baseline, monitor: Monitor, route: str | None = None) -> list[str]:
    """Where a (valid) baseline does not fit the route's monitor config; empty when it does."""
    problems = []
    if route is not None and baseline.route and baseline.route != route:
        problems.append(f"built for route {baseline.route!r}, not {route!r}")
    for i, feature in enumerate(monitor.features):
        expected = baseline.features.get(feature.name)
        where = f"monitor.features[{i}] ({feature.name!r})"
        if expected is None:
            problems.append(f"{where} is not in the baseline: rebuild it with `gateway baseline`")
        elif expected.kind != feature.kind:
            problems.append(f"{where} is {feature.kind} but {expected.kind} in the baseline")
        elif expected.pointer != feature.pointer:
            problems.append(f"{where} reads {feature.pointer} but the baseline was built from {expected.pointer}")
    if monitor.prediction is not None and baseline.prediction is not None:
        if baseline.prediction.kind != monitor.prediction.kind:
            problems.append(
                f"monitor.prediction is {monitor.prediction.kind} but {baseline.prediction.kind} in the baseline"
            )
    return problems


# -- validation -------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Reader:
    """Checks a parsed baseline, collecting every problem with its key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def baseline(self, data: object) -> Baseline:
        if not isinstance(data, dict):
            raise BaselineError(self.source, [("", "must be a JSON object")])
        if data.get("format") != FORMAT:
            self.fail("format", f"must be {FORMAT!r}: is this a baseline file?")
        if data.get("version") != VERSION:
            raise BaselineError(
                self.source, [*self.problems, ("version", f"unsupported {data.get('version')!r}, this gateway reads 1")]
            )
        route, created = data.get("route"), data.get("created")
        if not isinstance(route, str):
            self.fail("route", "must be a string")
        if not isinstance(created, str):
            self.fail("created", "must be a string (ISO 8601 time)")
        documents: Any = data.get("documents")
        responses: Any = data.get("responses", 0)
        if not _is_count(documents):
            self.fail("documents", "must be a non-negative integer")
        if not _is_count(responses):
            self.fail("responses", "must be a non-negative integer")
        features: dict[str, Distribution] = {}
        raw_features = data.get("features")
        if not isinstance(raw_features, dict):
            self.fail("features", "must be an object of feature name -> distribution")
        else:
            for name, raw in raw_features.items():
                distribution = self.distribution(f"features.{name}", raw)
                if distribution is not None:
                    features[name] = distribution
        prediction = None
        if data.get("prediction") is not None:
            prediction = self.distribution("prediction", data["prediction"])
        unknown = sorted(
            set(data) - {"format", "version", "created", "route", "documents", "responses", "features", "prediction"}
        )
        for key in unknown:
            self.fail(key, "unknown key")
        if self.problems:
            raise BaselineError(self.source, self.problems)
        return Baseline(
            route=str(route),
            created=str(created),
            documents=int(documents),
            responses=int(responses),
            features=features,
            prediction=prediction,
            source=self.source,
        )

    def distribution(self, path: str, raw: object) -> Distribution | None:
        before = len(self.problems)
        if not isinstance(raw, dict):
            self.fail(path, "must be an object")
            return None
        kind = raw.get("kind")
        pointer = raw.get("pointer")
        if kind not in ("numeric", "categorical"):
            self.fail(f"{path}.kind", "must be 'numeric' or 'categorical'")
            return None
        if not isinstance(pointer, str):
            self.fail(f"{path}.pointer", "must be a JSON pointer string")
        else:
            try:
                parse_pointer(pointer)
            except PointerError as exc:
                self.fail(f"{path}.pointer", str(exc))
        edges: tuple[float, ...] | None = None
        categories: tuple[str, ...] | None = None
        if kind == "numeric":
            raw_edges = raw.get("edges")
            if not isinstance(raw_edges, list) or not all(_is_number(e) for e in raw_edges):
                self.fail(f"{path}.edges", "must be a list of numbers")
            else:
                try:
                    edges = EdgeBins(raw_edges).edges
                except ValueError as exc:
                    self.fail(f"{path}.edges", str(exc))
            size = len(edges) + 1 if edges is not None else None
            layout = "one share below edges[0], one per bin, one above edges[-1]"
        else:
            raw_categories = raw.get("categories")
            if not isinstance(raw_categories, list) or not all(isinstance(c, str) for c in raw_categories):
                self.fail(f"{path}.categories", "must be a list of strings")
            elif len(set(raw_categories)) != len(raw_categories):
                self.fail(f"{path}.categories", "must not repeat a category")
            else:
                categories = tuple(raw_categories)
            size = len(categories) + 1 if categories is not None else None
            layout = "one share per category, then one for 'other'"
        expected = raw.get("expected")
        if not isinstance(expected, list) or not all(_is_number(p) and 0 <= p <= 1 for p in expected):
            self.fail(f"{path}.expected", "must be a list of shares in [0, 1]")
            expected = None
        elif size is not None and len(expected) != size:
            self.fail(f"{path}.expected", f"must have {size} shares ({layout}), not {len(expected)}")
        quality = {}
        for key in ("missing", "null", "invalid"):
            value = raw.get(key, 0.0)
            if not (_is_number(value) and 0 <= value <= 1):
                self.fail(f"{path}.{key}", "must be a share in [0, 1]")
                value = 0.0
            quality[key] = float(value)
        counts = self.counts(f"{path}.counts", raw.get("counts"), size)
        if len(self.problems) > before or expected is None:
            return None
        total = math.fsum(expected) + math.fsum(quality.values())
        if abs(total - 1.0) > _SUM_TOLERANCE:
            self.fail(f"{path}.expected", f"with missing, null and invalid must sum to 1, not {total:.6g}")
            return None
        return Distribution(
            kind=kind,
            pointer=str(pointer),
            edges=edges,
            categories=categories,
            expected=tuple(float(p) / total for p in expected),
            missing=quality["missing"] / total,
            null=quality["null"] / total,
            invalid=quality["invalid"] / total,
            counts=counts,
        )

    def counts(self, path: str, raw: object, size: int | None) -> Counts | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.fail(path, "must be an object")
            return None
        values: dict[str, Any] = {key: raw.get(key) for key in ("entries", "missing", "null", "invalid")}
        bins = raw.get("bins")
        bad = [key for key, value in values.items() if not _is_count(value)]
        if bad:
            self.fail(path, f"{', '.join(bad)}: must be non-negative integers")
            return None
        if not isinstance(bins, list) or not all(_is_count(n) for n in bins):
            self.fail(f"{path}.bins", "must be a list of non-negative integers")
            return None
        if size is not None and len(bins) != size:
            self.fail(f"{path}.bins", f"must have {size} counts, not {len(bins)}")
            return None
        entries, missing, null, invalid = (int(values[k]) for k in ("entries", "missing", "null", "invalid"))
        if sum(bins) + missing + null + invalid != entries:
            self.fail(path, "bins, missing, null and invalid must add up to entries")
            return None
        return Counts(entries, missing, null, invalid, tuple(bins))
