"""The configuration schema: pydantic models for the YAML file the platform team writes.

Models are frozen and reject unknown keys. Durations carry their unit in the key (`_s`, `_ms`).
Checks that span several fields (unique names, one stable backend) live in `semantic_errors`, so
every problem is reported with its own key path instead of stopping at the first.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

PositiveSeconds = Annotated[float, Field(gt=0)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Listen(Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    # httptools itself puts no limit on headers; these bound what the gateway accepts (431 past them).
    max_header_count: int = Field(100, gt=0)
    max_header_bytes: int = Field(32 * 1024, gt=0)
    # Peers whose X-Forwarded-For / -Proto are believed; everyone else's are replaced.
    trusted_proxies: list[str] = []
    keepalive_s: PositiveSeconds = 5.0
    drain_s: PositiveSeconds = 10.0  # how long SIGTERM waits for in-flight requests
    max_in_flight: int | None = Field(None, gt=0)  # past it, shed load: 503 with Retry-After


class Admin(Model):
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535)
    token: str | None = None
    audit_log: str | None = None


class State(Model):
    backend: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"


class Traces(Model):
    exporter: Literal["otlp", "console", "none"] = "none"
    endpoint: str = "http://127.0.0.1:4318"  # OTLP/HTTP; /v1/traces is appended
    sample_ratio: float = Field(1.0, ge=0, le=1)


class AccessLog(Model):
    sample_ratio: float = Field(1.0, ge=0, le=1)
    path: str | None = None  # JSON lines file; None: the `gateway.access` logger (stderr)


class Telemetry(Model):
    service_name: str = "inference-gateway"
    traces: Traces = Traces()
    access_log: AccessLog = AccessLog()
    capture_content: bool = False  # prompts and outputs never enter spans or logs unless true


class Budget(Model):
    usd_per_day: float = Field(gt=0)


class RateLimit(Model):
    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0)


class Tenant(Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    api_keys: list[str] = Field(min_length=1)
    budget: Budget | None = None
    rate_limit: RateLimit | None = None


class Upstream(Model):
    """The shared upstream HTTP client pool."""

    client: Literal["h1", "aiohttp", "httpx", "httpx-aiohttp"] = "h1"
    max_connections: int = Field(1024, gt=0)
    max_connections_per_backend: int = Field(256, gt=0)
    keepalive_s: PositiveSeconds = 30.0


class Timeouts(Model):
    connect_s: PositiveSeconds = 1.0
    first_byte_s: PositiveSeconds = 5.0  # until the response headers (or a stream's first event)
    idle_s: PositiveSeconds = 10.0  # longest silence between body bytes
    attempt_s: PositiveSeconds = 10.0
    request_s: PositiveSeconds = 30.0  # all attempts included


class Price(Model):
    input_per_1k_tokens: float = Field(0.0, ge=0)
    output_per_1k_tokens: float = Field(0.0, ge=0)
    per_second: float = Field(0.0, ge=0)
    per_request: float = Field(0.0, ge=0)


class Backend(Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    model: str | None = None  # rewrites the body's "model" for this backend
    stable: bool = False
    weight: float = Field(100.0, ge=0)
    headers: dict[str, str] = {}
    price: Price | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")


class Match(Model):
    path: str = Field(pattern=r"^/")  # a path prefix, matched on segment boundaries
    model: str | None = None  # the JSON body's "model"


class Contract(Model):
    request: str | None = None
    response: str | None = None
    apply_defaults: bool = False


FallbackReason = Literal["status_5xx", "status_429", "timeout", "connect", "contract", "circuit_open", "context_length"]


class Sticky(Model):
    header: str = Field(min_length=1)  # requests with the same value keep their backend while weights hold


class Fallback(Model):
    when: list[FallbackReason] = ["status_5xx", "timeout", "connect", "contract", "circuit_open"]
    max_attempts: int = Field(2, ge=1, le=10)
    retry_budget: float = Field(0.2, ge=0, le=1)  # retries stay under this share of requests (10 s window)
    min_retries: int = Field(3, ge=0)  # the budget's floor, so a quiet route can still retry
    resume_streams: bool = False


class CircuitBreaker(Model):
    failure_ratio: float = Field(0.5, gt=0, le=1)
    min_requests: int = Field(20, ge=1)
    open_s: PositiveSeconds = 30.0


class Hedge(Model):
    after_percentile: float = Field(95, gt=0, lt=100)
    max_ratio: float = Field(0.05, gt=0, le=1)
    min_delay_ms: float = Field(5.0, ge=0)  # never hedge sooner than this, even when the percentile is lower


class Slo(Model):
    p99_ms: float | None = Field(None, gt=0)  # a request slower than this spends error budget
    error_rate: float = Field(0.01, gt=0, lt=1)  # the budget: the share of requests allowed to be bad
    short_window_s: PositiveSeconds = 300.0  # burn rate windows (Google SRE workbook: 5 min and 1 h)
    long_window_s: PositiveSeconds = 3600.0


class CanaryAnalysis(Model):
    interval_s: PositiveSeconds = 10.0
    min_requests: int = Field(200, ge=1)  # per backend within the interval, before any verdict
    max_error_rate_delta: float = Field(0.02, ge=0)
    max_p99_ratio: float = Field(1.5, gt=0)
    max_contract_violation_rate: float = Field(0.01, ge=0)
    max_prediction_divergence: float = Field(0.2, ge=0)
    min_accuracy_delta: float = -0.02  # canary accuracy may trail stable by at most this (needs feedback)
    max_burn_rate_ratio: float = Field(2.0, gt=0)  # needs `slo`
    steps: list[float] = Field([5, 10, 25, 50, 100], min_length=1)
    webhook: str | None = None  # POSTed on rollback, promotion and drift alerts

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(steps):
            raise ValueError("steps must be increasing percentages in (0, 100]")
        return steps

    @field_validator("webhook")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class Shadow(Model):
    backend: str  # a backend of this route (usually weight 0)
    ratio: float = Field(gt=0, le=1)


class Feature(Model):
    name: str = Field(min_length=1)
    pointer: str = Field(pattern=r"^(/.*)?$")  # RFC 6901, with `*` for every element of an array
    kind: Literal["numeric", "categorical"] = "numeric"
    bins: int = Field(10, ge=2, le=100)  # numeric: equal-width bins over the baseline (or quantile bins from it)


class Prediction(Model):
    pointer: str = Field(pattern=r"^(/.*)?$")
    kind: Literal["numeric", "categorical"] = "categorical"


class Confidence(Model):
    pointer: str = Field(pattern=r"^(/.*)?$")


class Drift(Model):
    metric: Literal["psi", "js"] = "psi"
    warn: float = Field(0.1, ge=0)
    alert: float = Field(0.25, ge=0)
    baseline: str | None = None  # a file built by `gateway baseline` (relative to the config file)
    window_s: PositiveSeconds = 600.0  # live distributions are compared over this window


class Monitor(Model):
    features: list[Feature] = []
    prediction: Prediction | None = None
    confidence: Confidence | None = None
    drift: Drift | None = None
    feedback_ttl_s: PositiveSeconds = 3600.0  # how long a prediction waits for its label
    feedback_max_entries: int = Field(100_000, ge=1)


class Route(Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    owner: str | None = None
    match: Match
    backends: list[Backend] = Field(min_length=1)
    contract: Contract | None = None
    sticky: Sticky | None = None
    allow_override: bool = False  # the x-gateway-backend header pins a backend
    timeouts: Timeouts = Timeouts()
    fallback: Fallback = Fallback()
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    hedge: Hedge | None = None
    slo: Slo | None = None
    canary_analysis: CanaryAnalysis | None = None
    shadow: Shadow | None = None
    monitor: Monitor | None = None
    error_format: Literal["problem", "openai"] = "problem"


class GatewayConfig(Model):
    listen: Listen = Listen()
    admin: Admin = Admin()
    telemetry: Telemetry = Telemetry()
    state: State = State()
    upstream: Upstream = Upstream()
    tenants: list[Tenant] | None = None  # when present, clients must send one of the keys
    routes: list[Route] = []


def semantic_errors(config: GatewayConfig) -> list[tuple[str, str]]:
    """Cross-field problems as (key path, message) pairs; empty when the config is coherent."""
    problems: list[tuple[str, str]] = []
    seen_routes: dict[str, int] = {}
    seen_matches: dict[tuple[str, str | None], int] = {}
    for i, route in enumerate(config.routes):
        where = f"routes[{i}]"
        key = (route.match.path.rstrip("/") or "/", route.match.model)
        if key in seen_matches:
            problems.append((f"{where}.match", f"same match as routes[{seen_matches[key]}]: it would never be used"))
        seen_matches.setdefault(key, i)
        if route.name in seen_routes:
            problems.append(
                (f"{where}.name", f"duplicate route name {route.name!r} (also routes[{seen_routes[route.name]}])")
            )
        seen_routes.setdefault(route.name, i)
        seen_backends: set[str] = set()
        for j, backend in enumerate(route.backends):
            if backend.name in seen_backends:
                problems.append((f"{where}.backends[{j}].name", f"duplicate backend name {backend.name!r}"))
            seen_backends.add(backend.name)
        stables = [j for j, b in enumerate(route.backends) if b.stable]
        if len(stables) > 1:
            problems.append((f"{where}.backends[{stables[1]}].stable", "only one backend of a route can be stable"))
        if sum(b.weight for b in route.backends) <= 0:
            problems.append((f"{where}.backends", "at least one backend needs a weight above 0"))
        if route.shadow is not None and route.shadow.backend not in seen_backends:
            problems.append((f"{where}.shadow.backend", f"no backend named {route.shadow.backend!r} in this route"))
        if route.canary_analysis is not None and len(route.backends) < 2:
            problems.append((f"{where}.canary_analysis", "needs a stable and a canary backend"))
        drift = route.monitor.drift if route.monitor is not None else None
        if drift is not None and drift.alert < drift.warn:
            problems.append((f"{where}.monitor.drift.alert", "must be at least `warn`"))
    owners: dict[str, str] = {}
    for i, tenant in enumerate(config.tenants or []):
        for j, api_key in enumerate(tenant.api_keys):
            if not api_key:
                problems.append((f"tenants[{i}].api_keys[{j}]", "an API key cannot be empty"))
            elif api_key in owners:
                problems.append((f"tenants[{i}].api_keys[{j}]", f"the same key is also given to {owners[api_key]!r}"))
            owners.setdefault(api_key, tenant.name)
    return problems
