"""Stage: what each request cost and how long it took, recorded after the response is sent.

On the way back it prices a non-streamed answer (for `x-gateway-cost-usd`); everything else
(latency sketches, cost ledger, metrics, tenant settlement, access log) runs from the
`after_response` hook, once the last byte has left.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson

from gateway.accesslog import AccessLog
from gateway.context import Reply, RequestContext
from gateway.contract_check import ContractStats
from gateway.cost import (
    CostLedger,
    Rates,
    Usage,
    cost_usd,
    estimate_usage,
    usage_from_chunk,
    usage_from_response,
    waste_usd,
)
from gateway.errors import GatewayError
from gateway.latency import LatencyBook
from gateway.metrics import Metrics
from gateway.model_watch import ModelWatch
from gateway.tasks import TaskSet
from gateway.tenants import Tenants, TenantState
from gateway.types import Clock, Next

COST_HEADER = b"x-gateway-cost-usd"
SETTLE_EVERY_S = 0.05  # a budget may be overspent by what the in-flight requests of this window cost


class TrafficStats:
    """Requests and errors per (route, backend) in 10-second slots (1 and 10 min windows), fallbacks by reason.

    Recording is one slot lookup and two adds; the windows are summed only when /admin/stats asks.
    """

    SLOT_S = 10
    SLOTS = 60

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._rings: dict[tuple[str, str], list[list[int]]] = {}  # per slot: [slot number, requests, errors]
        self.fallbacks: Counter[tuple[str, str]] = Counter()

    def add(self, route: str, backend: str, failed: bool) -> None:
        ring = self._rings.get((route, backend))
        if ring is None:
            ring = self._rings[(route, backend)] = [[-1, 0, 0] for _ in range(self.SLOTS)]
        number = int(self._clock()) // self.SLOT_S
        slot = ring[number % self.SLOTS]
        if slot[0] != number:
            slot[0], slot[1], slot[2] = number, 0, 0
        slot[1] += 1
        slot[2] += failed

    def snapshot(self, route: str, backend: str) -> dict[str, Any]:
        ring = self._rings.get((route, backend), [])
        now = int(self._clock()) // self.SLOT_S
        out: dict[str, Any] = {}
        for window, slots in (("1m", 6), ("10m", self.SLOTS)):
            live = [s for s in ring if now - slots < s[0] <= now]
            requests, errors = sum(s[1] for s in live), sum(s[2] for s in live)
            out[window] = {"requests": requests, "errors": errors, "error_rate": errors / requests if requests else 0.0}
        return out


class _Pending:
    """A tenant's tokens and spend since the last settlement."""

    __slots__ = ("cost", "tenant", "tokens")

    def __init__(self, tenant: TenantState, tokens: int, cost: float) -> None:
        self.tenant = tenant
        self.tokens = tokens
        self.cost = cost


class Accounting:
    """Outermost stage: sees every reply and every failure."""

    def __init__(
        self,
        *,
        latency: LatencyBook,
        ledger: CostLedger,
        metrics: Metrics,
        traffic: TrafficStats,
        contract_stats: ContractStats,
        tenants: Tenants,
        tasks: TaskSet,
        prices: dict[tuple[str, str], Rates | None],
        access_log: AccessLog | None = None,
        watch: ModelWatch | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self._access_log = access_log
        self._watch = watch
        self._settlements: dict[str, _Pending] = {}  # across requests, by design
        self._settling = False
        self._latency = latency
        self._ledger = ledger
        self._metrics = metrics
        self._traffic = traffic
        self._contract_stats = contract_stats
        self._tenants = tenants
        self._tasks = tasks
        self._prices = prices
        self._clock = clock

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        try:
            reply = await call_next(ctx)
        except GatewayError as exc:
            status, kind = exc.status, exc.kind  # `exc` is unbound after the except block; the hook runs later
            ctx.after_response.append(lambda: self._record(ctx, status, None, kind))
            raise
        if reply.stream is None and reply.backend is not None:
            answered = reply.attempt
            usage, cost = self._price(ctx, reply, self._clock() - answered.started_at if answered else 0.0)
            ctx.usage, ctx.cost_usd = usage, cost
            reply.headers.append((COST_HEADER, (b"%.8f" % cost).rstrip(b"0").rstrip(b".") or b"0"))
        ctx.after_response.append(lambda: self._record(ctx, reply.status, reply))
        return reply

    def _price(self, ctx: RequestContext, reply: Reply, upstream_s: float) -> tuple[Usage | None, float]:
        assert reply.backend is not None
        price = self._prices.get((ctx.route.name, reply.backend.name))
        usage = self._usage(ctx, reply)
        return usage, cost_usd(price, usage, upstream_s)

    def _usage(self, ctx: RequestContext, reply: Reply) -> Usage | None:
        state = ctx.stream
        if state is not None:
            usage = usage_from_chunk({"usage": state.usage}) if state.usage else None
            return usage or estimate_usage(ctx.document, len(state.delivered_text))
        document = reply.document
        if document is None and b'"usage"' in reply.body:
            try:
                document = orjson.loads(reply.body)
            except orjson.JSONDecodeError:
                return None
        return usage_from_response(document) if document is not None else None

    def _record(self, ctx: RequestContext, status: int, reply: Reply | None, error_type: str | None = None) -> None:
        now = ctx.ended_at or self._clock()  # this runs a little after the response ended (AfterResponse)
        route = ctx.route.name if ctx.has_route else ""
        backend = reply.backend.name if reply is not None and reply.backend is not None else None
        tenant = ctx.tenant.name if ctx.tenant is not None else None
        answered = reply.attempt if reply is not None else None
        upstream_s = (answered.headers_at - answered.started_at) if answered and answered.headers_at else None
        state = ctx.stream
        ttft_s = state.first_event_at - ctx.received_at if state is not None and state.first_event_at else None
        usage, cost = ctx.usage, ctx.cost_usd
        if reply is not None and reply.stream is not None and backend is not None:
            usage, cost = self._price(ctx, reply, now - answered.started_at if answered else 0.0)
            ctx.usage, ctx.cost_usd = usage, cost
        failed = status >= 500 or (state is not None and state.error is not None)
        outcome = "error" if failed else ("fallback" if ctx.fallback_reason else "ok")
        if backend is None and status < 500:
            outcome = "rejected"
        total_s = now - ctx.received_at
        if route:
            self._traffic.add(route, backend or "", failed)
            if ctx.fallback_reason is not None:
                self._traffic.fallbacks[(route, ctx.fallback_reason)] += 1
                self._metrics.fallback(route, ctx.fallback_reason)
            if backend is not None:
                self._latency.record(
                    route, backend, total_s * 1000, upstream_s * 1000 if upstream_s is not None else None,
                    ttft_s * 1000 if ttft_s is not None else None,
                )  # fmt: skip
                self._ledger.record(route, backend, tenant, cost_usd=cost or 0.0, usage=usage)
            for attempt in ctx.attempts:  # failed and cancelled attempts are never billed as completions: waste
                if attempt.error is not None or attempt.cancelled:
                    spent = (attempt.headers_at or now) - attempt.started_at
                    wasted = waste_usd(self._prices.get((route, attempt.backend)), spent)
                    self._ledger.record_waste(route, attempt.backend, tenant, wasted)
                    self._metrics.waste(route, attempt.backend, tenant, wasted)
            if state is not None and (state.dropped or state.violations):
                self._contract_stats.dropped_events[route] += state.dropped
                self._contract_stats.violated(route, "response", state.violations)
        self._metrics.observe_request(
            route,
            backend,
            tenant,
            status,
            outcome,
            total_s,
            upstream_s=upstream_s,
            ttft_s=ttft_s,
            cost_usd=cost or 0.0,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
        )
        if route and self._watch is not None:
            self._watch.record(ctx, reply, status, now)
        # The canary is any backend but the one serving as stable (the first, when none is marked).
        canary = reply.backend is not ctx.route.stable if reply is not None and reply.backend is not None else None
        if state is not None and state.error is not None:
            error_type = "stream_interrupted"
        if ctx.trace.recording:  # most requests are not sampled: skip the call and its arguments
            ctx.trace.end(
                status,
                backend=backend,
                attempts=len(ctx.attempts),
                fallback_reason=ctx.fallback_reason,
                cost_usd=cost,
                cost_estimated=usage.estimated if usage else None,
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                canary=canary,
                tenant=tenant,
                error_type=error_type,
                duration_s=total_s,
            )
        access_log = self._access_log
        if access_log is not None and (access_log.keeps_all or access_log.sampled()):
            access_log.record_values(
                (  # FIELDS, in order
                    time.time(),
                    ctx.request_id,
                    ctx.trace.trace_id_hex,
                    ctx.method,
                    ctx.path,
                    route or None,
                    backend,
                    status,
                    len(ctx.attempts),
                    ctx.fallback_reason,
                    error_type,
                    # Whole microseconds / 1000: as short as round(ms, 3), without its decimal conversions.
                    int(total_s * 1e6 + 0.5) / 1000,
                    int(upstream_s * 1e6 + 0.5) / 1000 if upstream_s is not None else None,
                    int(ttft_s * 1e6 + 0.5) / 1000 if ttft_s is not None else None,
                    state is not None,
                    canary,
                    cost,
                    usage.estimated if usage else None,
                    usage.input_tokens if usage else None,
                    usage.output_tokens if usage else None,
                    tenant,
                    ctx.client_ip,
                )
            )
        tenant_state = ctx.tenant
        if tenant_state is not None and backend is not None:
            if tenant_state.tokens_per_minute is not None or tenant_state.usd_per_day is not None:
                self._queue_settlement(tenant_state, usage.total_tokens if usage else 0, cost or 0.0)

    def _queue_settlement(self, tenant: TenantState, tokens: int, cost: float) -> None:
        """Tenants' tokens and spend, summed and settled every SETTLE_EVERY_S by one task, not one per request."""
        pending = self._settlements.get(tenant.name)
        if pending is None:
            self._settlements[tenant.name] = _Pending(tenant, tokens, cost)
        else:
            pending.tokens += tokens
            pending.cost += cost
        if not self._settling:
            self._settling = True
            self._tasks.spawn(self._settle_pending(), name="tenant-settle")

    async def _settle_pending(self) -> None:
        await asyncio.sleep(SETTLE_EVERY_S)
        pending, self._settlements = self._settlements, {}
        self._settling = False
        for settlement in pending.values():
            tenant = settlement.tenant
            await self._tenants.settle(tenant, settlement.tokens, settlement.cost)
            if tenant.usd_per_day is not None:
                self._metrics.set_budget_remaining(tenant.name, await self._tenants.remaining_budget(tenant))
