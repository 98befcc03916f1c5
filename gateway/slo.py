"""Error budgets per route x backend: burn rates over a short and a long window.

Follows the Google SRE workbook, "Alerting on SLOs". A route's `slo` allows a share `error_rate` of
bad requests; a request is bad when its status is >= 500, its stream failed after the headers went,
or (with `p99_ms` set) it took longer than `p99_ms`. Over a window:

    burn_rate = (bad / requests) / error_rate

1 spends the budget exactly as fast as it accrues; 14.4 (`FAST_BURN`) would spend a 30-day budget in
about two days, the workbook's paging line for its 1 h / 5 min window pair, which are the `slo`
defaults (`long_window_s` 3600, `short_window_s` 300). `SloStatus.burning(threshold)` is the
workbook's multiwindow condition: both windows above the threshold, so a burst that has stopped (the
short window recovered) or a slow leak that has not yet added up (the long window) does not page.

The budget is window-relative: `budget_remaining = max(0, 1 - burn_rate(long))`, the share of the
long window's allowance of bad requests (error_rate x its requests) still unspent. The gateway keeps
no 30-day history, so this reads "at the last hour's pace, how much of an hour's budget is left";
it is what /admin/stats and the metrics show. None means no request in the window.

Each window is a ring of 60 slots (`gateway.monitoring.window`), so the short window holds between
295 and 300 s of requests with the defaults, and a record is two counter bumps.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config import Slo
from gateway.monitoring.window import SlotRing
from gateway.types import Clock

__all__ = ["FAST_BURN", "SloBook", "SloStatus", "is_bad"]

FAST_BURN = 14.4
Window = Literal["short", "long"]


def is_bad(slo: Slo, status: int, latency_ms: float | None = None, stream_failed: bool = False) -> bool:
    """Whether one request spends error budget."""
    if status >= 500 or stream_failed:
        return True
    return slo.p99_ms is not None and latency_ms is not None and latency_ms > slo.p99_ms


@dataclass(frozen=True, slots=True)
class SloStatus:
    route: str
    backend: str
    error_rate: float  # the budget
    requests_short: int
    bad_short: int
    requests_long: int
    bad_long: int

    @property
    def burn_short(self) -> float | None:
        return self.bad_short / self.requests_short / self.error_rate if self.requests_short else None

    @property
    def burn_long(self) -> float | None:
        return self.bad_long / self.requests_long / self.error_rate if self.requests_long else None

    @property
    def budget_remaining(self) -> float | None:
        burn = self.burn_long
        return None if burn is None else max(0.0, 1.0 - burn)

    def burning(self, threshold: float = FAST_BURN) -> bool:
        """Both windows burn faster than `threshold` (the workbook's multiwindow alert)."""
        short, long = self.burn_short, self.burn_long
        return short is not None and long is not None and short > threshold and long > threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_rate": self.error_rate,
            "short": {"requests": self.requests_short, "bad": self.bad_short, "burn_rate": self.burn_short},
            "long": {"requests": self.requests_long, "bad": self.bad_long, "burn_rate": self.burn_long},
            "budget_remaining": self.budget_remaining,
        }


def _counts() -> list[int]:
    return [0, 0]  # requests, bad


class _RouteSlo:
    def __init__(self, slo: Slo, clock: Clock, slots: int) -> None:
        self.slo = slo
        self._clock = clock
        self._slots = slots
        self.rings: dict[str, tuple[SlotRing[list[int]], SlotRing[list[int]]]] = {}

    def rings_for(self, backend: str) -> tuple[SlotRing[list[int]], SlotRing[list[int]]]:
        pair = self.rings.get(backend)
        if pair is None:
            pair = self.rings[backend] = (
                SlotRing(
                    slot_s=self.slo.short_window_s / self._slots, size=self._slots, clock=self._clock, new=_counts
                ),
                SlotRing(slot_s=self.slo.long_window_s / self._slots, size=self._slots, clock=self._clock, new=_counts),
            )
        return pair


class SloBook:
    """Burn rates per (route, backend) for routes with an `slo`; kept across reloads (`configure`)."""

    def __init__(self, *, clock: Clock = time.time, slots: int = 60) -> None:
        self._clock = clock
        self._slots = slots
        self._routes: dict[str, _RouteSlo] = {}

    def configure(self, route: str, slo: Slo | None) -> None:
        """Adopt a route's (re)loaded `slo`; an unchanged one keeps its windows, a changed one restarts."""
        if slo is None:
            self._routes.pop(route, None)
        elif route not in self._routes or self._routes[route].slo != slo:
            self._routes[route] = _RouteSlo(slo, self._clock, self._slots)

    def retain(self, routes: Collection[str]) -> None:
        for route in [r for r in self._routes if r not in routes]:
            del self._routes[route]

    def record(
        self, route: str, backend: str, *, status: int, latency_ms: float | None = None, stream_failed: bool = False
    ) -> bool | None:
        """Count one finished request; returns whether it was bad (None when the route has no slo)."""
        tracked = self._routes.get(route)
        if tracked is None:
            return None
        bad = is_bad(tracked.slo, status, latency_ms, stream_failed)
        for ring in tracked.rings_for(backend):
            counts = ring.current()
            counts[0] += 1
            counts[1] += bad
        return bad

    def status(self, route: str, backend: str) -> SloStatus | None:
        """Both windows' counts for one backend; None when the route has no slo."""
        tracked = self._routes.get(route)
        if tracked is None:
            return None
        short, long = tracked.rings_for(backend)
        requests_short, bad_short = _sum(short)
        requests_long, bad_long = _sum(long)
        return SloStatus(route, backend, tracked.slo.error_rate, requests_short, bad_short, requests_long, bad_long)

    def burn_rate(self, route: str, backend: str, window: Window = "short") -> float | None:
        status = self.status(route, backend)
        if status is None:
            return None
        return status.burn_short if window == "short" else status.burn_long

    def snapshot(self, route: str) -> dict[str, Any] | None:
        """For /admin/stats: each backend's `SloStatus.to_dict()`; None when the route has no slo."""
        tracked = self._routes.get(route)
        if tracked is None:
            return None
        out = {}
        for backend in sorted(tracked.rings):
            status = self.status(route, backend)
            assert status is not None
            out[backend] = status.to_dict()
        return out

    def __repr__(self) -> str:
        return f"<SloBook routes={sorted(self._routes)}>"


def _sum(ring: SlotRing[list[int]]) -> tuple[int, int]:
    requests = bad = 0
    for counts in ring.window():
        requests += counts[0]
        bad += counts[1]
    return requests, bad
