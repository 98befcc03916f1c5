"""Feature, prediction and confidence histograms per route x backend, and drift against the baseline.

The request path calls `observe_request(route, backend, body)` and `observe_response(route, backend,
body)` after the response has gone (a dict lookup and a few counter bumps per value; no I/O). Each
(route, backend) has a ring of 10 s slots spanning `drift.window_s` (600 s without a drift section);
a slot holds one `dict[bin index, count]` per feature plus one for the prediction and one for the
confidence, so canary and stable distributions over the last N seconds can be compared with each
other (`prediction_divergence`, for the canary analysis) and with the baseline (`evaluate_drift`).

Binnings per feature (shared by every backend of the route, so their histograms line up): from the
baseline when it has the feature (its edges or categories), otherwise log-octave bins for numbers
and the first 20 categories seen; confidence always in ten equal bins over [0, 1].

Drift: `evaluate_drift()` (call it periodically, e.g. every analysis interval) compares each
feature's, and the prediction's, live histogram over `drift.window_s`, all backends together, with
the baseline; PSI and JS are both computed and `drift.metric` picks the one held against
`drift.warn` / `drift.alert`. Below `min_samples` entries in the window nothing changes. A level is
left only once the score drops below `hysteresis` x its threshold, so a score hovering at a line does
not flap. It returns the transitions; the caller turns them into events, metrics and the webhook.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from gateway.baseline import Baseline
from gateway.config import Monitor
from gateway.monitoring.bins import Binning, CategoryBins, EdgeBins, Histogram, LogBins
from gateway.monitoring.divergence import Metric, divergence, js_divergence, psi
from gateway.monitoring.pointer import Getter, compile_pointer
from gateway.monitoring.window import SlotRing, slots_for
from gateway.types import Clock

__all__ = [
    "CONFIDENCE_EDGES",
    "DEFAULT_WINDOW_S",
    "DriftLevel",
    "DriftState",
    "DriftTransition",
    "MonitorBook",
    "Observation",
    "RouteMonitor",
    "Target",
    "Tracked",
    "monitor_problems",
]

DEFAULT_WINDOW_S = 600.0
OPEN_CATEGORIES = 20  # categories admitted without a baseline; the rest is "other"
CONFIDENCE_EDGES = tuple(i / 10 for i in range(11))

Target = Literal["feature", "prediction"]
Slot = list[dict[int, int]]


class DriftLevel(Enum):
    OK = "ok"
    WARN = "warn"
    ALERT = "alert"


@dataclass(frozen=True, slots=True)
class Tracked:
    """One compiled series: where its values are and how they are binned."""

    name: str
    pointer: str
    get: Getter
    binning: Binning
    expected: dict[int, float] | None = None  # baseline share per bin index, when there is a baseline


@dataclass(frozen=True, slots=True)
class Observation:
    """What `observe_response` read from a response, for `FeedbackStore.remember`."""

    predictions: list[object]
    confidences: list[object] | None


@dataclass(slots=True)
class DriftState:
    route: str
    target: Target
    name: str
    metric: Metric
    level: DriftLevel = DriftLevel.OK
    score: float | None = None  # the `metric` score at the last evaluation with enough samples
    psi: float | None = None
    js: float | None = None
    samples: int = 0
    since: float = 0.0  # when the level last changed (clock time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "name": self.name,
            "metric": self.metric,
            "level": self.level.value,
            "score": self.score,
            "psi": self.psi,
            "js": self.js,
            "samples": self.samples,
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class DriftTransition:
    route: str
    target: Target
    name: str
    before: DriftLevel
    after: DriftLevel
    metric: Metric
    score: float
    threshold: float  # the line crossed: warn or alert (entering), or the one left (recovering)
    samples: int

    @property
    def reason(self) -> str:
        what = f"{self.target} {self.name!r}" if self.target == "feature" else "prediction"
        direction = "above" if _rank(self.after) > _rank(self.before) else "back below"
        return (
            f"{what} drift {self.before.value} -> {self.after.value}: {self.metric} {self.score:.3f} "
            f"{direction} {self.threshold:g} over {self.samples} values"
        )


def _rank(level: DriftLevel) -> int:
    return (DriftLevel.OK, DriftLevel.WARN, DriftLevel.ALERT).index(level)


def monitor_problems(monitor: Monitor) -> list[tuple[str, str]]:
    """Pointer errors in a route's `monitor` section as (key path under it, message)."""
    problems = []
    names: set[str] = set()
    for i, feature in enumerate(monitor.features):
        if feature.name in names:
            problems.append((f"features[{i}].name", f"duplicate feature name {feature.name!r}"))
        names.add(feature.name)
    pointers = [(f"features[{i}].pointer", f.pointer) for i, f in enumerate(monitor.features)]
    if monitor.prediction is not None:
        pointers.append(("prediction.pointer", monitor.prediction.pointer))
    if monitor.confidence is not None:
        pointers.append(("confidence.pointer", monitor.confidence.pointer))
    for path, pointer in pointers:
        try:
            compile_pointer(pointer)
        except ValueError as exc:
            problems.append((path, str(exc)))
    return problems


class RouteMonitor:
    """One route's compiled monitor (getters and binnings) and its per-backend rings."""

    def __init__(self, route: str, config: Monitor, baseline: Baseline | None, *, clock: Clock, slot_s: float) -> None:
        self.route = route
        self.config = config
        self.baseline = baseline
        self.window_s = config.drift.window_s if config.drift is not None else DEFAULT_WINDOW_S
        self.metric: Metric = config.drift.metric if config.drift is not None else "psi"
        self._clock = clock
        self._slot_s = slot_s
        self._size = slots_for(self.window_s, slot_s)
        features = []
        for feature in config.features:
            expected = baseline.features.get(feature.name) if baseline is not None else None
            if expected is not None and (expected.kind != feature.kind or expected.pointer != feature.pointer):
                expected = None  # `baseline_problems` reports it; here the feature just goes without
            binning: Binning
            if expected is not None:
                binning = expected.binning()
            elif feature.kind == "numeric":
                binning = LogBins()
            else:
                binning = CategoryBins(open_limit=OPEN_CATEGORIES)
            shares = expected.shares() if expected is not None else None
            features.append(Tracked(feature.name, feature.pointer, compile_pointer(feature.pointer), binning, shares))
        self.features = tuple(features)
        self.plan = tuple((f.get, f.binning.count) for f in features)  # the hot loop's lookups, done once
        self.prediction: Tracked | None = None
        if config.prediction is not None:
            p = config.prediction
            expected = baseline.prediction if baseline is not None else None
            if expected is not None and expected.kind != p.kind:
                expected = None
            if expected is not None:
                binning = expected.binning()
            else:
                binning = LogBins() if p.kind == "numeric" else CategoryBins(open_limit=OPEN_CATEGORIES)
            shares = expected.shares() if expected is not None else None
            self.prediction = Tracked("prediction", p.pointer, compile_pointer(p.pointer), binning, shares)
        self.confidence: Tracked | None = None
        if config.confidence is not None:
            c = config.confidence
            self.confidence = Tracked("confidence", c.pointer, compile_pointer(c.pointer), EdgeBins(CONFIDENCE_EDGES))
        self._series = len(self.features) + 2  # features..., prediction, confidence
        self.rings: dict[str, SlotRing[Slot]] = {}

    def _new_slot(self) -> Slot:
        return [{} for _ in range(self._series)]

    def slot(self, backend: str) -> Slot:
        ring = self.rings.get(backend)
        if ring is None:
            ring = self.rings[backend] = SlotRing(
                slot_s=self._slot_s, size=self._size, clock=self._clock, new=self._new_slot
            )
        return ring.current()

    def histogram(self, position: int, binning: Binning, backend: str | None, window_s: float | None) -> Histogram:
        out = Histogram(binning)
        rings = self.rings.values() if backend is None else [r for b, r in self.rings.items() if b == backend]
        for ring in rings:
            for slot in ring.window(window_s):
                out.add(slot[position])
        return out

    def same_as(self, config: Monitor, baseline: Baseline | None) -> bool:
        return config == self.config and baseline == self.baseline

    def __repr__(self) -> str:
        return f"<RouteMonitor {self.route} features={len(self.features)} backends={sorted(self.rings)}>"


class MonitorBook:
    """Every route's monitor; see the module docstring. Kept across reloads (`configure` per route).

    `clock` is a wall clock, like `gateway.latency`'s, so replicas' slot numbers line up.
    """

    def __init__(
        self, *, clock: Clock = time.time, slot_s: float = 10.0, min_samples: int = 100, hysteresis: float = 0.9
    ) -> None:
        self.clock = clock
        self.slot_s = slot_s
        self.min_samples = min_samples  # entries in the drift window before a level can change
        self.hysteresis = hysteresis
        self._routes: dict[str, RouteMonitor] = {}
        self._drift: dict[tuple[str, Target, str], DriftState] = {}

    def __repr__(self) -> str:
        return f"<MonitorBook routes={sorted(self._routes)} drift_states={len(self._drift)}>"

    # -- configuration --------------------------------------------------------------------------

    def configure(self, route: str, monitor: Monitor | None, baseline: Baseline | None = None) -> None:
        """Adopt a route's (re)loaded monitor section; unchanged config and baseline keep their windows.

        Raises `PointerError` (a ValueError) for a malformed pointer: check with `monitor_problems` first.
        """
        current = self._routes.get(route)
        if monitor is None:
            self._forget(route)
            return
        if current is not None and current.same_as(monitor, baseline):
            return
        self._forget(route)
        self._routes[route] = RouteMonitor(route, monitor, baseline, clock=self.clock, slot_s=self.slot_s)

    def retain(self, routes: Collection[str]) -> None:
        """Drop every route not in `routes` (after a reload removed them)."""
        for route in [r for r in self._routes if r not in routes]:
            self._forget(route)

    def _forget(self, route: str) -> None:
        self._routes.pop(route, None)
        for key in [k for k in self._drift if k[0] == route]:
            del self._drift[key]

    def route(self, route: str) -> RouteMonitor | None:
        return self._routes.get(route)

    def wants_request(self, route: str) -> bool:
        """Whether `observe_request` would read anything: parse a request body only then."""
        monitor = self._routes.get(route)
        return monitor is not None and bool(monitor.features)

    def wants_response(self, route: str) -> bool:
        """Whether `observe_response` would read anything: parse a response body only then."""
        monitor = self._routes.get(route)
        return monitor is not None and (monitor.prediction is not None or monitor.confidence is not None)

    # -- hot path -------------------------------------------------------------------------------

    def observe_request(self, route: str, backend: str, document: object) -> None:
        """Count a request body's feature values in the current slot (after the response is sent)."""
        monitor = self._routes.get(route)
        if monitor is None or not monitor.features:
            return
        slot = monitor.slot(backend)
        for (get, count), counts in zip(monitor.plan, slot, strict=False):
            count(get(document), counts)

    def observe_response(self, route: str, backend: str, document: object) -> Observation | None:
        """Count a response's predictions and confidences; returns them for the feedback store."""
        monitor = self._routes.get(route)
        if monitor is None or (monitor.prediction is None and monitor.confidence is None):
            return None
        slot = monitor.slot(backend)
        predictions: list[object] = []
        confidences: list[object] | None = None
        if monitor.prediction is not None:
            predictions = monitor.prediction.get(document)
            monitor.prediction.binning.count(predictions, slot[-2])
        if monitor.confidence is not None:
            confidences = monitor.confidence.get(document)
            monitor.confidence.binning.count(confidences, slot[-1])
        return Observation(predictions, confidences)

    # -- queries --------------------------------------------------------------------------------

    def histogram(
        self,
        route: str,
        name: str,
        *,
        backend: str | None = None,
        target: Literal["feature", "prediction", "confidence"] = "feature",
        window_s: float | None = None,
    ) -> Histogram | None:
        """A feature's (or the prediction's, or confidence's) histogram over a window; all backends when
        `backend` is None. None when the route does not monitor it. `window_s` defaults to the ring's
        span and cannot exceed it."""
        monitor = self._routes.get(route)
        if monitor is None:
            return None
        if target == "feature":
            for position, feature in enumerate(monitor.features):
                if feature.name == name:
                    return monitor.histogram(position, feature.binning, backend, window_s)
            return None
        tracked = monitor.prediction if target == "prediction" else monitor.confidence
        if tracked is None:
            return None
        position = -2 if target == "prediction" else -1
        return monitor.histogram(position, tracked.binning, backend, window_s)

    def prediction_histogram(self, route: str, backend: str, window_s: float | None = None) -> Histogram | None:
        """One backend's predictions over a window (for `BackendWindow.predictions`)."""
        return self.histogram(route, "prediction", backend=backend, target="prediction", window_s=window_s)

    def prediction_divergence(
        self, route: str, stable: str, canary: str, window_s: float | None = None
    ) -> float | None:
        """`drift.metric` (PSI without a drift section) of canary's predictions against stable's; None
        when either has none in the window."""
        monitor = self._routes.get(route)
        if monitor is None or monitor.prediction is None:
            return None
        expected = self.prediction_histogram(route, stable, window_s)
        actual = self.prediction_histogram(route, canary, window_s)
        if expected is None or actual is None or not expected.total or not actual.total:
            return None
        return divergence(monitor.metric, expected.counts, actual.counts)

    # -- drift ----------------------------------------------------------------------------------

    def evaluate_drift(self) -> list[DriftTransition]:
        """Score every baselined feature (and prediction) over its drift window; returns level changes."""
        transitions = []
        now = self.clock()
        for route, monitor in self._routes.items():
            drift = monitor.config.drift
            if drift is None:
                continue
            subjects: list[tuple[Target, int, Tracked]] = [("feature", i, f) for i, f in enumerate(monitor.features)]
            if monitor.prediction is not None:
                subjects.append(("prediction", -2, monitor.prediction))
            for target, position, tracked in subjects:
                if tracked.expected is None:
                    continue
                key = (route, target, tracked.name)
                state = self._drift.get(key)
                if state is None:
                    state = self._drift[key] = DriftState(route, target, tracked.name, drift.metric, since=now)
                live = monitor.histogram(position, tracked.binning, None, drift.window_s)
                state.samples = live.total
                if live.total < self.min_samples:
                    continue
                state.psi = psi(tracked.expected, live.counts)
                state.js = js_divergence(tracked.expected, live.counts)
                state.score = state.psi if drift.metric == "psi" else state.js
                after = _level(state.score, state.level, drift.warn, drift.alert, self.hysteresis)
                if after is not state.level:
                    crossed = _threshold(state.level, after, drift.warn, drift.alert)
                    transitions.append(
                        DriftTransition(
                            route,
                            target,
                            tracked.name,
                            state.level,
                            after,
                            drift.metric,
                            state.score,
                            crossed,
                            live.total,
                        )
                    )
                    state.level = after
                    state.since = now
        return transitions

    def drift_states(self, route: str | None = None) -> list[DriftState]:
        return [s for key, s in sorted(self._drift.items()) if route is None or key[0] == route]

    def snapshot(self, route: str) -> dict[str, Any] | None:
        """For /admin/stats: per feature, prediction and confidence, each backend's histogram over the
        route's window and the drift state. None when the route has no monitor."""
        monitor = self._routes.get(route)
        if monitor is None:
            return None
        backends = sorted(monitor.rings)
        states = {(s.target, s.name): s.to_dict() for s in self.drift_states(route)}

        def series(position: int, tracked: Tracked) -> dict[str, Any]:
            return {b: monitor.histogram(position, tracked.binning, b, monitor.window_s).to_dict() for b in backends}

        out: dict[str, Any] = {
            "window_s": monitor.window_s,
            "baseline": monitor.baseline.source if monitor.baseline is not None else None,
            "features": {
                f.name: {"backends": series(i, f), "drift": states.get(("feature", f.name))}
                for i, f in enumerate(monitor.features)
            },
        }
        if monitor.prediction is not None:
            out["prediction"] = {
                "backends": series(-2, monitor.prediction),
                "drift": states.get(("prediction", "prediction")),
            }
        if monitor.confidence is not None:
            out["confidence"] = {"backends": series(-1, monitor.confidence)}
        return out


def _level(score: float, before: DriftLevel, warn: float, alert: float, hysteresis: float) -> DriftLevel:
    if score > alert or (before is DriftLevel.ALERT and score > alert * hysteresis):
        return DriftLevel.ALERT
    if score > warn or (before is not DriftLevel.OK and score > warn * hysteresis):
        return DriftLevel.WARN
    return DriftLevel.OK


def _threshold(before: DriftLevel, after: DriftLevel, warn: float, alert: float) -> float:
    upward = _rank(after) > _rank(before)
    level = after if upward else before
    return alert if level is DriftLevel.ALERT else warn
