from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, strategies as st

from gateway.baseline import Baseline, build_baseline
from gateway.config import CanaryAnalysis, Monitor
from gateway.monitoring.bins import (
    FIRST_BIN,
    INVALID_BIN,
    MISSING_BIN,
    NULL_BIN,
    OTHER_BIN,
    CategoryBins,
    EdgeBins,
    Histogram,
    LogBins,
    category,
)
from gateway.monitoring.book import DriftLevel, MonitorBook, monitor_problems
from gateway.monitoring.divergence import EPSILON, divergence, js_divergence, proportions, psi
from gateway.monitoring.pointer import MISSING, PointerError, compile_pointer, parse_pointer
from gateway.monitoring.verdict import BackendWindow, evaluate
from gateway.monitoring.window import SlotRing, slots_for
from tests.fakes import FakeClock

# -- pointers -----------------------------------------------------------------------------------


DOC = {
    "instances": [{"age": 30, "country": "DE"}, {"age": None}, {"country": "FR"}],
    "inputs": [{"name": "x", "data": [1.5, 2.5]}, {"name": "y", "data": []}],
    "a/b": {"m~n": 7},
    "*": "star",
    "scalar": 3,
    "": "empty key",
}


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", [DOC]),
        ("/scalar", [3]),
        ("/instances/*/age", [30, None, MISSING]),  # a value, a null, and a row without the key
        ("/instances/*/country", ["DE", MISSING, "FR"]),
        ("/inputs/0/data/*", [1.5, 2.5]),
        ("/inputs/1/data/*", []),  # an empty array yields no entries at all
        ("/inputs/*/data/*", [1.5, 2.5]),
        ("/inputs/*/name", ["x", "y"]),
        ("/inputs/2/data/*", [MISSING]),  # the path ends early once, whatever follows
        ("/a~1b/m~0n", [7]),  # ~1 is "/", ~0 is "~"
        ("/*", ["star"]),  # on an object, * is the member named "*"
        ("/scalar/*", [MISSING]),
        ("/scalar/x", [MISSING]),
        ("/instances/01/age", [MISSING]),  # a leading zero is not an array index
        ("/instances/-", [MISSING]),
        ("/instances/3", [MISSING]),
        ("/instances/0/age", [30]),
        ("/instances/1/age", [None]),
        ("/", ["empty key"]),
        ("/nope/*/x", [MISSING]),
    ],
)
def test_pointer_values(pointer: str, expected: list[object]) -> None:
    assert compile_pointer(pointer)(DOC) == expected


def test_pointer_escapes_decode_in_rfc_order() -> None:
    # "~01" is "~" followed by "1", not "/": ~1 is decoded first only where it appears literally.
    assert parse_pointer("/~01") == ("~1",)
    assert parse_pointer("/a~1b/*/c") == ("a/b", None, "c")
    assert compile_pointer("/~01")({"~1": "tilde-one", "/": "slash"}) == ["tilde-one"]


@pytest.mark.parametrize("pointer", ["age", "/a~2", "/a~", "/~x/y"])
def test_malformed_pointers_are_rejected(pointer: str) -> None:
    with pytest.raises(PointerError):
        compile_pointer(pointer)


def test_monitor_problems_names_the_key() -> None:
    monitor = Monitor.model_validate(
        {
            "features": [{"name": "a", "pointer": "/x~2"}, {"name": "a", "pointer": "/y"}],
            "prediction": {"pointer": "/p~"},
        }
    )
    paths = [path for path, _ in monitor_problems(monitor)]
    assert paths == ["features[1].name", "features[0].pointer", "prediction.pointer"]


# -- bins ---------------------------------------------------------------------------------------


def test_edge_bins_under_interior_last_closed_and_overflow() -> None:
    bins = EdgeBins([0, 10, 20])
    assert bins.index(-0.5) == FIRST_BIN  # underflow
    assert bins.index(0) == FIRST_BIN + 1  # [0, 10)
    assert bins.index(9.999) == FIRST_BIN + 1
    assert bins.index(10) == FIRST_BIN + 2  # [10, 20]
    assert bins.index(20.0) == FIRST_BIN + 2  # the last bin is closed: the baseline's maximum is inside
    assert bins.index(20.000001) == FIRST_BIN + 3  # overflow
    assert bins.index(MISSING) == MISSING_BIN
    assert bins.index(None) == NULL_BIN
    for bad in (True, "5", [1], {"a": 1}, math.nan, math.inf):
        assert bins.index(bad) == INVALID_BIN, bad
    assert [bins.label(i) for i in range(7)] == ["missing", "null", "invalid", "<0", "[0, 10)", "[10, 20]", ">20"]
    counts: dict[int, int] = {}
    bins.count([-1, 0, 5, 10, 20, 21, None, MISSING, "x", math.nan], counts)
    assert counts == {3: 1, 4: 2, 5: 2, 6: 1, NULL_BIN: 1, MISSING_BIN: 1, INVALID_BIN: 2}


def test_edge_bins_single_value_and_validation() -> None:
    bins = EdgeBins([5, 5])  # a feature that was constant in the baseline
    assert [bins.index(v) for v in (4, 5, 6)] == [FIRST_BIN, FIRST_BIN + 1, FIRST_BIN + 2]
    for bad in ([1], [2, 1], [1, 1, 2], [0, math.inf]):
        with pytest.raises(ValueError):
            EdgeBins(bad)


def test_category_bins_known_other_and_open() -> None:
    fixed = CategoryBins(["US", "DE"])
    assert fixed.index("US") == OTHER_BIN + 1
    assert fixed.index("DE") == OTHER_BIN + 2
    assert fixed.index("FR") == OTHER_BIN
    assert fixed.index({"x": 1}) == INVALID_BIN
    assert fixed.index(None) == NULL_BIN
    opened = CategoryBins(open_limit=2)
    assert [opened.index(v) for v in ("a", "b", "c", "a")] == [4, 5, OTHER_BIN, 4]
    assert opened.categories == ["a", "b"]
    assert [opened.label(i) for i in (3, 4, 5)] == ["other", "a", "b"]
    with pytest.raises(ValueError):
        CategoryBins(["a", "a"])


def test_categories_compare_as_strings() -> None:
    assert category(1) == category(1.0) == category("1") == "1"
    assert category(True) == "true"
    assert category(0.5) == "0.5"
    assert category([1]) is None
    assert category(None) is None


def test_log_bins_quarter_octaves() -> None:
    bins = LogBins()
    # Four bins per power of two: [1, 1.25), [1.25, 1.5), [1.5, 1.75), [1.75, 2).
    assert bins.index(1.0) == bins.index(1.2) != bins.index(1.3)
    assert bins.label(bins.index(1.3)) == "[1.25, 1.5)"
    assert bins.label(bins.index(3)) == "[3, 3.5)"
    assert bins.label(bins.index(-5)) == "(-6, -5]"
    assert bins.index(0) == bins.index(0.0) == FIRST_BIN
    assert bins.index(2.0) != bins.index(-2.0)
    assert bins.index(10**400) == INVALID_BIN  # beyond a double
    assert bins.index(math.nan) == bins.index(math.inf) == INVALID_BIN
    assert bins.index("1") == INVALID_BIN


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300))
def test_log_bin_holds_its_value(value: float) -> None:
    bins = LogBins()
    index = bins.index(value)
    assert index >= FIRST_BIN
    if value == 0:
        assert index == FIRST_BIN
        return
    low, high = sorted(abs(float(x)) for x in bins.label(index).strip("[()]").split(", "))
    magnitude = abs(value)
    assert low * (1 - 5e-3) <= magnitude <= high * (1 + 5e-3)  # labels are rounded to 3 digits


def test_histogram_summary() -> None:
    histogram = Histogram(EdgeBins([0, 1]), {FIRST_BIN + 1: 3, NULL_BIN: 1, MISSING_BIN: 2})
    assert (histogram.total, histogram.values, histogram.missing, histogram.null, histogram.invalid) == (6, 3, 2, 1, 0)
    assert histogram.to_dict() == {"entries": 6, "missing": 2, "null": 1, "invalid": 0, "bins": {"[0, 1]": 3}}


# -- divergence ---------------------------------------------------------------------------------


def test_psi_by_hand() -> None:
    # expected 50/50, actual 80/20: (0.8 - 0.5) ln(0.8 / 0.5) + (0.2 - 0.5) ln(0.2 / 0.5)
    #   = 0.3 ln 1.6 + 0.3 ln 2.5 = 0.141001 + 0.274887 = 0.415888
    assert psi({"a": 50, "b": 50}, {"a": 80, "b": 20}) == pytest.approx(0.3 * math.log(1.6) + 0.3 * math.log(2.5))
    assert psi({"a": 50, "b": 50}, {"a": 80, "b": 20}) == pytest.approx(0.415888, abs=1e-6)


def test_psi_floors_empty_bins_at_epsilon() -> None:
    # "b" never occurred in the baseline: its share is floored at 1e-4.
    #   a: (0.95 - 1) ln(0.95 / 1) = 0.0025647;  b: (0.05 - 1e-4) ln(0.05 / 1e-4) = 0.0499 ln 500 = 0.3101090
    expected = -0.05 * math.log(0.95) + (0.05 - EPSILON) * math.log(0.05 / EPSILON)
    assert psi({"a": 1.0}, {"a": 0.95, "b": 0.05}) == pytest.approx(expected)
    assert psi({"a": 1.0}, {"a": 0.95, "b": 0.05}) == pytest.approx(0.312674, abs=1e-6)
    # A bin empty on both sides adds nothing.
    assert psi({"a": 1, "z": 0}, {"a": 1, "z": 0}) == 0.0


def test_js_by_hand_and_against_scipy_example() -> None:
    # p = (1, 0), q = (0.5, 0.5), m = (0.75, 0.25):
    #   KL(p || m) = log2(1 / 0.75) = 0.415037;  KL(q || m) = 0.5 log2(0.5 / 0.75) + 0.5 log2(0.5 / 0.25) = 0.207519
    #   JS = (0.415037 + 0.207519) / 2 = 0.311278 bits
    value = js_divergence({"a": 1, "b": 0}, {"a": 0.5, "b": 0.5})
    assert value == pytest.approx(0.311278, abs=1e-6)
    # scipy.spatial.distance.jensenshannon([1, 0], [0.5, 0.5]) = 0.46450140402245893: the square root of the
    # divergence in nats, so it equals sqrt(value * ln 2).
    assert math.sqrt(value * math.log(2)) == pytest.approx(0.46450140402245893)
    assert js_divergence({"a": 1}, {"b": 1}) == 1.0
    assert divergence("js", {"a": 1}, {"a": 2}) == 0.0
    assert divergence("psi", {"a": 1, "b": 1}, {"a": 4, "b": 1}) == pytest.approx(
        psi({"a": 1, "b": 1}, {"a": 4, "b": 1})
    )


def test_empty_distributions_are_errors() -> None:
    with pytest.raises(ValueError):
        proportions({"a": 0})
    with pytest.raises(ValueError):
        psi({}, {"a": 1})


distributions = st.dictionaries(st.integers(0, 12), st.integers(0, 1000), min_size=1).filter(
    lambda d: sum(d.values()) > 0
)


@given(distributions, distributions)
def test_psi_is_non_negative_and_zero_on_itself(p: dict[int, int], q: dict[int, int]) -> None:
    assert psi(p, q) >= 0.0
    assert psi(p, p) == 0.0
    assert psi(p, {k: 3 * v for k, v in p.items()}) == pytest.approx(0.0, abs=1e-12)


@given(distributions, distributions)
def test_js_is_bounded_and_symmetric(p: dict[int, int], q: dict[int, int]) -> None:
    value = js_divergence(p, q)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(js_divergence(q, p), abs=1e-12)
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)


# -- windows ------------------------------------------------------------------------------------


def test_slot_ring_window_and_wrap() -> None:
    clock = FakeClock(1000.0)
    ring: SlotRing[list[int]] = SlotRing(slot_s=10.0, size=3, clock=clock, new=lambda: [0])
    for _ in range(4):
        ring.current()[0] += 1
        clock.advance(10)
    clock.advance(-10)  # now in the 4th slot
    assert [s[0] for s in ring.window()] == [1, 1, 1]  # the first slot was wrapped over
    assert [s[0] for s in ring.window(10)] == [1]
    assert [s[0] for s in ring.window(15)] == [1, 1]
    assert not ring.idle()
    clock.advance(30)
    assert ring.window() == [] and ring.idle()
    assert slots_for(600, 10) == 60 and slots_for(5, 10) == 1 and slots_for(25, 10) == 3


# -- the book -----------------------------------------------------------------------------------

MONITOR = Monitor.model_validate(
    {
        "features": [
            {"name": "age", "pointer": "/instances/*/age", "kind": "numeric", "bins": 4},
            {"name": "country", "pointer": "/instances/*/country", "kind": "categorical"},
        ],
        "prediction": {"pointer": "/predictions/*/label", "kind": "categorical"},
        "confidence": {"pointer": "/predictions/*/score"},
        "drift": {"metric": "psi", "warn": 0.1, "alert": 0.25, "window_s": 60},
    }
)


def request(rng: random.Random, *, shift: float = 0.0, rows: int = 5, country: str | None = None) -> dict[str, object]:
    return {
        "instances": [
            {"age": rng.uniform(20, 60) + shift, "country": country or rng.choice(["US", "DE", "FR"])}
            for _ in range(rows)
        ]
    }


def response(labels: list[str], scores: list[float]) -> dict[str, object]:
    return {"predictions": [{"label": la, "score": s} for la, s in zip(labels, scores, strict=True)]}


@pytest.fixture
def baseline() -> Baseline:
    rng = random.Random(7)
    docs = [request(rng) for _ in range(400)]
    answers = [response([rng.choice(["yes", "no"])], [0.9]) for _ in range(400)]
    data = build_baseline(MONITOR, docs, responses=answers, route="credit", created="2024-06-01T00:00:00Z")
    return Baseline.from_dict(data)


def test_observe_counts_per_backend_and_window() -> None:
    clock = FakeClock()
    book = MonitorBook(clock=clock)
    book.configure("credit", MONITOR)
    book.observe_request("credit", "v1", {"instances": [{"age": 30, "country": "US"}, {"age": None}]})
    book.observe_request("credit", "v2", {"instances": [{"age": "old", "country": 7}]})
    book.observe_request("other-route", "v1", {"instances": [{"age": 1}]})  # not monitored: ignored
    assert book.wants_request("credit") and book.wants_response("credit")
    assert not book.wants_request("other-route") and not book.wants_response("other-route")
    v1 = book.histogram("credit", "age", backend="v1")
    assert v1 is not None and (v1.total, v1.values, v1.null) == (2, 1, 1)
    country = book.histogram("credit", "country", backend="v1")
    assert country is not None and country.to_dict()["bins"] == {"US": 1} and country.missing == 1
    both = book.histogram("credit", "age")
    assert both is not None and (both.total, both.invalid) == (3, 1)
    assert book.histogram("credit", "nope") is None and book.histogram("nope", "age") is None
    clock.advance(61)  # past the 60 s drift window: everything ages out
    assert book.histogram("credit", "age", backend="v1").total == 0  # type: ignore[union-attr]


def test_observe_response_returns_what_it_read() -> None:
    book = MonitorBook(clock=FakeClock())
    book.configure("credit", MONITOR)
    seen = book.observe_response("credit", "v1", response(["yes", "no"], [0.9, 0.35]))
    assert seen is not None
    assert seen.predictions == ["yes", "no"] and seen.confidences == [0.9, 0.35]
    confidence = book.histogram("credit", "confidence", backend="v1", target="confidence")
    assert confidence is not None and confidence.to_dict()["bins"] == {"[0.3, 0.4)": 1, "[0.9, 1]": 1}
    assert book.observe_response("other", "v1", {}) is None


def test_prediction_divergence_between_canary_and_stable() -> None:
    book = MonitorBook(clock=FakeClock())
    book.configure("credit", MONITOR)
    for _ in range(50):
        book.observe_response("credit", "stable", response(["yes"], [0.9]))
        book.observe_response("credit", "stable", response(["no"], [0.9]))
    for _ in range(80):
        book.observe_response("credit", "canary", response(["yes"], [0.9]))
    for _ in range(20):
        book.observe_response("credit", "canary", response(["no"], [0.9]))
    # stable 50/50, canary 80/20: the PSI computed by hand in test_psi_by_hand.
    assert book.prediction_divergence("credit", "stable", "canary") == pytest.approx(0.415888, abs=1e-6)
    assert book.prediction_divergence("credit", "stable", "missing-backend") is None
    counts = book.prediction_histogram("credit", "canary")
    assert counts is not None and counts.to_dict()["bins"] == {"yes": 80, "no": 20}


def test_drift_goes_warn_alert_and_back_with_hysteresis(baseline: Baseline) -> None:
    clock = FakeClock()
    rng = random.Random(11)
    book = MonitorBook(clock=clock, min_samples=100)
    book.configure("credit", MONITOR, baseline)
    # Like the baseline: no transition (every state starts ok).
    for _ in range(100):
        book.observe_request("credit", "v1", request(rng))
    assert book.evaluate_drift() == []
    ages = {s.name: s for s in book.drift_states("credit")}
    assert ages["age"].level is DriftLevel.OK and ages["age"].score is not None and ages["age"].score < 0.1
    # Ages shifted by +30 years: most values land in the overflow bin the baseline never filled.
    clock.advance(60)
    for _ in range(100):
        book.observe_request("credit", "v1", request(rng, shift=30))
    transitions = book.evaluate_drift()
    assert [(t.name, t.before, t.after) for t in transitions] == [("age", DriftLevel.OK, DriftLevel.ALERT)]
    assert transitions[0].threshold == 0.25 and "age" in transitions[0].reason
    state = next(s for s in book.drift_states("credit") if s.name == "age")
    assert state.psi is not None and state.psi > 0.25 and state.js is not None and 0 < state.js <= 1
    assert state.since == clock.now
    # Back to normal: drops to ok (well below both lines).
    clock.advance(60)
    for _ in range(100):
        book.observe_request("credit", "v1", request(rng))
    back = book.evaluate_drift()
    assert [(t.name, t.before, t.after, t.threshold) for t in back] == [("age", DriftLevel.ALERT, DriftLevel.OK, 0.25)]
    assert "back below" in back[0].reason


def test_drift_needs_min_samples_and_keeps_the_level(baseline: Baseline) -> None:
    clock = FakeClock()
    book = MonitorBook(clock=clock, min_samples=100)
    book.configure("credit", MONITOR, baseline)
    for _ in range(5):  # 25 values: too few to judge, however odd they are
        book.observe_request("credit", "v1", request(random.Random(1), shift=100))
    assert book.evaluate_drift() == []
    state = next(s for s in book.drift_states("credit") if s.name == "age")
    assert state.level is DriftLevel.OK and state.score is None and state.samples == 25


def test_drift_of_missing_values(baseline: Baseline) -> None:
    # A feature that starts arriving null drifts, even though its values did not move.
    book = MonitorBook(clock=FakeClock(), min_samples=50)
    book.configure("credit", MONITOR, baseline)
    rng = random.Random(3)
    for _ in range(40):
        doc = request(rng)
        doc["instances"][0]["country"] = None  # type: ignore[index]
        book.observe_request("credit", "v1", doc)
    changed = {t.name: t.after for t in book.evaluate_drift()}
    assert changed == {"country": DriftLevel.ALERT}


def test_hysteresis_holds_a_level_near_its_line() -> None:
    from gateway.monitoring.book import _level

    ok, warn, alert = DriftLevel.OK, DriftLevel.WARN, DriftLevel.ALERT
    assert _level(0.26, ok, 0.1, 0.25, 0.9) is alert
    assert _level(0.24, alert, 0.1, 0.25, 0.9) is alert  # above 0.225: stays
    assert _level(0.2, alert, 0.1, 0.25, 0.9) is warn
    assert _level(0.095, warn, 0.1, 0.25, 0.9) is warn  # above 0.09: stays
    assert _level(0.095, ok, 0.1, 0.25, 0.9) is ok
    assert _level(0.05, alert, 0.1, 0.25, 0.9) is ok


def test_prediction_drift_against_the_baseline(baseline: Baseline) -> None:
    book = MonitorBook(clock=FakeClock(), min_samples=50)
    book.configure("credit", MONITOR, baseline)
    for _ in range(100):
        book.observe_response("credit", "v2", response(["maybe"], [0.5]))  # a class the baseline never saw
    assert [(t.target, t.after) for t in book.evaluate_drift()] == [("prediction", DriftLevel.ALERT)]


def test_configure_keeps_unchanged_routes_and_resets_changed_ones(baseline: Baseline) -> None:
    book = MonitorBook(clock=FakeClock())
    book.configure("credit", MONITOR, baseline)
    book.observe_request("credit", "v1", request(random.Random(1)))
    book.configure("credit", MONITOR, baseline)  # a reload with the same section
    assert book.histogram("credit", "age").total == 5  # type: ignore[union-attr]
    book.configure("credit", MONITOR)  # the baseline went away: new binning, fresh windows
    assert book.histogram("credit", "age").total == 0  # type: ignore[union-attr]
    book.retain([])
    assert book.route("credit") is None and book.drift_states() == []
    assert repr(book) == "<MonitorBook routes=[] drift_states=0>"
    book.configure("credit", None)
    assert book.snapshot("credit") is None


def test_snapshot_shape(baseline: Baseline) -> None:
    book = MonitorBook(clock=FakeClock(), min_samples=1)
    book.configure("credit", MONITOR, baseline)
    book.observe_request("credit", "v1", request(random.Random(2), rows=2))
    book.observe_response("credit", "v1", response(["yes"], [0.8]))
    book.evaluate_drift()
    snapshot = book.snapshot("credit")
    assert snapshot is not None
    assert set(snapshot) == {"window_s", "baseline", "features", "prediction", "confidence"}
    assert snapshot["features"]["age"]["backends"]["v1"]["entries"] == 2
    assert snapshot["features"]["age"]["drift"]["level"] in {"ok", "warn", "alert"}
    assert snapshot["prediction"]["backends"]["v1"]["bins"] == {"yes": 1}


# -- the canary verdict -------------------------------------------------------------------------

CFG = CanaryAnalysis(min_requests=100)


def healthy(**changes: object) -> BackendWindow:
    fields: dict[str, object] = {
        "requests": 1000,
        "errors": 10,
        "p99_ms": 200.0,
        "contract_violations": 0,
        "predictions": {"yes": 500, "no": 500},
        "accuracy": 0.9,
        "burn_rate": 1.0,
    }
    fields.update(changes)
    return BackendWindow(**fields)  # type: ignore[arg-type]


def test_verdict_insufficient_when_either_side_is_short() -> None:
    assert evaluate(CFG, healthy(requests=99), healthy()).status == "insufficient"
    assert evaluate(CFG, healthy(), healthy(requests=99)).status == "insufficient"


def test_verdict_healthy_lists_every_check() -> None:
    verdict = evaluate(CFG, healthy(), healthy())
    assert verdict.status == "healthy" and verdict.breaches == ()
    assert verdict.observed is not None and len(verdict.observed) == 6
    assert verdict.reason.startswith("healthy:")


@pytest.mark.parametrize(
    ("canary", "check", "observed", "limit"),
    [
        # (40 - 10) / 1000 = 0.03 > 0.02
        (healthy(errors=40), "error_rate_delta", 0.03, 0.02),
        # 320 / 200 = 1.6 > 1.5
        (healthy(p99_ms=320.0), "p99_ratio", 1.6, 1.5),
        # 20 / 1000 = 0.02 > 0.01
        (healthy(contract_violations=20), "contract_violation_rate", 0.02, 0.01),
        # stable 50/50, canary 80/20: PSI 0.415888 (test_psi_by_hand) > 0.2
        (healthy(predictions={"yes": 800, "no": 200}), "prediction_divergence", 0.415888, 0.2),
        # 0.85 - 0.9 = -0.05 < -0.02
        (healthy(accuracy=0.85), "accuracy_delta", -0.05, -0.02),
        # 2.5 / max(1.0, 1) = 2.5 > 2
        (healthy(burn_rate=2.5), "burn_rate_ratio", 2.5, 2.0),
    ],
)
def test_verdict_each_check_breaches(canary: BackendWindow, check: str, observed: float, limit: float) -> None:
    verdict = evaluate(CFG, healthy(), canary)
    assert verdict.status == "breach"
    assert [(b.check, b.limit) for b in verdict.breaches] == [(check, limit)]
    assert verdict.breaches[0].observed == pytest.approx(observed, abs=1e-6)
    assert check in verdict.reason


def test_verdict_skips_checks_without_data() -> None:
    stable = healthy(p99_ms=None, predictions=None, accuracy=None, burn_rate=None)
    canary = healthy(p99_ms=900.0, predictions={"x": 1}, accuracy=0.1, burn_rate=50.0)
    verdict = evaluate(CFG, stable, canary)
    assert verdict.status == "healthy"
    assert verdict.observed is not None and set(verdict.observed) == {"error_rate_delta", "contract_violation_rate"}


def test_burn_rate_ratio_against_a_perfect_stable() -> None:
    # stable burns 0: the denominator is the sustainable pace 1, so a canary within budget passes ...
    assert evaluate(CFG, healthy(burn_rate=0.0), healthy(burn_rate=0.8)).status == "healthy"
    # ... and one burning 3x its budget fails a 2x limit.
    verdict = evaluate(CFG, healthy(burn_rate=0.0), healthy(burn_rate=3.0))
    assert [(b.check, b.observed) for b in verdict.breaches] == [("burn_rate_ratio", 3.0)]
    # Above 1, the ratio is the plain one: 9 / 4 = 2.25 > 2.
    assert evaluate(CFG, healthy(burn_rate=4.0), healthy(burn_rate=9.0)).status == "breach"


def test_verdict_js_metric() -> None:
    verdict = evaluate(CFG, healthy(predictions={"a": 1}), healthy(predictions={"b": 1}), metric="js")
    assert [(b.check, b.observed) for b in verdict.breaches] == [("prediction_divergence", 1.0)]
