"""Per-request data flowing through the pipeline: plain slotted dataclasses, no pydantic on the hot path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.types import Headers

if TYPE_CHECKING:
    from gateway.contract_check import RouteContract
    from gateway.cost import Usage
    from gateway.errors import UpstreamError
    from gateway.forward import StreamStart
    from gateway.routing import BackendTarget, CompiledRoute
    from gateway.streaming import StreamState
    from gateway.tenants import TenantState
    from gateway.tracing import RequestSpan
    from gateway.upstream.base import UpstreamResponse


@dataclass(slots=True)
class Attempt:
    """One upstream try: who, when, and how it ended."""

    backend: str
    started_at: float
    status: int | None = None  # None until headers arrive (or forever, if it failed before)
    headers_at: float | None = None
    error: UpstreamError | None = None
    hedge: bool = False
    cancelled: bool = False  # a hedge that lost (or a client that left): no answer, but upstream time spent


@dataclass(slots=True)
class RequestContext:
    """One per request; the edge fills the request fields, stages fill the rest in order."""

    request_id: str
    received_at: float
    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: Headers  # the client's, names lower-cased
    client_ip: str
    scheme: str
    trace: RequestSpan  # the SERVER span (a no-op when tracing is off or the request is not sampled)
    body: bytes = b""
    document: Any = None  # the parsed JSON body, when the body is JSON
    _route: CompiledRoute | None = None
    attempts: list[Attempt] = field(default_factory=list)
    fallback_reason: str | None = None  # the first failure's reason, when another attempt answered
    stream: StreamState | None = None  # what the stream guard saw, for an SSE answer
    contract: RouteContract | None = None  # contract_check.py
    tenant: TenantState | None = None  # admission.py
    usage: Usage | None = None  # accounting.py
    cost_usd: float | None = None  # accounting.py
    after_response: list[Callable[[], None]] = field(default_factory=list)  # accounting, run after the last byte
    ended_at: float = 0.0  # perf_counter when the response was handed to the server (0.0: not yet)

    @property
    def route(self) -> CompiledRoute:
        if self._route is None:
            raise RuntimeError("route has not been set")
        return self._route

    @route.setter
    def route(self, route: CompiledRoute) -> None:
        self._route = route

    @property
    def has_route(self) -> bool:
        return self._route is not None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Reply:
    """What goes back to the client: a whole body, or a stream of chunks from an upstream response."""

    status: int
    headers: Headers
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    upstream: UpstreamResponse | None = None  # closed by the writer when the stream ends or breaks
    backend: BackendTarget | None = None
    attempt: Attempt | None = None  # the attempt whose answer this is (hedges make it not always the last)
    sse: StreamStart | None = None  # set for an event stream: the events read before answering
    document: Any = None  # the parsed answer, when the gateway had to parse it (response contract)
