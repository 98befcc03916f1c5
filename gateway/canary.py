"""Choosing the backend for a request: a weighted split between the route's backends."""

from __future__ import annotations

import bisect
import random
from itertools import accumulate

from gateway.routing import BackendTarget, CompiledRoute


class WeightedChoice:
    """Picks a backend with probability proportional to its weight (weights need not sum to 100)."""

    def __init__(self, backends: tuple[BackendTarget, ...], weights: list[float], rng: random.Random) -> None:
        self._pool = [(b, w) for b, w in zip(backends, weights, strict=True) if w > 0]
        self._cumulative = list(accumulate(w for _, w in self._pool))
        self._rng = rng

    @classmethod
    def for_route(cls, route: CompiledRoute, rng: random.Random) -> WeightedChoice:
        return cls(route.backends, [b.weight for b in route.backends], rng)

    def pick(self) -> BackendTarget:
        if len(self._pool) == 1:
            return self._pool[0][0]
        point = self._rng.random() * self._cumulative[-1]
        return self._pool[bisect.bisect_right(self._cumulative, point)][0]

    def __repr__(self) -> str:
        return f"<WeightedChoice {', '.join(f'{b.name}={w:g}' for b, w in self._pool)}>"
