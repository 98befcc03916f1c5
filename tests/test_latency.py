from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings, strategies as st

from gateway.latency import QUANTILES, LatencyBook, Sketch
from tests.fakes import FakeClock

ACCURACY = 0.01
SLACK = 1e-9  # float rounding at a bucket edge


def exact(values: list[float], q: float) -> float:
    # DDSketch's rank definition: the value at index floor(q * (n - 1)) of the sorted values.
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def assert_within(estimate: float | None, truth: float) -> None:
    assert estimate is not None
    if truth == 0:
        assert estimate == 0
    else:
        assert abs(estimate - truth) / truth <= ACCURACY + SLACK, (estimate, truth)


@pytest.mark.parametrize(
    "draw",
    [
        pytest.param(lambda rng: rng.lognormvariate(math.log(120.0), 0.8), id="lognormal"),
        pytest.param(lambda rng: rng.uniform(1.0, 2000.0), id="uniform"),
        pytest.param(lambda rng: rng.lognormvariate(0.0, 2.5), id="lognormal-wide"),
    ],
)
def test_quantiles_within_one_percent_of_exact(draw) -> None:
    rng = random.Random(20240601)
    values = [draw(rng) for _ in range(20_000)]
    sketch = Sketch(ACCURACY)
    for v in values:
        sketch.add(v)
    for _, q in QUANTILES:
        assert_within(sketch.quantile(q), exact(values, q))
    assert sketch.quantile(0.0) == min(values)
    assert sketch.quantile(1.0) == max(values)
    assert sketch.count == len(values)
    assert sketch.sum == pytest.approx(sum(values))
    assert len(sketch.bins) < 1000  # sparse: only the occupied buckets


positive = st.floats(min_value=1e-3, max_value=1e7, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(positive, min_size=1, max_size=300), q=st.floats(min_value=0.0, max_value=1.0))
def test_any_quantile_within_accuracy(values: list[float], q: float) -> None:
    sketch = Sketch(ACCURACY)
    for v in values:
        sketch.add(v)
    assert_within(sketch.quantile(q), exact(values, q))


@settings(max_examples=60, deadline=None)
@given(a=st.lists(positive, max_size=200), b=st.lists(positive, max_size=200))
def test_merge_equals_sketch_of_union(a: list[float], b: list[float]) -> None:
    left, right, union = Sketch(), Sketch(), Sketch()
    for v in a:
        left.add(v)
    for v in b:
        right.add(v)
    for v in a + b:
        union.add(v)
    left.merge(right)
    assert left.bins == union.bins
    assert (left.count, left.zero_count, left.min, left.max) == (union.count, union.zero_count, union.min, union.max)
    assert left.sum == pytest.approx(union.sum)
    for _, q in QUANTILES:
        assert left.quantile(q) == union.quantile(q)


def test_zero_negative_and_nonsense_values() -> None:
    sketch = Sketch()
    for v in (0.0, -3.0, float("nan"), float("inf"), 10.0):
        sketch.add(v)
    assert sketch.count == 3  # NaN and inf are dropped
    assert sketch.zero_count == 2
    assert sketch.quantile(0.0) == 0.0
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(1.0) == 10.0
    assert Sketch().quantile(0.5) is None
    with pytest.raises(ValueError):
        sketch.quantile(1.5)
    with pytest.raises(ValueError):
        sketch.quantiles([0.9, 0.5])
    with pytest.raises(ValueError):
        Sketch(0.0)
    with pytest.raises(ValueError):
        Sketch(0.01).merge(Sketch(0.02))


def test_sketch_round_trips_through_dict() -> None:
    sketch = Sketch()
    for v in (0.0, 1.5, 3.0, 250.0, 250.1):
        sketch.add(v)
    clone = Sketch.from_dict(sketch.to_dict())
    assert clone.bins == sketch.bins
    assert (clone.count, clone.zero_count, clone.sum, clone.min, clone.max) == (
        sketch.count,
        sketch.zero_count,
        sketch.sum,
        sketch.min,
        sketch.max,
    )
    assert Sketch.from_dict(Sketch().to_dict()).count == 0
    broken = sketch.to_dict() | {"n": 99}
    with pytest.raises(ValueError):
        Sketch.from_dict(broken)
    assert repr(sketch) == "<Sketch n=5 buckets=3 accuracy=0.01>"
    assert sketch.copy().bins == sketch.bins
    assert sketch.mean == pytest.approx(sketch.sum / 5)


def test_book_records_each_kind_per_series() -> None:
    clock = FakeClock()
    book = LatencyBook(clock=clock)
    for ms in range(1, 101):
        book.record("chat", "v1", total_ms=ms + 5, upstream_ms=float(ms), ttft_ms=None)
    book.record("chat", "v2", total_ms=7.0, upstream_ms=None, ttft_ms=3.0)

    upstream = book.quantiles("chat", "v1", "upstream", "1m")
    assert upstream is not None
    assert list(upstream) == ["p50", "p90", "p99", "p99.9"]
    assert_within(upstream["p50"], 50.0)
    assert_within(upstream["p99"], 99.0)
    assert book.quantiles("chat", "v1", "ttft", "1m") is None
    ttft = book.quantiles("chat", "v2", "ttft", "10m")
    assert ttft is not None and ttft["p50"] == pytest.approx(3.0)
    assert book.quantiles("chat", "v2", "upstream", "1m") is None
    assert book.quantiles("nope", "v1", "total", "1m") is None
    assert book.series() == [("chat", "v1"), ("chat", "v2")]
    assert repr(book) == "<LatencyBook series=2 slot_s=10 accuracy=0.01>"


def test_windows_expire_with_the_clock() -> None:
    clock = FakeClock(1_000_000.0)  # a multiple of 10: slot boundaries at whole tens
    book = LatencyBook(clock=clock)
    book.record("r", "b", 100.0, 90.0, None)
    clock.advance(30)
    book.record("r", "b", 200.0, 190.0, None)

    clock.advance(29.9)  # t=59.9: both in the 1-minute window (6 slots: [10, 60) and the current one)
    assert book.window("r", "b", "total", "1m").count == 2
    clock.advance(0.1)  # t=60: the first slot left the 1-minute window
    assert book.window("r", "b", "total", "1m").count == 1
    assert book.window("r", "b", "total", "10m").count == 2
    clock.advance(30)  # t=90: the second left too
    assert book.quantiles("r", "b", "total", "1m") is None
    assert book.window("r", "b", "total", "10m").count == 2

    clock.now = 1_000_000.0 + 600  # the first slot leaves the 10-minute window
    assert book.window("r", "b", "total", "10m").count == 1
    book.record("r", "b", 300.0, None, None)  # reuses the ring slot of t=0 (600 s later)
    ten = book.window("r", "b", "total", "10m")
    assert ten.count == 2 and ten.max == 300.0
    clock.now = 1_000_000.0 + 630
    assert book.window("r", "b", "total", "10m").count == 1
    assert book.prune() == 0
    clock.advance(600)
    assert book.prune() == 1
    assert book.series() == []


def test_percentile_is_cached_and_needs_enough_samples() -> None:
    clock = FakeClock()
    book = LatencyBook(clock=clock, cache_s=1.0)
    for ms in range(1, 20):
        book.record("r", "b", ms, ms, None)
    assert book.percentile("r", "b", 95) is None  # 19 samples < min_count 20
    clock.advance(1.0)
    book.record("r", "b", 20, 20, None)
    p95 = book.percentile("r", "b", 95)
    assert p95 is not None
    assert_within(p95, 19.0)  # sorted 1..20, index int(0.95 * 19) = 18
    book.record("r", "b", 5000, 5000, None)
    assert book.percentile("r", "b", 95) == p95  # cached
    clock.advance(1.0)
    assert book.percentile("r", "b", 95) != p95
    assert book.percentile("r", "b", 50, kind="total", window="10m", min_count=1) is not None
    book.forget("r")
    assert book.percentile("r", "b", 95) is None


def test_snapshot_shape() -> None:
    book = LatencyBook(clock=FakeClock())
    book.record("chat", "v1", 10.0, 8.0, 2.0)
    book.record("chat", "v1", 20.0, 18.0, 4.0)
    snap = book.snapshot()
    one = snap["chat"]["v1"]["1m"]
    assert one["total"]["count"] == 2
    assert one["total"]["mean"] == pytest.approx(15.0)
    assert set(one["upstream"]) == {"count", "mean", "p50", "p90", "p99", "p99.9"}
    assert snap["chat"]["v1"]["10m"]["ttft"]["count"] == 2


def test_merged_books_equal_the_book_of_all_requests() -> None:
    clock = FakeClock(2_000_000.0)
    rng = random.Random(7)
    a, b, union = (LatencyBook(clock=clock) for _ in range(3))
    for _ in range(120):
        for book in (a, b):
            ms = rng.lognormvariate(4.0, 1.0)
            book.record("chat", "v1", ms, ms * 0.9, None)
            union.record("chat", "v1", ms, ms * 0.9, None)
        clock.advance(2.5)  # 300 s in all: several slots
    a.record("other", "x", 1.0, None, None)
    union.record("other", "x", 1.0, None, None)

    combined = LatencyBook.from_bytes(a.to_bytes(), clock=clock)
    combined.merge(LatencyBook.from_bytes(b.to_bytes(), clock=clock))
    for window in ("1m", "10m"):
        for kind in ("total", "upstream"):
            assert combined.quantiles("chat", "v1", kind, window) == union.quantiles("chat", "v1", kind, window)
            assert combined.window("chat", "v1", kind, window).count == union.window("chat", "v1", kind, window).count
    assert combined.quantiles("other", "x", "total", "1m") == union.quantiles("other", "x", "total", "1m")


def test_merge_skips_expired_or_future_slots_and_mismatched_books() -> None:
    clock = FakeClock(3_000_000.0)
    book = LatencyBook(clock=clock)
    old = LatencyBook(clock=FakeClock(3_000_000.0 - 700))
    old.record("r", "b", 1.0, None, None)
    future = LatencyBook(clock=FakeClock(3_000_000.0 + 60))
    future.record("r", "b", 1.0, None, None)
    book.merge(old)
    book.merge(future.to_dict())
    assert book.window("r", "b", "total", "10m").count == 0

    with pytest.raises(ValueError):
        book.merge(LatencyBook(clock=clock, slot_s=5.0))
    with pytest.raises(ValueError):
        book.merge({"v": 99})
    with pytest.raises(ValueError):
        LatencyBook(slot_s=7.0)
