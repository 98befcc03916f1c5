"""Automated canary analysis: every `interval_s`, judge the canary against stable, then step or roll back.

Each route with `canary_analysis` keeps a tally per backend since its last decision. Once both
backends have `min_requests` in it, `monitoring.verdict.evaluate` compares them:

- a breach rolls back (canary weight 0), with the numbers in the event, the audit log, a metric and
  the webhook;
- a healthy interval moves the canary to the next of `steps`; reaching 100 is a promotion;
- too few requests waits for more.

Decisions are idempotent: after a rollback the canary gets no traffic, after a promotion stable
gets none, so neither side reaches `min_requests` again until an operator sets new weights.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from gateway.audit import AuditLog
from gateway.config import CanaryAnalysis, Route
from gateway.latency import Sketch
from gateway.monitoring.verdict import BackendWindow, Verdict, evaluate
from gateway.tasks import TaskSet
from gateway.types import Clock

if TYPE_CHECKING:
    from gateway.runtime import RuntimeHolder

log = logging.getLogger("gateway")
ACTOR = "canary-analysis"


@dataclass
class Tally:
    """One backend's outcomes since the route's last decision."""

    requests: int = 0
    errors: int = 0
    contract_violations: int = 0
    latency: Sketch = field(default_factory=Sketch)

    def add(self, failed: bool, total_ms: float, contract_violation: bool) -> None:
        self.requests += 1
        self.errors += failed
        self.contract_violations += contract_violation
        self.latency.add(total_ms)


@dataclass
class RouteAnalysis:
    started: float  # when the current window began (the last decision)
    next_check: float
    tallies: dict[str, Tally] = field(default_factory=dict)
    last: Verdict | None = None


class CanaryAnalyzer:
    """Owns the analysis state of every route; `observe` is fed after each response, `run` decides."""

    def __init__(self, holder: RuntimeHolder, audit: AuditLog, tasks: TaskSet, clock: Clock = time.monotonic) -> None:
        self._holder = holder
        self._audit = audit
        self._tasks = tasks
        self._clock = clock
        self._routes: dict[str, RouteAnalysis] = {}

    def observe(self, route: str, backend: str, failed: bool, total_ms: float, contract_violation: bool) -> None:
        analysis = self._routes.get(route)
        if analysis is None:
            return
        tally = analysis.tallies.get(backend)
        if tally is None:
            tally = analysis.tallies[backend] = Tally()
        tally.add(failed, total_ms, contract_violation)

    def configure(self, routes: list[Route]) -> None:
        """Follow the config: start analysing new routes, forget removed ones, keep the rest's windows."""
        now = self._clock()
        wanted = {r.name: r.canary_analysis for r in routes if r.canary_analysis is not None}
        self._routes = {
            name: self._routes.get(name) or RouteAnalysis(started=now, next_check=now + cfg.interval_s)
            for name, cfg in wanted.items()
        }

    async def run(self, tick_s: float = 0.25, drift_every_s: float = 5.0) -> None:
        next_drift = self._clock() + drift_every_s
        while True:
            await asyncio.sleep(tick_s)
            self.check_due()
            if self._clock() >= next_drift:
                next_drift = self._clock() + drift_every_s
                self.check_drift()
                self.refresh_gauges()

    def refresh_gauges(self) -> None:
        """SLO burn rates, error budgets and accuracy as Prometheus gauges."""
        shared = self._holder.shared
        for route in self._holder.current.config.routes:
            for backend in route.backends:
                status = shared.slo.status(route.name, backend.name) if route.slo else None
                if status is not None:
                    for window, burn in (("short", status.burn_short), ("long", status.burn_long)):
                        if burn is not None:
                            shared.metrics.slo_burn_rate.labels(route.name, backend.name, window).set(burn)
                    if status.budget_remaining is not None:
                        shared.metrics.slo_budget_remaining.labels(route.name, backend.name).set(
                            status.budget_remaining
                        )
                accuracy = shared.feedback.accuracy(route.name, backend.name) if route.monitor else None
                if accuracy is not None:
                    shared.metrics.accuracy.labels(route.name, backend.name).set(accuracy)

    def check_drift(self) -> None:
        """Drift levels that changed become events and metrics; an alert also calls the webhook."""
        shared = self._holder.shared
        routes = {r.name: r for r in self._holder.current.config.routes}
        for change in shared.monitor.evaluate_drift():
            shared.metrics.set_drift(change.route, change.name, change.score)
            details = {"target": change.target, "name": change.name, "metric": change.metric, "score": change.score}
            kind = "drift_alert" if change.after.value == "alert" else "drift"
            self._holder.events.record(kind, change.reason, route=change.route, details=details)
            route = routes.get(change.route)
            webhook = route.canary_analysis.webhook if route and route.canary_analysis else None
            if webhook and kind == "drift_alert":
                payload = {"kind": kind, "route": change.route, "owner": route.owner if route else None, **details}
                self._tasks.spawn(post_webhook(webhook, {**payload, "reason": change.reason}), name="drift webhook")

    def check_due(self) -> None:
        now = self._clock()
        for route in self._holder.current.config.routes:
            analysis = self._routes.get(route.name)
            if analysis is None or route.canary_analysis is None or now < analysis.next_check:
                continue
            analysis.next_check = now + route.canary_analysis.interval_s
            try:
                self._analyse(route, route.canary_analysis, analysis, now)
            except Exception:  # one route's analysis must never stop the others'
                log.exception("canary analysis of route %s failed", route.name)

    def _analyse(self, route: Route, cfg: CanaryAnalysis, analysis: RouteAnalysis, now: float) -> None:
        stable, canary = self._pair(route)
        if canary is None:
            return
        weights = self._holder.current.choosers[route.name].weights
        if weights.get(canary, 0) <= 0:
            return  # rolled back (or not started): nothing to judge
        verdict = evaluate(
            cfg,
            self._window(route, stable, analysis, now),
            self._window(route, canary, analysis, now),
            metric=route.monitor.drift.metric if route.monitor and route.monitor.drift else "psi",
        )
        analysis.last = verdict
        if verdict.status == "insufficient":
            return
        if verdict.status == "breach":
            self._decide(route, "rollback", {stable: 100.0, canary: 0.0}, verdict, cfg)
        else:
            share = 100 * weights.get(canary, 0) / max(sum(weights.values()), 1e-9)
            step = next((s for s in cfg.steps if s > share + 1e-9), None)
            if step is None:
                return
            action = "promote" if step >= 100 else "step"
            self._decide(route, action, {stable: 100.0 - step, canary: step}, verdict, cfg)
        analysis.tallies.clear()
        analysis.started = now

    def _window(self, route: Route, backend: str, analysis: RouteAnalysis, now: float) -> BackendWindow:
        tally = analysis.tallies.get(backend, Tally())
        shared = self._holder.shared
        span = max(now - analysis.started, 1.0)
        histogram = shared.monitor.prediction_histogram(route.name, backend, span)
        predictions: dict[Hashable, float] | None = None
        if histogram is not None:
            predictions = {bin_: float(count) for bin_, count in histogram.counts.items()}
        return BackendWindow(
            requests=tally.requests,
            errors=tally.errors,
            p99_ms=tally.latency.quantile(0.99) if tally.requests else None,
            contract_violations=tally.contract_violations,
            predictions=predictions,
            accuracy=shared.feedback.accuracy(route.name, backend, span),
            burn_rate=shared.slo.burn_rate(route.name, backend, "short") if route.slo else None,
        )

    def _pair(self, route: Route) -> tuple[str, str | None]:
        compiled = self._holder.current.router.by_name[route.name]
        weights = self._holder.current.choosers[route.name].weights
        others = [b for b in compiled.backends if b is not compiled.stable]
        if not others:
            return compiled.stable.name, None
        return compiled.stable.name, max(others, key=lambda b: weights.get(b.name, 0.0)).name

    def _decide(
        self, route: Route, action: str, weights: dict[str, float], verdict: Verdict, cfg: CanaryAnalysis
    ) -> None:
        full = {b.name: weights.get(b.name, 0.0) for b in route.backends}
        before = self._holder.set_weights(route.name, full)
        details: dict[str, Any] = {
            "before": before,
            "after": full,
            "verdict": verdict.status,
            "observed": dict(verdict.observed or {}),
            "breaches": [{"check": b.check, "observed": b.observed, "limit": b.limit} for b in verdict.breaches],
        }
        self._holder.events.record(action, verdict.reason, route=route.name, actor=ACTOR, details=details)
        self._audit.append(
            ACTOR, action, {"route": route.name, "weights": before}, {"route": route.name, "weights": full}
        )
        self._holder.shared.metrics.canary_decision(route.name, action)
        observed = {f"gateway.canary.{name}": value for name, value in (verdict.observed or {}).items()}
        self._holder.shared.tracing.decision(action, route.name, {"gateway.reason": verdict.reason, **observed})
        log.warning("canary analysis: %s on route %s (%s)", action, route.name, verdict.reason)
        if cfg.webhook and action in ("rollback", "promote"):
            payload = {"kind": action, "route": route.name, "owner": route.owner, "reason": verdict.reason, **details}
            self._tasks.spawn(post_webhook(cfg.webhook, payload), name=f"webhook {route.name}")

    def snapshot(self, route: str) -> dict[str, Any] | None:
        analysis = self._routes.get(route)
        if analysis is None:
            return None
        last = analysis.last
        return {
            "window_s": self._clock() - analysis.started,
            "requests": {name: t.requests for name, t in analysis.tallies.items()},
            "last_verdict": last.status if last else None,
            "last_reason": last.reason if last else None,
        }


async def post_webhook(url: str, payload: dict[str, Any], timeout_s: float = 5.0) -> None:
    """POST a decision to the configured webhook (the hook for paging or retraining); failures are logged."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
            response = await client.post(url, json=payload)
        if response.status_code >= 400:
            log.warning("webhook %s answered %d", url, response.status_code)
    except httpx.HTTPError as exc:
        log.warning("webhook %s failed: %s", url, exc)
