"""Stage: shadow traffic. A share of answered requests is mirrored to a candidate backend after the
client has its response, and the two answers are compared (status, latency, contract, prediction).

Shadow calls never delay the client, never count as attempts, and are never billed to a tenant:
their cost is tracked apart, under the shadow's own stats.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import Shadow
from gateway.context import Attempt, Reply, RequestContext
from gateway.cost import Rates, cost_usd, usage_from_response
from gateway.errors import UpstreamError
from gateway.forward import Forwarder, request_body
from gateway.routing import CompiledRoute
from gateway.tasks import TaskSet
from gateway.types import Clock, Next

log = logging.getLogger("gateway")

Predictions = Callable[[Any], list[Any]]


@dataclass
class ShadowStats:
    """Comparison totals for one route's shadow backend."""

    backend: str
    mirrored: int = 0
    failed: int = 0  # the shadow errored (transport, timeout, 5xx)
    status_match: int = 0
    contract_ok: int = 0
    contract_checked: int = 0
    agreed: int = 0
    compared: int = 0  # answers with predictions on both sides
    primary_ms: float = 0.0
    shadow_ms: float = 0.0
    cost_usd: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        n = self.mirrored or 1
        return {
            "backend": self.backend,
            "mirrored": self.mirrored,
            "failed": self.failed,
            "status_match_rate": self.status_match / n,
            "contract_valid_rate": self.contract_ok / self.contract_checked if self.contract_checked else None,
            "prediction_agreement": self.agreed / self.compared if self.compared else None,
            "mean_primary_ms": self.primary_ms / n,
            "mean_shadow_ms": self.shadow_ms / n,
            "cost_usd": self.cost_usd,
        }


class ShadowMirror:
    """Stage: after an answered, non-streamed request, maybe mirror it (see module docstring)."""

    def __init__(
        self,
        routes: list[CompiledRoute],
        forwarder: Forwarder,
        tasks: TaskSet,
        stats: dict[str, ShadowStats],
        predictions: dict[str, Predictions],
        rng: random.Random,
        clock: Clock = time.perf_counter,
    ) -> None:
        self._shadows: dict[str, tuple[Shadow, CompiledRoute]] = {
            r.name: (r.config.shadow, r) for r in routes if r.config.shadow is not None
        }
        self._forwarder = forwarder
        self._tasks = tasks
        self._stats = stats
        self._predictions = predictions
        self._rng = rng
        self._clock = clock

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        reply = await call_next(ctx)
        shadow = self._shadows.get(ctx.route.name)
        if shadow is not None and reply.stream is None and self._rng.random() < shadow[0].ratio:
            ctx.after_response.append(lambda: self._start(ctx, reply, shadow[0], shadow[1]))
        return reply

    def _start(self, ctx: RequestContext, reply: Reply, shadow: Shadow, route: CompiledRoute) -> None:
        self._tasks.spawn(self._mirror(ctx, reply, shadow, route), name=f"shadow {ctx.request_id}")

    async def _mirror(self, ctx: RequestContext, primary: Reply, shadow: Shadow, route: CompiledRoute) -> None:
        backend = route.backend(shadow.backend)
        assert backend is not None  # checked when the config was loaded
        stats = self._stats.setdefault(route.name, ShadowStats(backend.name))
        answered = primary.attempt
        attempt = Attempt(backend=backend.name, started_at=self._clock())
        deadline = attempt.started_at + route.timeouts.attempt_s
        stats.mirrored += 1
        if answered is not None and answered.headers_at is not None:
            stats.primary_ms += (answered.headers_at - answered.started_at) * 1000
        try:
            reply = await self._forwarder.attempt(ctx, backend, request_body(ctx, backend), deadline, attempt)
            body = reply.body if reply.stream is None else b""
            if reply.upstream is not None:
                await reply.upstream.aclose()
        except UpstreamError as exc:
            stats.failed += 1
            stats.shadow_ms += (self._clock() - attempt.started_at) * 1000
            if exc.reason == "contract":
                stats.contract_checked += 1
            log.debug("request %s: shadow %s failed: %s", ctx.request_id, backend.name, exc.detail)
            return
        elapsed = self._clock() - attempt.started_at
        stats.shadow_ms += elapsed * 1000
        stats.status_match += reply.status == primary.status
        if ctx.contract is not None and ctx.contract.response is not None:
            stats.contract_checked += 1
            stats.contract_ok += 1  # a violation would have raised UpstreamBadResponse above
        document = reply.document if reply.document is not None else _parse(body)
        stats.cost_usd += cost_usd(Rates.of(backend.config.price), usage_from_response(document), elapsed)
        predict = self._predictions.get(route.name)
        if predict is not None:
            mine = predict(primary.document if primary.document is not None else _parse(primary.body))
            theirs = predict(document)
            if mine and theirs:
                stats.compared += 1
                stats.agreed += mine == theirs


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
