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

    client: Literal["aiohttp", "httpx", "httpx-aiohttp"] = "aiohttp"
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
    owners: dict[str, str] = {}
    for i, tenant in enumerate(config.tenants or []):
        for j, api_key in enumerate(tenant.api_keys):
            if not api_key:
                problems.append((f"tenants[{i}].api_keys[{j}]", "an API key cannot be empty"))
            elif api_key in owners:
                problems.append((f"tenants[{i}].api_keys[{j}]", f"the same key is also given to {owners[api_key]!r}"))
            owners.setdefault(api_key, tenant.name)
    return problems
