from __future__ import annotations

from gateway.config import CircuitBreaker as BreakerConfig
from gateway.resilience import CircuitBreaker, HedgeBudget, RetryBudget, SlidingCounter
from tests.fakes import FakeClock


def state(breaker: CircuitBreaker) -> str:
    return breaker.state.value  # a call, so mypy does not narrow the state across the steps below


def test_sliding_counter_forgets_old_seconds() -> None:
    clock = FakeClock(1000.0)
    counter = SlidingCounter(10, clock)
    counter.add(3)
    clock.now += 5
    counter.add()
    assert counter.total() == 4
    clock.now += 5
    assert counter.total() == 1
    clock.now += 5
    assert counter.total() == 0


def test_retry_budget_has_a_floor_and_a_ratio() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(0.2, 2, clock)
    for _ in range(10):
        budget.request()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]  # max(2, 0.2 x 10) = 2
    for _ in range(10):
        budget.request()
    assert budget.try_spend() is True  # 0.2 x 20 = 4
    assert budget.try_spend() is True
    assert budget.try_spend() is False
    clock.now += 11
    assert budget.try_spend() is True  # the window moved on
    assert repr(budget).startswith("<RetryBudget retries=1")


def test_hedge_budget_caps_the_share() -> None:
    budget = HedgeBudget(0.1, FakeClock(1000.0))
    for _ in range(20):
        budget.request()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = FakeClock(1000.0)
    changes: list[tuple[str, str, str]] = []
    config = BreakerConfig(failure_ratio=0.5, min_requests=4, open_s=30)
    breaker = CircuitBreaker("r", "b", config, clock, lambda b, x, y, why: changes.append((x.value, y.value, why)))
    for failed in (True, False, True, False):
        assert breaker.allow()
        breaker.record(failed)
    assert state(breaker) == "open"
    assert not breaker.allow()
    assert breaker.retry_in_s() == 30
    clock.now += 30
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record(True)
    assert state(breaker) == "open"
    clock.now += 30
    assert breaker.allow()
    breaker.record(False)
    assert state(breaker) == "closed"
    assert [c[:2] for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert repr(breaker) == "<CircuitBreaker r/b closed failures=0/0>"


def test_breaker_needs_min_requests_and_releases_an_unused_probe() -> None:
    clock = FakeClock(1000.0)
    config = BreakerConfig(failure_ratio=0.5, min_requests=4, open_s=1)
    breaker = CircuitBreaker("r", "b", config, clock, lambda *args: None)
    for _ in range(3):
        breaker.record(True)
    assert state(breaker) == "closed"  # 3 < min_requests
    breaker.record(True)
    clock.now += 1
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()  # the slot was freed
