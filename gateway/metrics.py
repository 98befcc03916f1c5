"""Prometheus metrics: one registry per gateway, label values bounded by the config.

Every label value comes from the config (route, backend, tenant, feature names) or from a small fixed
set (status code, outcome, fallback reason, direction), never from the request, with one exception
kept bounded on purpose: a contract violation's field, the JSON pointer with array indices folded to
``*``, capped at `max_fields_per_route` distinct values per route (then ``other``).

`observe_request` runs once per request, so its series (requests, durations, cost, tokens) are plain
dicts turned into metric families only at scrape time (`_RequestSeries`): an update is a dict lookup
and an add, not prometheus_client's lock and label validation.

Series::

    gateway_requests_total{route,backend,status,outcome}
    gateway_request_duration_seconds{route,backend}          histogram, the whole request
    gateway_upstream_duration_seconds{route,backend}         histogram, the answering attempt
    gateway_time_to_first_token_seconds{route,backend}       histogram, streams
    gateway_fallbacks_total{route,reason}
    gateway_contract_violations_total{route,direction,field}
    gateway_cost_usd_total{route,backend,tenant}
    gateway_wasted_usd_total{route,backend,tenant}            failed attempts' time and request price
    gateway_tokens_total{route,backend,tenant,type}           type: input | output
    gateway_backend_weight{route,backend}
    gateway_circuit_state{route,backend}                      0 closed, 1 half-open, 2 open
    gateway_budget_remaining_usd{tenant}
    gateway_drift_score{route,feature}

`backend` is "" for requests no backend answered (e.g. 401, 404, 429 from the gateway itself), and
`tenant` is "" when tenants are not configured.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import ClassVar, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

__all__ = ["CIRCUIT_STATES", "DURATION_BUCKETS", "Metrics", "normalize_pointer"]

# 1 ms to 60 s, roughly 1-2.5-5 per decade: LLM answers take seconds, classic models milliseconds.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
_MAX_POINTER_CHARS = 200
_OTHER = "other"


def normalize_pointer(pointer: str) -> str:
    """A JSON pointer with array indices (all-digit segments) as ``*``: /messages/3/content -> /messages/*/content."""
    if not pointer:
        return pointer
    return "/".join("*" if segment.isdigit() else segment for segment in pointer.split("/"))


def _status(status: int) -> str:
    return str(status) if 100 <= status <= 599 else _OTHER


class Metrics:
    """The gateway's Prometheus metrics in their own `CollectorRegistry`; `render()` is the /metrics body."""

    content_type: ClassVar[str] = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self, *, registry: CollectorRegistry | None = None, max_fields_per_route: int = 50) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.max_fields_per_route = max_fields_per_route
        r = self.registry
        route_backend = ("route", "backend")
        spend = ("route", "backend", "tenant")
        # The per-request series live in plain dicts and are turned into metric families only when
        # scraped: prometheus_client's labelled children take a lock and validate on every update.
        self._hot = _RequestSeries()
        r.register(self._hot)
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Fallbacks to another attempt, by the failure's reason.",
            ("route", "reason"),
            registry=r,
        )
        self.contract_violations = Counter(
            "gateway_contract_violations",
            "Contract violations by field (JSON pointer, array indices as *).",
            ("route", "direction", "field"),
            registry=r,
        )
        self.wasted = Counter(
            "gateway_wasted_usd", "Cost of failed attempts in USD (time and request price).", spend, registry=r
        )
        self.weight = Gauge("gateway_backend_weight", "Current traffic weight of a backend.", route_backend, registry=r)
        self.circuit = Gauge(
            "gateway_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", route_backend, registry=r
        )
        self.budget_remaining = Gauge(
            "gateway_budget_remaining_usd", "A tenant's budget left today in USD.", ("tenant",), registry=r
        )
        self.drift = Gauge(
            "gateway_drift_score", "Drift score of a monitored feature.", ("route", "feature"), registry=r
        )
        self.canary_decisions = Counter(
            "gateway_canary_decisions",
            "Canary analysis decisions: step, promote, rollback.",
            ("route", "decision"),
            registry=r,
        )
        self.slo_burn_rate = Gauge(
            "gateway_slo_burn_rate",
            "Error budget burn rate (1 = spending exactly the budget), by window.",
            ("route", "backend", "window"),
            registry=r,
        )
        self.slo_budget_remaining = Gauge(
            "gateway_slo_budget_remaining",
            "Share of the error budget left over the long window.",
            route_backend,
            registry=r,
        )
        self.accuracy = Gauge(
            "gateway_accuracy", "Share of labelled predictions that were right (feedback).", route_backend, registry=r
        )

        self._fields: dict[str, set[str]] = {}

    # -- per request ----------------------------------------------------------------------------

    def observe_request(
        self,
        route: str,
        backend: str | None,
        tenant: str | None,
        status: int,
        outcome: str,
        total_s: float,
        upstream_s: float | None = None,
        ttft_s: float | None = None,
        cost_usd: float = 0.0,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """One finished request. `outcome` must come from a fixed set (e.g. ok, fallback, error, cached)."""
        hot = self._hot
        backend = backend or ""
        key = (route, backend, status if 100 <= status <= 599 else 0, outcome)  # 0: "other"
        hot.requests[key] = hot.requests.get(key, 0) + 1
        durations = hot.durations.get((route, backend))
        if durations is None:
            durations = hot.durations[(route, backend)] = (_Buckets(), _Buckets(), _Buckets())
        durations[0].observe(total_s)
        if upstream_s is not None:
            durations[1].observe(upstream_s)
        if ttft_s is not None:
            durations[2].observe(ttft_s)
        if cost_usd > 0 or input_tokens > 0 or output_tokens > 0:
            spend_key = (route, backend, tenant or "")
            spend = hot.spend.get(spend_key)
            if spend is None:
                spend = hot.spend[spend_key] = [0.0, 0.0, 0.0]
            spend[0] += cost_usd
            spend[1] += input_tokens
            spend[2] += output_tokens

    def waste(self, route: str, backend: str, tenant: str | None, usd: float) -> None:
        """A failed attempt's cost (its upstream time and request price)."""
        if usd > 0:
            self.wasted.labels(route, backend, tenant or "").inc(usd)

    def fallback(self, route: str, reason: str) -> None:
        """One fallback; `reason` is a config `fallback.when` value (status_5xx, timeout, ...)."""
        self.fallbacks.labels(route, reason).inc()

    def contract_violation(self, route: str, direction: Literal["request", "response"], pointer: str) -> None:
        field = normalize_pointer(pointer)
        seen = self._fields.setdefault(route, set())
        if field not in seen:
            if len(seen) >= self.max_fields_per_route or len(field) > _MAX_POINTER_CHARS:
                field = _OTHER
            else:
                seen.add(field)
        self.contract_violations.labels(route, direction, field).inc()

    # -- state gauges ---------------------------------------------------------------------------

    def set_weight(self, route: str, backend: str, weight: float) -> None:
        self.weight.labels(route, backend).set(weight)

    def set_circuit(self, route: str, backend: str, state: str | int) -> None:
        """`state`: "closed", "half_open", "open" (a BreakerState's value), or 0, 1, 2."""
        if isinstance(state, str):
            if state not in CIRCUIT_STATES:
                raise ValueError(f"unknown circuit state {state!r}")
            state = CIRCUIT_STATES[state]
        self.circuit.labels(route, backend).set(state)

    def set_budget_remaining(self, tenant: str, usd: float) -> None:
        self.budget_remaining.labels(tenant).set(usd)

    def set_drift(self, route: str, feature: str, score: float) -> None:
        self.drift.labels(route, feature).set(score)

    def canary_decision(self, route: str, decision: str) -> None:
        self.canary_decisions.labels(route, decision).inc()

    def forget_backend(self, route: str, backend: str) -> None:
        """Drop a removed backend's gauges (a reload); its counters stay, as Prometheus expects."""
        self.weight.remove(route, backend)  # a no-op for label values never set
        self.circuit.remove(route, backend)

    # -- exposition -----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (serve with `content_type`)."""
        return generate_latest(self.registry)

    def __repr__(self) -> str:
        return (
            f"<Metrics request_series={len(self._hot.requests)} "
            f"contract_fields={sum(len(f) for f in self._fields.values())}>"
        )


class _Buckets:
    """One histogram series: per-bucket counts (not cumulative), sum and count."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        total = 0
        out = []
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class _RequestSeries(Collector):
    """The per-request series as plain dicts, exposed as metric families at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int, str], int] = {}
        self.durations: dict[tuple[str, str], tuple[_Buckets, _Buckets, _Buckets]] = {}
        self.spend: dict[tuple[str, str, str], list[float]] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by status and outcome.",
            labels=("route", "backend", "status", "outcome"),
        )
        for (route, backend, status, outcome), count in self.requests.items():
            requests.add_metric((route, backend, _status(status), outcome), count)
        yield requests
        names = (
            ("gateway_request_duration_seconds", "Time from the request's arrival to its last response byte."),
            ("gateway_upstream_duration_seconds", "Duration of the upstream attempt that answered."),
            ("gateway_time_to_first_token_seconds", "Time from the request's arrival to a stream's first event."),
        )
        for i, (name, doc) in enumerate(names):
            family = HistogramMetricFamily(name, doc, labels=("route", "backend"))
            for (route, backend), series in self.durations.items():
                if series[i].counts[-1] or any(series[i].counts):
                    family.add_metric((route, backend), series[i].cumulative(), series[i].sum)
            yield family
        labels = ("route", "backend", "tenant")
        cost = CounterMetricFamily("gateway_cost_usd", "Cost of answered requests in USD.", labels=labels)
        tokens = CounterMetricFamily("gateway_tokens", "Tokens used, input or output.", labels=(*labels, "type"))
        for key, (usd, tokens_in, tokens_out) in self.spend.items():
            cost.add_metric(key, usd)
            tokens.add_metric((*key, "input"), tokens_in)
            tokens.add_metric((*key, "output"), tokens_out)
        yield cost
        yield tokens
