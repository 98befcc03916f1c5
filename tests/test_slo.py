from __future__ import annotations

import random

import pytest

from gateway.config import Slo
from gateway.slo import FAST_BURN, SloBook, SloStatus, is_bad
from tests.fakes import FakeClock

SLO = Slo(p99_ms=800, error_rate=0.01, short_window_s=300, long_window_s=3600)


def test_what_counts_as_bad() -> None:
    assert is_bad(SLO, 500)
    assert is_bad(SLO, 503)
    assert not is_bad(SLO, 404)  # the client's problem, not the service's
    assert not is_bad(SLO, 429)
    assert is_bad(SLO, 200, stream_failed=True)
    assert is_bad(SLO, 200, latency_ms=800.1)
    assert not is_bad(SLO, 200, latency_ms=800.0)
    assert not is_bad(Slo(error_rate=0.01), 200, latency_ms=10_000)  # no p99_ms: latency never spends budget


def test_burn_rates_and_budget_by_hand() -> None:
    clock = FakeClock()
    book = SloBook(clock=clock)
    book.configure("chat", SLO)
    # 50 minutes ago: 2000 requests, 10 bad (only the long window still sees them).
    for i in range(2000):
        book.record("chat", "v1", status=500 if i < 10 else 200)
    clock.advance(3000)
    # Now: 1000 requests, 20 bad (10 errors, 5 broken streams, 5 too slow).
    outcomes: list[tuple[int, float, bool]] = [(500, 100.0, False)] * 10 + [(200, 100.0, True)] * 5
    outcomes += [(200, 900.0, False)] * 5 + [(200, 100.0, False)] * 980
    random.Random(4).shuffle(outcomes)
    bad = [book.record("chat", "v1", status=s, latency_ms=ms, stream_failed=f) for s, ms, f in outcomes]
    assert sum(bool(b) for b in bad) == 20
    status = book.status("chat", "v1")
    assert status is not None
    # short: 20 / 1000 = 0.02 bad, / 0.01 allowed = burn 2.0
    assert (status.requests_short, status.bad_short) == (1000, 20)
    assert status.burn_short == pytest.approx(2.0)
    # long: (10 + 20) / (2000 + 1000) = 0.01, / 0.01 = burn 1.0: the hour's budget exactly spent
    assert (status.requests_long, status.bad_long) == (3000, 30)
    assert status.burn_long == pytest.approx(1.0)
    assert status.budget_remaining == pytest.approx(0.0)
    assert book.burn_rate("chat", "v1", "short") == pytest.approx(2.0)
    assert book.burn_rate("chat", "v1", "long") == pytest.approx(1.0)
    # Another hour: everything has aged out.
    clock.advance(3600)
    status = book.status("chat", "v1")
    assert status is not None and status.burn_short is None and status.budget_remaining is None


def test_budget_remaining_is_floored_at_zero() -> None:
    # 3 bad of 100 with a 1% budget: burn 3, 1 - 3 = -2, floored.
    status = SloStatus("r", "b", 0.01, 100, 3, 100, 3)
    assert status.burn_long == pytest.approx(3.0) and status.budget_remaining == 0.0
    # 1 bad of 400: burn 0.25, three quarters of the budget left.
    assert SloStatus("r", "b", 0.01, 400, 1, 400, 1).budget_remaining == pytest.approx(0.75)


def test_multiwindow_burning_needs_both_windows() -> None:
    # error_rate 0.01: 15% bad is a burn of 15 > 14.4.
    assert SloStatus("r", "b", 0.01, 100, 15, 1000, 150).burning()
    assert not SloStatus("r", "b", 0.01, 100, 15, 1000, 10).burning()  # the long window has not added up
    assert not SloStatus("r", "b", 0.01, 100, 0, 1000, 150).burning()  # the burst is over
    assert not SloStatus("r", "b", 0.01, 0, 0, 0, 0).burning()
    assert SloStatus("r", "b", 0.01, 100, 7, 1000, 70).burning(threshold=6)
    assert FAST_BURN == 14.4


def test_windows_are_per_backend_and_per_route() -> None:
    clock = FakeClock()
    book = SloBook(clock=clock)
    book.configure("chat", SLO)
    book.record("chat", "v1", status=500)
    book.record("chat", "v2", status=200)
    assert book.burn_rate("chat", "v1") == pytest.approx(100.0)
    assert book.burn_rate("chat", "v2") == 0.0
    assert book.record("no-slo", "v1", status=500) is None
    assert book.status("no-slo", "v1") is None and book.burn_rate("no-slo", "v1") is None
    snapshot = book.snapshot("chat")
    assert snapshot is not None and set(snapshot) == {"v1", "v2"}
    assert snapshot["v1"]["short"] == {"requests": 1, "bad": 1, "burn_rate": pytest.approx(100.0)}
    assert snapshot["v1"]["budget_remaining"] == 0.0
    assert book.snapshot("no-slo") is None


def test_short_window_slides() -> None:
    clock = FakeClock(0.0)
    book = SloBook(clock=clock)  # 60 slots: 5 s each for the short window
    book.configure("chat", SLO)
    book.record("chat", "v1", status=500)
    clock.advance(295)  # still inside (the window holds 295-300 s)
    assert book.status("chat", "v1").bad_short == 1  # type: ignore[union-attr]
    clock.advance(5)
    status = book.status("chat", "v1")
    assert status is not None and status.bad_short == 0 and status.bad_long == 1


def test_configure_keeps_or_restarts() -> None:
    book = SloBook(clock=FakeClock())
    book.configure("chat", SLO)
    book.record("chat", "v1", status=500)
    book.configure("chat", SLO)  # unchanged: kept
    assert book.status("chat", "v1").bad_short == 1  # type: ignore[union-attr]
    book.configure("chat", Slo(error_rate=0.05))  # changed: restarted
    assert book.status("chat", "v1").requests_short == 0  # type: ignore[union-attr]
    book.retain(["other"])
    assert book.status("chat", "v1") is None
    book.configure("chat", SLO)
    book.configure("chat", None)
    assert book.status("chat", "v1") is None
    assert repr(book) == "<SloBook routes=[]>"
