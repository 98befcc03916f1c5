"""Choosing the backend for a request: weighted split, sticky keys, client override; run-time weights.

Sticky keys use weighted rendezvous hashing (each backend scores `weight / -ln(h)` for a hash `h`
of key and backend; the highest wins). Raising one backend's weight only moves keys *to* it, so
moving a canary from 10% to 20% moves about 10% of keys and no key moves between other backends.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from itertools import accumulate

from gateway.config import Route
from gateway.context import RequestContext
from gateway.errors import BadRequest, FieldError
from gateway.routing import BackendTarget, CompiledRoute

OVERRIDE_HEADER = b"x-gateway-backend"


class BackendChooser:
    """Picks the first backend to try for one route; weights can change at run time via `update`."""

    def __init__(self, route: CompiledRoute, weights: dict[str, float], rng: random.Random) -> None:
        self._route = route
        self._rng = rng
        self._sticky = route.config.sticky.header.lower().encode() if route.config.sticky else None
        self._override = route.config.allow_override
        self.update(weights)

    def update(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)
        self._pool = [b for b in self._route.backends if self.weights.get(b.name, 0) > 0]
        self._cumulative = list(accumulate(self.weights[b.name] for b in self._pool))

    def choose(self, ctx: RequestContext) -> BackendTarget:
        if self._override:
            pinned = ctx.header(OVERRIDE_HEADER)
            if pinned is not None:
                backend = self._route.backend(pinned.decode("latin-1"))
                if backend is None:
                    names = ", ".join(b.name for b in self._route.backends)
                    raise BadRequest(
                        f"x-gateway-backend names no backend of route {self._route.name!r}",
                        errors=[FieldError("x-gateway-backend", f"must be one of: {names}")],
                    )
                return backend
        if not self._pool:  # every weight is 0 (e.g. an operator drained the route): the stable one serves
            return self._route.stable
        if len(self._pool) == 1:
            return self._pool[0]
        if self._sticky is not None:
            key = ctx.header(self._sticky)
            if key is not None:
                return max(self._pool, key=lambda b: _rendezvous_score(key, b.name, self.weights[b.name]))
        point = self._rng.random() * self._cumulative[-1]
        return self._pool[bisect.bisect_right(self._cumulative, point)]

    def __repr__(self) -> str:
        return f"<BackendChooser {self._route.name} {', '.join(f'{k}={v:g}' for k, v in self.weights.items())}>"


def _rendezvous_score(key: bytes, backend: str, weight: float) -> float:
    digest = hashlib.blake2b(key + b"\x00" + backend.encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return weight / -math.log(unit)


class WeightTable:
    """Run-time weights per route, kept across reloads unless the file changed that route's weights."""

    def __init__(self) -> None:
        self._file: dict[str, dict[str, float]] = {}
        self._live: dict[str, dict[str, float]] = {}

    def sync(self, routes: list[Route]) -> list[str]:
        """Adopt a (re)loaded file; returns the routes whose run-time weights were dropped."""
        dropped = []
        file = {r.name: {b.name: b.weight for b in r.backends} for r in routes}
        for name, weights in file.items():
            live = self._live.get(name)
            if live is not None and (self._file.get(name) != weights or set(live) != set(weights)):
                del self._live[name]
                dropped.append(name)
        self._live = {name: w for name, w in self._live.items() if name in file}
        self._file = file
        return dropped

    def weights(self, route: str) -> dict[str, float]:
        return dict(self._live.get(route) or self._file.get(route, {}))

    def set(self, route: str, weights: dict[str, float]) -> dict[str, float]:
        """Set a route's weights (every backend named); returns the weights before."""
        before = self.weights(route)
        self._live[route] = dict(weights)
        return before

    def __repr__(self) -> str:
        return f"<WeightTable routes={len(self._file)} live={sorted(self._live)}>"
