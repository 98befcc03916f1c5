"""Resilience state: retry budgets, circuit breakers and the hedge cap (the policies' memory).

The attempt loop (`gateway.attempts`) asks these objects for permission and reports outcomes.
They keep state across reloads (keyed by route and backend), take an injected clock, and do no I/O.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from enum import Enum

from gateway.config import CircuitBreaker as BreakerConfig
from gateway.types import Clock

log = logging.getLogger("gateway")


class SlidingCounter:
    """Counts events over the last `window_s` in one-second buckets (O(1) per event)."""

    def __init__(self, window_s: int, clock: Clock) -> None:
        self._window = window_s
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, count]
        self._total = 0

    def add(self, n: int = 1) -> None:
        second = int(self._clock())
        self._expire(second)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
        self._total += n

    def total(self) -> int:
        self._expire(int(self._clock()))
        return self._total

    def _expire(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._window:
            self._total -= self._buckets.popleft()[1]


class RetryBudget:
    """Envoy-style: retries stay under `ratio` x requests over a sliding window, with a floor."""

    def __init__(self, ratio: float, floor: int, clock: Clock, window_s: int = 10) -> None:
        self.ratio = ratio
        self.floor = floor
        self._requests = SlidingCounter(window_s, clock)
        self._retries = SlidingCounter(window_s, clock)

    def request(self) -> None:
        self._requests.add()

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is one left."""
        allowed = max(self.floor, math.floor(self.ratio * self._requests.total()))
        if self._retries.total() >= allowed:
            return False
        self._retries.add()
        return True

    def __repr__(self) -> str:
        return f"<RetryBudget retries={self._retries.total()} requests={self._requests.total()} ratio={self.ratio}>"


class HedgeBudget:
    """Hedges stay under `max_ratio` of requests over a sliding window."""

    def __init__(self, max_ratio: float, clock: Clock, window_s: int = 10) -> None:
        self.ratio = max_ratio
        self._requests = SlidingCounter(window_s, clock)
        self._hedges = SlidingCounter(window_s, clock)

    def request(self) -> None:
        self._requests.add()

    def try_spend(self) -> bool:
        if self._hedges.total() + 1 > self.ratio * self._requests.total():
            return False
        self._hedges.add()
        return True


class BreakerState(Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


Listener = Callable[["CircuitBreaker", BreakerState, BreakerState, str], None]


class CircuitBreaker:
    """resilience4j-style breaker over the last `min_requests` outcomes.

    closed -> open when at least `min_requests` outcomes are recorded and the failure share reaches
    `failure_ratio`; open -> half-open after `open_s`, letting one probe through; the probe's
    success closes it, its failure opens it again.
    """

    def __init__(self, route: str, backend: str, config: BreakerConfig, clock: Clock, listener: Listener) -> None:
        self.route = route
        self.backend = backend
        self.config = config
        self._clock = clock
        self._listener = listener
        self._outcomes: deque[bool] = deque(maxlen=config.min_requests)  # True = failure
        self._failures = 0
        self.state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Whether a request may go to this backend now (claims the half-open probe if it is free)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.config.open_s:
                return False
            self._move(BreakerState.HALF_OPEN, f"{self.config.open_s:g}s passed: one probe request allowed")
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_in_s(self) -> float:
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.config.open_s - (self._clock() - self._opened_at))

    def record(self, failed: bool) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False
            if failed:
                self._open("the half-open probe failed")
            else:
                self._outcomes.clear()
                self._failures = 0
                self._move(BreakerState.CLOSED, "the half-open probe succeeded")
            return
        if self.state is BreakerState.OPEN:
            return  # a request let through before the breaker opened
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._failures -= 1
        self._outcomes.append(failed)
        self._failures += failed
        if len(self._outcomes) >= self.config.min_requests:
            ratio = self._failures / len(self._outcomes)
            if ratio >= self.config.failure_ratio:
                self._open(f"{self._failures} of the last {len(self._outcomes)} requests failed")

    def release(self) -> None:
        """A claimed probe that was never sent (e.g. the request ended first): free the slot."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._outcomes.clear()
        self._failures = 0
        self._move(BreakerState.OPEN, reason)

    def _move(self, state: BreakerState, reason: str) -> None:
        before, self.state = self.state, state
        self._listener(self, before, state, reason)

    def __repr__(self) -> str:
        failures = f"{self._failures}/{len(self._outcomes)}"
        return f"<CircuitBreaker {self.route}/{self.backend} {self.state.value} failures={failures}>"


class ResilienceState:
    """Every route's budgets and every backend's breaker, kept across reloads."""

    def __init__(self, clock: Clock, listener: Listener) -> None:
        self._clock = clock
        self._listener = listener
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._retry: dict[str, RetryBudget] = {}
        self._hedge: dict[str, HedgeBudget] = {}

    def breaker(self, route: str, backend: str, config: BreakerConfig) -> CircuitBreaker:
        breaker = self._breakers.get((route, backend))
        if breaker is not None and breaker.config is not config:
            # A reload: an equal config keeps the breaker's state (and is compared only this once).
            if breaker.config == config:
                breaker.config = config
            else:
                breaker = None
        if breaker is None:
            breaker = CircuitBreaker(route, backend, config, self._clock, self._listener)
            self._breakers[(route, backend)] = breaker
        return breaker

    def retry_budget(self, route: str, ratio: float, floor: int) -> RetryBudget:
        budget = self._retry.get(route)
        if budget is None or budget.ratio != ratio or budget.floor != floor:
            budget = self._retry[route] = RetryBudget(ratio, floor, self._clock)
        return budget

    def hedge_budget(self, route: str, max_ratio: float) -> HedgeBudget:
        budget = self._hedge.get(route)
        if budget is None or budget.ratio != max_ratio:
            budget = self._hedge[route] = HedgeBudget(max_ratio, self._clock)
        return budget

    def states(self) -> dict[tuple[str, str], BreakerState]:
        return {key: breaker.state for key, breaker in self._breakers.items()}
