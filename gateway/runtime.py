"""The running configuration: a compiled snapshot swapped atomically on reload.

A request reads `holder.current` once when it arrives and keeps that snapshot to the end, so a
reload never changes the config under an in-flight request. State that must outlive a reload
(run-time weights, breakers, budgets, the connection pool) lives in `Shared`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.accesslog import AccessLog
from gateway.accounting import Accounting, TrafficStats
from gateway.admission import Admission
from gateway.analysis import CanaryAnalyzer
from gateway.attempts import Attempts
from gateway.audit import AuditLog
from gateway.canary import BackendChooser, WeightTable
from gateway.config import GatewayConfig, Telemetry
from gateway.contract_check import ContractCheck, ContractStats, compile_contracts
from gateway.cost import CostLedger, Rates
from gateway.events import EventLog
from gateway.feedback import FeedbackStore
from gateway.forward import Forwarder, TrustedProxies
from gateway.health import Health
from gateway.latency import LatencyBook
from gateway.loader import ConfigError, load_config
from gateway.metrics import Metrics
from gateway.model_watch import LiveSamples, ModelWatch
from gateway.monitor_setup import load_monitors
from gateway.monitoring.book import MonitorBook
from gateway.pipeline import compose
from gateway.resilience import BreakerState, CircuitBreaker, ResilienceState
from gateway.routing import CompiledRoute, Router, Routing
from gateway.shadow import ShadowMirror, ShadowStats
from gateway.slo import SloBook
from gateway.state import FallbackStore, MemoryStore, RedisStore, StateStore
from gateway.tasks import TaskSet
from gateway.tenants import Tenants
from gateway.tracing import Tracing
from gateway.types import Gate, Next, Stage
from gateway.upstream import UpstreamClient

log = logging.getLogger("gateway")


@dataclass
class Shared:
    """Everything that lives as long as the process, across reloads."""

    client: UpstreamClient
    events: EventLog = field(default_factory=EventLog)
    tasks: TaskSet = field(default_factory=TaskSet)
    weights: WeightTable = field(default_factory=WeightTable)
    rng: random.Random = field(default_factory=random.Random)
    store: StateStore = field(default_factory=MemoryStore)
    metrics: Metrics = field(default_factory=Metrics)
    latency: LatencyBook = field(default_factory=LatencyBook)
    ledger: CostLedger = field(default_factory=CostLedger)
    traffic: TrafficStats = field(default_factory=TrafficStats)
    shadows: dict[str, ShadowStats] = field(default_factory=dict)
    tracing: Tracing = field(default_factory=lambda: Tracing(Telemetry()))
    access_log: AccessLog | None = None  # started by `gateway serve`
    audit: AuditLog = field(default_factory=lambda: AuditLog(None))
    monitor: MonitorBook = field(default_factory=MonitorBook)
    slo: SloBook = field(default_factory=SloBook)
    feedback: FeedbackStore = field(default_factory=FeedbackStore)
    samples: LiveSamples = field(default_factory=LiveSamples)
    analyzer: CanaryAnalyzer = field(init=False)
    resilience: ResilienceState = field(init=False)
    contract_stats: ContractStats = field(init=False)

    def __post_init__(self) -> None:
        self.resilience = ResilienceState(time.perf_counter, self._circuit_changed)
        self.contract_stats = ContractStats(self.metrics)

    @classmethod
    def for_config(cls, config: GatewayConfig, client: UpstreamClient) -> Shared:
        """Shared state for `gateway serve`: Redis-backed counters when `state.backend` is redis."""
        shared = cls(
            client,
            tracing=Tracing(config.telemetry),
            access_log=AccessLog(config.telemetry.access_log),
            audit=AuditLog(config.admin.audit_log),
        )
        if config.state.backend == "redis":
            shared.store = FallbackStore(RedisStore.from_url(config.state.url), on_change=shared._state_changed)
        return shared

    def state_detail(self) -> dict[str, Any]:
        store = self.store
        if isinstance(store, FallbackStore):
            return {"backend": "redis", "degraded": store.degraded, "error": store.last_error}
        return {"backend": "memory", "degraded": False}

    def _state_changed(self, degraded: bool, error: str | None) -> None:
        # A replica that loses Redis keeps serving on local counters, and says so.
        if degraded:
            self.events.record("state_degraded", f"Redis unreachable, serving on local state: {error}")
        else:
            self.events.record("state_restored", "Redis reachable again")

    def _circuit_changed(self, breaker: CircuitBreaker, before: BreakerState, after: BreakerState, reason: str) -> None:
        self.metrics.set_circuit(breaker.route, breaker.backend, after.value)
        self.tracing.current().circuit(breaker.backend, before.value, after.value, reason)
        self.events.record(
            "circuit",
            f"{before.value} -> {after.value}: {reason}",
            route=breaker.route,
            backend=breaker.backend,
            details={"from": before.value, "to": after.value},
        )


@dataclass(frozen=True, slots=True)
class Runtime:
    config: GatewayConfig
    router: Router
    choosers: dict[str, BackendChooser]
    tenants: Tenants
    handle: Next


def build_runtime(config: GatewayConfig, shared: Shared, base_dir: Path) -> Runtime:
    """Compile a validated config into the request pipeline. The stage order lives here, and only here."""
    routes = [CompiledRoute.compile(route) for route in config.routes]
    router = Router(routes)
    choosers = {r.name: BackendChooser(r, shared.weights.weights(r.name), shared.rng) for r in routes}
    contracts, problems = compile_contracts(config, base_dir)
    baselines, monitor_problems = load_monitors(config, base_dir)
    if problems or monitor_problems:
        raise ConfigError("<config>", problems + monitor_problems)
    names = [r.name for r in config.routes]
    for route_config in config.routes:
        shared.monitor.configure(route_config.name, route_config.monitor, baselines.get(route_config.name))
        shared.slo.configure(route_config.name, route_config.slo)
        shared.feedback.configure(route_config.name, route_config.monitor)
    for book in (shared.monitor, shared.slo, shared.feedback):
        book.retain(names)
    shared.analyzer.configure(config.routes)
    tenants = Tenants.from_config(config.tenants, store=shared.store)
    prices = {(r.name, b.name): Rates.of(b.price) for r in config.routes for b in r.backends}
    accounting = Accounting(
        latency=shared.latency,
        ledger=shared.ledger,
        metrics=shared.metrics,
        traffic=shared.traffic,
        contract_stats=shared.contract_stats,
        tenants=tenants,
        tasks=shared.tasks,
        prices=prices,
        access_log=shared.access_log,
        watch=ModelWatch(shared.monitor, shared.feedback, shared.slo, shared.analyzer, shared.samples),
    )
    # Only the steps some route uses: every stage is a coroutine call on every request, every gate a call.
    stages: list[Stage | Gate] = [accounting]
    if config.tenants:
        stages.append(Admission(tenants))
    stages.append(Routing(router))
    if contracts:
        stages.append(ContractCheck(contracts, shared.contract_stats))
    forwarder = Forwarder(shared.client, TrustedProxies(config.listen.trusted_proxies), shared.contract_stats)
    if any(r.config.shadow is not None for r in routes):
        stages.append(ShadowMirror(routes, forwarder, shared.tasks, shared.shadows, {}, shared.rng))
    terminal = Attempts(forwarder, choosers, shared.resilience, shared.tasks, latency=shared.latency, rng=shared.rng)
    for route in routes:
        for name, weight in choosers[route.name].weights.items():
            shared.metrics.set_weight(route.name, name, weight)
    return Runtime(config=config, router=router, choosers=choosers, tenants=tenants, handle=compose(stages, terminal))


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    message: str
    problems: list[tuple[str, str]]


class RuntimeHolder:
    """Owns the current Runtime and replaces it whole when a new config validates."""

    def __init__(self, config: GatewayConfig, shared: Shared, path: Path | None) -> None:
        self.path = path
        self._base_dir = path.parent if path is not None else Path.cwd()
        self.shared = shared
        shared.analyzer = CanaryAnalyzer(self, shared.audit, shared.tasks)
        self.events = shared.events
        shared.weights.sync(config.routes)
        self.current = build_runtime(config, shared, self._base_dir)
        self.health = Health(lambda: self.current.config, shared.state_detail)
        self._stamp = _stamp(path)

    def reload(self, actor: str = "gateway") -> ReloadResult:
        if self.path is None:
            return ReloadResult(False, "the gateway was started without a config file", [])
        self._stamp = _stamp(self.path)
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            message = f"reload rejected, keeping the running config: {len(exc.problems)} error(s)"
            log.error("%s\n%s", message, "\n".join(f"  {p or '<root>'}: {m}" for p, m in exc.problems))
            self.events.record("reload_failed", message, actor=actor, details={"errors": exc.problems})
            return ReloadResult(False, message, exc.problems)
        before = self.current.config
        kept = {(r.name, b.name) for r in config.routes for b in r.backends}
        for route_name, backend in {(r.name, b.name) for r in before.routes for b in r.backends} - kept:
            self.shared.metrics.forget_backend(route_name, backend)  # gauges of removed backends go away
            self.shared.latency.forget(route_name, backend)
        for route in self.shared.weights.sync(config.routes):
            self.events.record(
                "weights", "the file changed this route's weights: run-time weights dropped", route=route, actor=actor
            )
        self.current = build_runtime(config, self.shared, self._base_dir)
        message = f"config reloaded from {self.path} ({len(config.routes)} routes)"
        self.events.record("reload", message, actor=actor)
        if (
            (before.listen.host, before.listen.port) != (config.listen.host, config.listen.port)
            or before.admin != config.admin
            or before.upstream != config.upstream
            or before.telemetry != config.telemetry
        ):
            log.warning("listen address, admin, upstream and telemetry settings take effect at the next restart")
        return ReloadResult(True, message, [])

    def set_weights(self, route: str, weights: dict[str, float]) -> dict[str, float]:
        """Change a route's weights now (the current runtime's chooser and the table that survives reloads)."""
        before = self.shared.weights.set(route, weights)
        self.current.choosers[route].update(weights)
        for name, weight in weights.items():
            self.shared.metrics.set_weight(route, name, weight)
        return before

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload when the file's mtime or size changes (editors and ConfigMap updates both show up so)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.path is not None and _stamp(self.path) != self._stamp:
                self.reload(actor="file-watch")


def _stamp(path: Path | None) -> tuple[float, int] | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime, stat.st_size
