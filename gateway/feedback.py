"""Ground truth joined to predictions: accuracy and calibration per route x backend.

After a response, the gateway calls `remember(request_id, route, backend, predictions, confidences)`
with what `MonitorBook.observe_response` read (the values at `monitor.prediction.pointer` and
`monitor.confidence.pointer`). `POST /v1/feedback {"request_id", "label"}` calls `label()`, which
joins the label to the remembered prediction and counts the outcome in the current time slot.

Label mapping. A pointer with `*` reads one prediction per row (KServe with n rows, a batch of
instances); `label` then is a list of the same length, row by row, with null for a row that has no
label yet. A response with a single prediction takes a plain value (or a one-item list). Any other
shape raises `LabelMismatch` (the caller answers 422): guessing which row a lone label belongs to
would corrupt the metric. A row whose prediction was missing or null is skipped.

Matching. Categorical predictions are compared as category strings (`gateway.monitoring.bins.
category`): label 1, 1.0 and "1" all match a prediction of 1. Numeric predictions (regression) have
no accuracy; their mean absolute error is reported instead.

Repeats. The first label that judges at least one row counts; any later label for that id counts
nothing and returns the first result with `duplicate=True`. A client retrying the POST does not
count twice, and a late "correction" cannot rewrite accuracy that has already been reported.

Windows. Outcomes are counted when the label arrives (a ring of 10 s slots, `window_s` long): the
accuracy over the last N seconds is that of the labels received in them.

Calibration is the expected calibration error of Guo et al., "On Calibration of Modern Neural
Networks" (ICML 2017), eq. 3: rows with a confidence in [0, 1] fall into M = 10 bins ((m-1)/M, m/M]
(a confidence of exactly 0 into the first), and ECE = sum over bins of |B_m| / n x |acc(B_m) -
conf(B_m)|, i.e. (1/n) x sum |correct_m - sum of confidences_m|. Confidences are paired with
predictions row by row, so they are used only when the two pointers read as many values.

Entries live in one `cachetools.TTLCache` per route (`feedback_ttl_s`, `feedback_max_entries`; the
least recently used goes first when full); an unknown or expired id raises `UnknownPrediction`, a
KeyError (the caller answers 404).
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cachetools import TTLCache

from gateway.config import Monitor
from gateway.monitoring.bins import Kind, category, number
from gateway.monitoring.window import SlotRing, slots_for
from gateway.types import Clock

__all__ = ["ECE_BINS", "FeedbackStore", "JoinResult", "LabelMismatch", "Outcomes", "UnknownPrediction"]

ECE_BINS = 10


class UnknownPrediction(KeyError):
    """No remembered prediction for this request id: never seen, not monitored, or expired."""

    def __init__(self, request_id: str) -> None:
        super().__init__(request_id)
        self.request_id = request_id

    def __str__(self) -> str:
        return f"no prediction is waiting for a label under request id {self.request_id!r} (unknown or expired)"


class LabelMismatch(ValueError):
    """A label whose shape or type does not fit the remembered prediction."""


@dataclass(frozen=True, slots=True)
class JoinResult:
    request_id: str
    route: str
    backend: str
    rows: int  # rows judged (labelled, with a prediction)
    correct: int | None  # categorical predictions
    abs_error: float | None  # numeric predictions: mean absolute error over the rows
    duplicate: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "route": self.route,
            "backend": self.backend,
            "rows": self.rows,
            "correct": self.correct,
            "abs_error": self.abs_error,
            "duplicate": self.duplicate,
        }


class _Entry:
    __slots__ = ("backend", "confidences", "kind", "predictions", "result", "route")

    def __init__(
        self,
        route: str,
        backend: str,
        kind: Kind,
        predictions: tuple[str | float | None, ...],
        confidences: tuple[float | None, ...] | None,
    ) -> None:
        self.route = route
        self.backend = backend
        self.kind = kind
        self.predictions = predictions
        self.confidences = confidences
        self.result: JoinResult | None = None


class _Slot:
    __slots__ = ("abs_error", "bin_confidence", "bin_correct", "bin_rows", "correct", "numeric_rows", "rows")

    def __init__(self) -> None:
        self.rows = 0  # categorical rows judged
        self.correct = 0
        self.numeric_rows = 0
        self.abs_error = 0.0
        self.bin_rows = [0] * ECE_BINS
        self.bin_correct = [0] * ECE_BINS
        self.bin_confidence = [0.0] * ECE_BINS


class _Route:
    def __init__(self, kind: Kind, ttl_s: float, max_entries: int, clock: Clock) -> None:
        self.kind = kind
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.entries: TTLCache[str, _Entry] = TTLCache(maxsize=max_entries, ttl=ttl_s, timer=clock)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Labelled outcomes of one (route, backend) over a window; see the module docstring."""

    rows: int  # categorical rows judged
    correct: int
    numeric_rows: int
    abs_error_sum: float
    calibrated: int  # categorical rows with a confidence
    ece: float | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.rows if self.rows else None

    @property
    def mae(self) -> float | None:
        return self.abs_error_sum / self.numeric_rows if self.numeric_rows else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "labelled_rows": self.rows + self.numeric_rows,
            "accuracy": self.accuracy,
            "ece": self.ece,
            "calibrated_rows": self.calibrated,
            "mae": self.mae,
        }


class FeedbackStore:
    """Predictions waiting for labels, and the labelled outcomes per (route, backend) over time."""

    def __init__(self, *, clock: Clock = time.monotonic, window_s: float = 600.0, slot_s: float = 10.0) -> None:
        self._clock = clock
        self.window_s = window_s
        self._slot_s = slot_s
        self._size = slots_for(window_s, slot_s)
        self._routes: dict[str, _Route] = {}
        self._outcomes: dict[tuple[str, str], SlotRing[_Slot]] = {}

    # -- configuration --------------------------------------------------------------------------

    def configure(self, route: str, monitor: Monitor | None) -> None:
        """Adopt a route's (re)loaded monitor: a route without `monitor.prediction` keeps nothing.
        Waiting predictions survive a reload unless the prediction kind, ttl or size changed."""
        if monitor is None or monitor.prediction is None:
            self._forget(route)
            return
        kind = monitor.prediction.kind
        current = self._routes.get(route)
        if current is not None and (current.kind, current.ttl_s, current.max_entries) == (
            kind,
            monitor.feedback_ttl_s,
            monitor.feedback_max_entries,
        ):
            return
        if current is not None and current.kind != kind:
            self._forget(route)
        self._routes[route] = _Route(kind, monitor.feedback_ttl_s, monitor.feedback_max_entries, self._clock)

    def retain(self, routes: Collection[str]) -> None:
        for route in [r for r in self._routes if r not in routes]:
            self._forget(route)

    def _forget(self, route: str) -> None:
        self._routes.pop(route, None)
        for key in [k for k in self._outcomes if k[0] == route]:
            del self._outcomes[key]

    # -- after a response -----------------------------------------------------------------------

    def remember(
        self,
        request_id: str,
        route: str,
        backend: str,
        predictions: Sequence[object],
        confidences: Sequence[object] | None = None,
    ) -> bool:
        """Keep a response's predictions until a label comes or they expire; False when there is
        nothing to keep (the route has no prediction, or the response had none)."""
        tracked = self._routes.get(route)
        if tracked is None:
            return False
        if tracked.kind == "categorical":
            rows: tuple[str | float | None, ...] = tuple(category(p) for p in predictions)
        else:
            rows = tuple(_float(p) for p in predictions)
        if not any(p is not None for p in rows):
            return False
        scores: tuple[float | None, ...] | None = None
        if confidences is not None and len(confidences) == len(rows):
            scores = tuple(_confidence(c) for c in confidences)
        tracked.entries[request_id] = _Entry(route, backend, tracked.kind, rows, scores)
        return True

    # -- POST /v1/feedback ----------------------------------------------------------------------

    def label(self, request_id: str, label: object, *, route: str | None = None) -> JoinResult:
        """Join a label to a remembered prediction (see the module docstring for shapes and repeats).

        Raises `UnknownPrediction` (KeyError) for an unknown or expired id, `LabelMismatch` (ValueError)
        for a label that does not fit the prediction.
        """
        entry = self._find(request_id, route)
        if entry.result is not None:
            return replace(entry.result, duplicate=True)
        rows = entry.predictions
        if isinstance(label, list):
            if len(label) != len(rows):
                raise LabelMismatch(f"{len(label)} labels for {len(rows)} predictions: send one per row")
            labels: list[object] = label
        elif len(rows) == 1:
            labels = [label]
        else:
            raise LabelMismatch(
                f"the response held {len(rows)} predictions: send a list of {len(rows)} labels (null where unknown)"
            )
        judged: list[tuple[int, str | float]] = []
        for i, (value, prediction) in enumerate(zip(labels, rows, strict=True)):
            if value is None:
                continue
            truth: str | float | None = category(value) if entry.kind == "categorical" else _float(value)
            if truth is None:
                expected = "a string, number or boolean" if entry.kind == "categorical" else "a number"
                raise LabelMismatch(f"label {i} must be {expected} (or null), not {type(value).__name__}")
            if prediction is not None:
                judged.append((i, truth))
        if not judged:
            return JoinResult(request_id, entry.route, entry.backend, 0, None, None)
        slot = self._slot(entry.route, entry.backend)
        if entry.kind == "categorical":
            correct = 0
            for i, truth in judged:
                hit = entry.predictions[i] == truth
                correct += hit
                confidence = entry.confidences[i] if entry.confidences is not None else None
                if confidence is not None:
                    b = min(ECE_BINS - 1, max(0, math.ceil(confidence * ECE_BINS) - 1))
                    slot.bin_rows[b] += 1
                    slot.bin_correct[b] += hit
                    slot.bin_confidence[b] += confidence
            slot.rows += len(judged)
            slot.correct += correct
            result = JoinResult(request_id, entry.route, entry.backend, len(judged), correct, None)
        else:
            error = math.fsum(abs(float(entry.predictions[i]) - float(truth)) for i, truth in judged)  # type: ignore[arg-type]
            slot.numeric_rows += len(judged)
            slot.abs_error += error
            result = JoinResult(request_id, entry.route, entry.backend, len(judged), None, error / len(judged))
        entry.result = result
        return result

    def _find(self, request_id: str, route: str | None) -> _Entry:
        if route is None:
            candidates = list(self._routes.values())
        else:
            candidates = [self._routes[route]] if route in self._routes else []
        for tracked in candidates:
            entry = tracked.entries.get(request_id)
            if entry is not None:
                return entry
        raise UnknownPrediction(request_id)

    def _slot(self, route: str, backend: str) -> _Slot:
        ring = self._outcomes.get((route, backend))
        if ring is None:
            ring = self._outcomes[(route, backend)] = SlotRing(
                slot_s=self._slot_s, size=self._size, clock=self._clock, new=_Slot
            )
        return ring.current()

    # -- queries --------------------------------------------------------------------------------

    def outcomes(self, route: str, backend: str, window_s: float | None = None) -> Outcomes | None:
        """Labelled outcomes over the last `window_s` (the store's window by default); None without any."""
        ring = self._outcomes.get((route, backend))
        if ring is None:
            return None
        rows = correct = numeric_rows = 0
        abs_error = 0.0
        bin_rows = [0] * ECE_BINS
        bin_gap = [0.0] * ECE_BINS  # correct - sum of confidences, per bin
        for slot in ring.window(window_s):
            rows += slot.rows
            correct += slot.correct
            numeric_rows += slot.numeric_rows
            abs_error += slot.abs_error
            for b in range(ECE_BINS):
                bin_rows[b] += slot.bin_rows[b]
                bin_gap[b] += slot.bin_correct[b] - slot.bin_confidence[b]
        if not rows and not numeric_rows:
            return None
        calibrated = sum(bin_rows)
        ece = math.fsum(abs(gap) for gap in bin_gap) / calibrated if calibrated else None
        return Outcomes(rows, correct, numeric_rows, abs_error, calibrated, ece)

    def accuracy(self, route: str, backend: str, window_s: float | None = None) -> float | None:
        """correct / labelled rows over the window; None without labels (or for numeric predictions)."""
        outcomes = self.outcomes(route, backend, window_s)
        return outcomes.accuracy if outcomes is not None else None

    def snapshot(self, route: str) -> dict[str, Any]:
        """For /admin/stats: each backend's outcomes over the store's window, and predictions waiting."""
        tracked = self._routes.get(route)
        backends = {}
        for key in sorted(k for k in self._outcomes if k[0] == route):
            outcomes = self.outcomes(*key)
            if outcomes is not None:
                backends[key[1]] = outcomes.to_dict()
        return {"waiting": len(tracked.entries) if tracked is not None else 0, "backends": backends}

    def __len__(self) -> int:
        return sum(len(r.entries) for r in self._routes.values())

    def __repr__(self) -> str:
        return f"<FeedbackStore routes={sorted(self._routes)} waiting={len(self)}>"


def _float(value: object) -> float | None:
    n = number(value)
    return None if n is None else float(n)


def _confidence(value: object) -> float | None:
    n = _float(value)
    return n if n is not None and 0.0 <= n <= 1.0 else None
