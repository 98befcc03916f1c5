"""Traces: one SERVER span per request, one CLIENT span per upstream attempt, exported with OTLP/HTTP.

The pipeline calls a plain-value API (`Tracing.start_request`, `RequestSpan.attempt`, `.end`), so
no OpenTelemetry type leaks into the request path. Span names and attributes follow the OTel HTTP
semantic conventions (`POST /v1/chat/completions` with the route's match path as `http.route`;
client spans are named after the method), the GenAI conventions on LLM routes
(`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.usage.*`, `gen_ai.response.model`) and
DESIGN.md's `gateway.*` attributes. Fallbacks, contract violations and circuit changes are span
events.

Cost. The sampling decision (parent-based, trace-id ratio: the SDK's `ParentBased(TraceIdRatioBased)`
rule) is taken here, so an unsampled request costs a header scan, two random numbers and one small
object; it still gets a trace context to return to the client and to send upstream (flags `00`).
Only sampled requests build attributes. They record into plain slotted objects (`_Span`): the SDK's
live spans (locks, attribute checks, span processors on start) cost ~25 us each, several times this.
A span that ends is queued as it is in the SDK's `BatchSpanProcessor`, whose worker thread encodes
a whole batch in OTLP wire form (`gateway.otlp`, repeated attributes cached) and sends it with the
SDK's OTLP/HTTP exporter: encoding spans together keeps the encoder warm, where encoding each as it
ended found it cold. With another exporter (console, or a test's in-memory one) spans become SDK
`ReadableSpan`s instead.

Nothing sensitive is recorded: no header but `Host` and `User-Agent`, no query string values, no
credentials in URLs, no contract messages (they can quote the offending value), and no prompt or
output unless `telemetry.capture_content` is true.

Configuration and the standard `OTEL_*` variables. One rule: a key written in the config file wins;
a key the file leaves out falls back to its `OTEL_*` variable; then to the gateway's default.
(The documented config writes `endpoint: "${OTEL_EXPORTER_OTLP_ENDPOINT:-...}"`, which honours
the variable through the file.)

- exporter: `traces.exporter`; else `OTEL_TRACES_EXPORTER` (otlp, console or none); else none (tracing
  off). One exception to the rule: `OTEL_SDK_DISABLED=true`, the standard kill switch, turns tracing off
  whatever the file says.
- endpoint: `traces.endpoint` + `/v1/traces`; else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
  `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`; else http://127.0.0.1:4318/v1/traces.
- sampling: `traces.sample_ratio` (parent-based); else `OTEL_TRACES_SAMPLER` (the six built-in samplers:
  always_on, always_off, traceidratio and their parentbased_ forms) with `OTEL_TRACES_SAMPLER_ARG`, or the
  argument alone as a parent-based ratio; else 1.0, parent-based.
- service.name: `service_name`; else `OTEL_SERVICE_NAME`, then `service.name` in `OTEL_RESOURCE_ATTRIBUTES`;
  else inference-gateway.

`OTEL_RESOURCE_ATTRIBUTES` always adds its other attributes. The exporter's own variables
(`OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`, `_TIMEOUT`, `_COMPRESSION`, `_CERTIFICATE`, ...) and the batch
processor's (`OTEL_BSP_*`) are read by the SDK as usual. Each `Tracing` owns its span processor
(the global tracer provider is left alone), so several can live in one process.

References: https://opentelemetry.io/docs/specs/semconv/http/http-spans/ ,
https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ , https://www.w3.org/TR/trace-context/
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import random
import threading
import time
from binascii import hexlify
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from gateway import __version__
from gateway.config import Telemetry

__all__ = [
    "NO_SPAN",
    "TRACE_HEADERS",
    "AttemptSpan",
    "RequestSpan",
    "Tracing",
    "format_traceparent",
    "parse_traceparent",
]

log = logging.getLogger("gateway")

Headers = list[tuple[bytes, bytes]]
Attributes = Mapping[str, AttributeValue]
ExporterKind = Literal["otlp", "console", "none"]

# The client's trace headers: the gateway replaces them upstream with its own attempt span's context.
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
CONTENT_LIMIT = 8192  # characters of a prompt or an output kept in a span event
_MAX_CACHED_URLS = 1024  # CLIENT span attributes kept by request line (emptied when full)
_SAMPLED = 0x01
_RANDOM = 0x02  # W3C Trace Context level 2 "random-trace-id": our trace ids are random
_ID_MASK = (1 << 64) - 1
_HEXDIGITS = b"0123456789abcdef-"
_SAMPLED_FLAGS = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_CONTEXT = SpanContext(1, 1, False, _SAMPLED_FLAGS)
# Span kinds as OTLP numbers them (the SDK's SpanKind + 1), status codes as both do.
_INTERNAL, _SERVER, _CLIENT = (kind.value + 1 for kind in (SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT))
_STATUS_UNSET, _STATUS_ERROR = StatusCode.UNSET.value, StatusCode.ERROR.value
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_SAMPLERS: dict[str, tuple[float | None, bool]] = {  # OTEL_TRACES_SAMPLER -> (ratio, or None for the arg; parent-based)
    "always_on": (1.0, False),
    "always_off": (0.0, False),
    "traceidratio": (None, False),
    "parentbased_always_on": (1.0, True),
    "parentbased_always_off": (0.0, True),
    "parentbased_traceidratio": (None, True),
}
_OPERATIONS = (  # path suffix -> gen_ai.operation.name
    ("/chat/completions", "chat"),
    ("/completions", "text_completion"),
    ("/embeddings", "embeddings"),
    ("/responses", "chat"),
)


class ViolationLike(Protocol):
    """A contract violation as contracts.Violation or errors.FieldError carry it."""

    @property
    def pointer(self) -> str: ...

    @property
    def message(self) -> str: ...


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """A W3C `traceparent` value as (trace id, parent span id, flags), or None when it is not valid.

    Version `00` must be exactly 55 characters; a later version may carry more fields after a `-`;
    version `ff`, upper-case hex and all-zero ids are invalid (https://www.w3.org/TR/trace-context/#traceparent-header).
    """
    value = value.strip(b" \t")
    if len(value) < 55 or value[2] != 45 or value[35] != 45 or value[52] != 45:  # 45 == ord("-")
        return None
    if value[:55].translate(None, _HEXDIGITS):
        return None
    version = value[:2]
    if version == b"ff" or (len(value) > 55 and (version == b"00" or value[55] != 45)):
        return None
    ids = int(value[3:35] + value[36:52], 16)  # one conversion for both ids
    trace_id = ids >> 64
    span_id = ids & _ID_MASK
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(value[53:55], 16)


def _incoming_context(headers: Headers) -> tuple[tuple[int, int, int] | None, bytes | None]:
    """The client's valid `traceparent` (trace id, parent span id, flags) and its `tracestate`."""
    parent: tuple[int, int, int] | None = None
    state: bytes | None = None
    for key, value in headers:
        if key == b"traceparent":
            if parent is not None:  # two traceparents: neither can be trusted; start a new trace
                return None, None
            parent = parse_traceparent(value) or (0, 0, 0)
        elif key == b"tracestate":
            state = value if state is None else state + b"," + value
    # A tracestate without a valid traceparent is dropped (W3C).
    return (parent, state) if parent is not None and parent[0] != 0 else (None, None)


_FLAGS = tuple(b"-%02x" % flags for flags in range(256))
_UNSAMPLED_ROOT = _FLAGS[_RANDOM]  # the flags of a trace the gateway starts and does not sample


def format_traceparent(trace_id: int, span_id: int, flags: int) -> bytes:
    # The ids' 24 bytes in hex with a separator after the first 16 (counted from the left): half the
    # instructions of formatting two big ints with %x.
    return b"00-" + hexlify((trace_id << 64 | span_id).to_bytes(24, "big"), b"-", -16) + _FLAGS[flags]


class _Sampling:
    """The parent-based trace-id-ratio rule of the OTel SDK, decided before any span exists."""

    __slots__ = ("bound", "parent_based", "ratio")

    def __init__(self, ratio: float, parent_based: bool = True) -> None:
        self.ratio = ratio
        self.parent_based = parent_based
        self.bound = round(ratio * (1 << 64))  # as TraceIdRatioBased: sampled when the low 64 bits are below

    def sampled(self, trace_id: int, parent_flags: int | None) -> bool:
        if parent_flags is not None and self.parent_based:
            return bool(parent_flags & _SAMPLED)
        return (trace_id & _ID_MASK) < self.bound

    def __repr__(self) -> str:
        return f"{'parentbased_' if self.parent_based else ''}traceidratio({self.ratio:g})"


_current: contextvars.ContextVar[RequestSpan | None] = contextvars.ContextVar("gateway_request_span", default=None)


class Tracing:
    """Traces for one gateway process, built from the `telemetry` config.

    `exporter` replaces the configured one (tests pass an in-memory or OTLP exporter; tracing is on
    with it). `rng` draws trace and span ids of unsampled requests and the sampling decision; the
    default is the `random` module, which is reseeded in forked workers.
    """

    def __init__(
        self,
        config: Telemetry,
        *,
        exporter: SpanExporter | None = None,
        service_version: str = __version__,
        rng: random.Random | None = None,
        content_limit: int = CONTENT_LIMIT,
    ) -> None:
        env = os.environ
        kind = _exporter_kind(config, env)
        self.capture_content = config.capture_content
        self.content_limit = content_limit
        self._bits: Callable[[int], int] = rng.getrandbits if rng is not None else random.getrandbits
        self._sampling = _sampling(config, env)
        self._unsampled_from = max(1, self._sampling.bound)
        self.kind: str = kind
        self.enabled = False
        self.endpoint: str | None = None
        self.service_name = ""
        self._processor: BatchSpanProcessor | None = None
        self._records = False  # whether the exporter takes `_Span`s as they are (OTLP), not `ReadableSpan`s
        self._client_attributes: dict[tuple[str, str], dict[str, AttributeValue]] = {}
        if _sdk_disabled(env) or (exporter is None and kind == "none"):
            return
        self._resource = _resource(config, env, service_version)
        self._scope = InstrumentationScope("gateway", service_version)
        if exporter is None:
            if kind == "otlp":
                exporter, self.endpoint, self._records = _otlp_exporter(config, env, self._resource, self._scope)
            else:
                exporter = ConsoleSpanExporter()
        else:
            self.kind = "custom"
        self.enabled = True
        self._processor = BatchSpanProcessor(exporter)
        self.service_name = str(self._resource.attributes.get(SERVICE_NAME, ""))

    @property
    def sample_ratio(self) -> float:
        return self._sampling.ratio

    def start_request(
        self,
        method: str,
        path: str,
        scheme: str,
        headers: Headers,
        client_ip: str,
        server: tuple[str, int] | None = None,
    ) -> RequestSpan:
        """The SERVER span of a request, continuing the client's `traceparent` when it sent a valid one.

        `headers` are the ASGI request headers (lower-cased names); only `traceparent`, `tracestate`,
        `host` and `user-agent` are read.
        """
        if not self.enabled:
            return RequestSpan(None, None, headers)
        parent: tuple[int, int, int] | None = None
        state: bytes | None = None
        for key, _ in headers:
            if key in TRACE_HEADERS:  # one set lookup per header: most requests come without a trace context
                parent, state = _incoming_context(headers)
                break
        bits = self._bits
        if parent is None:
            ids = bits(192)  # one draw: the trace id, then this span's id
            # The ratio rule of `_Sampling.sampled`, inlined. Ids of zero are invalid (W3C), and go the long way:
            # the trace id's low half is at least 1 here, so the trace id is not zero.
            if (ids >> 64) & _ID_MASK >= self._unsampled_from and ids & _ID_MASK:
                # Unsampled, the usual case: all it needs is its traceparent, formatted from the draw as it is.
                return RequestSpan(b"00-" + hexlify(ids.to_bytes(24, "big"), b"-", -16) + _UNSAMPLED_ROOT, None, None)
            trace_id, span_id = ids >> 64 or 1, ids & _ID_MASK or 1
            if not self._sampling.sampled(trace_id, None):
                return RequestSpan(format_traceparent(trace_id, span_id, _RANDOM), None, None)
        else:
            trace_id, span_id = parent[0], bits(64) or 1
            if not self._sampling.sampled(trace_id, parent[2]):  # the client's random-trace-id flag carries on
                return RequestSpan(format_traceparent(trace_id, span_id, parent[2] & _RANDOM), state, None)
        attributes = _server_attributes(method, path, scheme, headers, client_ip, server)
        name = method if method in KNOWN_METHODS else "HTTP"
        span = _Span(self, name, _SERVER, trace_id, span_id, attributes)
        if parent is not None:
            span.parent_id, span.parent_remote, span.parent_flags = parent[1], True, parent[2]
            if state:
                span.trace_state = TraceState.from_header([state.decode("latin-1")])
        request = _SampledRequest(self, span, state, name, path)
        _current.set(request)
        return request

    def client_attributes(self, method: str, url: str) -> dict[str, AttributeValue]:
        """A CLIENT span's HTTP attributes for this request line (a fresh dict): worked out once per
        distinct method and URL, as a backend's URLs repeat."""
        key = (method, url)
        cached = self._client_attributes.get(key)
        if cached is None:
            if len(self._client_attributes) >= _MAX_CACHED_URLS:
                self._client_attributes.clear()
            cached = self._client_attributes[key] = _client_attributes(method, url)
        return dict(cached)

    def decision(self, name: str, route: str, attributes: Attributes) -> None:
        """A decision taken outside any request (a canary rollback or promotion, a drift alert): one
        INTERNAL span, always recorded when tracing is on (decisions are rare), carrying it as an event."""
        if not self.enabled:
            return
        bits = self._bits
        span = _Span(self, f"gateway.{name}", _INTERNAL, bits(128) or 1, bits(64) or 1, {"gateway.route": route})
        span.add_event(f"gateway.{name}", attributes)
        span.end()

    def _export(self, span: _Span) -> None:
        processor = self._processor
        if processor is None:
            return
        if self._records:  # encoded by the exporter's thread; the processor reads only its (sampled) context
            processor.on_end(span)  # type: ignore[arg-type]
        else:
            processor.on_end(span.readable(self._resource, self._scope))

    def current(self) -> RequestSpan:
        """The sampled request span of the running task (for events raised far from the request, such as a
        circuit change); a no-op span when there is none."""
        return _current.get() or NO_SPAN

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export what has ended; False if that did not finish within `timeout_s`. Blocks the calling
        thread: from async code, `await asyncio.to_thread(tracing.force_flush)`."""
        processor = self._processor
        if processor is None:
            return True
        result: list[bool] = []
        # The SDK's flush ignores its timeout while the exporter retries (up to OTEL_EXPORTER_OTLP_TIMEOUT).
        done = _bounded(lambda: result.append(processor.force_flush(int(timeout_s * 1000))), timeout_s)
        return done and all(result)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush and stop the exporter, giving up after `timeout_s` (an unreachable collector must not
        hold up the process's exit; what is left is dropped). Blocks: from async code use `aclose()`."""
        processor = self._processor
        if processor is None:
            return
        self._processor = None
        self.enabled = False

        def stop() -> None:
            processor.force_flush(int(timeout_s * 1000))
            processor.shutdown()  # type: ignore[no-untyped-call]

        if not _bounded(stop, timeout_s):
            log.warning("the trace exporter did not finish within %.1fs; unsent spans are dropped", timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        await asyncio.to_thread(self.shutdown, timeout_s)

    def __repr__(self) -> str:
        if not self.enabled:
            return "<Tracing off>"
        target = f" {self.endpoint}" if self.endpoint else ""
        return f"<Tracing {self.kind}{target} {self._sampling!r} capture_content={self.capture_content}>"


class RequestSpan:
    """The SERVER span of one request.

    This base class is what an unsampled request (and every request when tracing is off) gets: it only
    carries the trace context, and every recording method is a no-op. Sampled requests get `_SampledRequest`.
    """

    __slots__ = ("_incoming", "_state", "traceparent")

    recording = False  # whether attributes and events are kept (the request is sampled)

    def __init__(self, traceparent: bytes | None, state: bytes | None, incoming: Headers | None) -> None:
        # The W3C `traceparent` of this SERVER span, for the response and, unsampled, upstream; None when
        # tracing is off. Every request sends it, so it is formatted at once; the ids are read from it.
        self.traceparent = traceparent
        self._state = state  # the client's tracestate, passed on unchanged
        self._incoming = incoming  # tracing off: the client's trace headers pass through upstream unchanged

    @property
    def trace_id(self) -> int:
        """0 when tracing is off."""
        traceparent = self.traceparent
        return int(traceparent[3:35], 16) if traceparent is not None else 0

    @property
    def span_id(self) -> int:
        traceparent = self.traceparent
        return int(traceparent[36:52], 16) if traceparent is not None else 0

    @property
    def trace_id_hex(self) -> str | None:
        """The trace id for the access log (unsampled requests have one too); None when tracing is off."""
        traceparent = self.traceparent  # already formatted for the response: cut out of it
        return traceparent[3:35].decode() if traceparent is not None else None

    def set_route(self, route: str, owner: str | None = None, http_route: str | None = None) -> None:
        """The matched route: `http_route` is its match path, which also names the span (low cardinality)."""

    def set_request_model(self, model: str | None, operation: str | None = None) -> None:
        """The body's "model". On an LLM API path (or with `operation` given) it is `gen_ai.request.model`
        with `gen_ai.operation.name`; elsewhere `gateway.request.model`."""

    def attempt(
        self,
        backend: str,
        method: str,
        url: str,
        attempt_no: int,
        canary: bool = False,
        model: str | None = None,
        hedge: bool = False,
    ) -> AttemptSpan:
        """A CLIENT span for one upstream try, child of this span. End it when the response headers (or a
        stream's first event) arrived or the try failed; send `inject()`'s headers with the request."""
        return AttemptSpan(self)

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        """A span event with these attributes."""

    def fallback(self, reason: str, backend: str, attempt_no: int) -> None:
        """Attempt `attempt_no` on `backend` failed with `reason` (a fallback class) and another follows."""

    def contract_violation(
        self, direction: Literal["request", "response"], violations: Iterable[ViolationLike], backend: str | None = None
    ) -> None:
        """A contract violation: the failing JSON pointers (and keywords). The messages, which can quote the
        offending value, are kept only with `capture_content`."""

    def circuit(self, backend: str, before: str, after: str, reason: str = "") -> None:
        """A circuit breaker changed state during this request."""

    def capture_prompt(self, document: Any) -> None:
        """The request's prompt as a `gen_ai.content.prompt` event, only with `capture_content: true`.
        A chat body gives its "messages", a completion its "prompt", an embedding its "input"."""

    def capture_completion(self, content: Any) -> None:
        """The answer (a response document or the text a stream delivered) as a `gen_ai.content.completion`
        event, only with `capture_content: true`. A chat or completion document gives its "choices"."""

    def end(
        self,
        status: int | None,
        *,
        backend: str | None = None,
        attempts: int | None = None,
        fallback_reason: str | None = None,
        cost_usd: float | None = None,
        cost_estimated: bool | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        response_model: str | None = None,
        canary: bool | None = None,
        tenant: str | None = None,
        cache: str | None = None,
        error_type: str | None = None,
        extra: Attributes | None = None,
        duration_s: float | None = None,
    ) -> None:
        """End the span with the response status (None: no response was sent, e.g. the client left).
        `duration_s`: how long after its start the request ended, when that was before this call.

        The span's status is Error for a 5xx, no response, or an `error_type` with a 2xx or 3xx (a stream
        that broke after its headers left); a 4xx stays unset (HTTP server conventions: the client's error).
        `error_type` (default: the status code) names the failure. Ending twice is harmless.
        """

    def __repr__(self) -> str:
        if not self.trace_id:
            return "<RequestSpan off>"
        return f"<RequestSpan {self.trace_id:032x}/{self.span_id:016x} {'sampled' if self.recording else 'unsampled'}>"


class _SampledRequest(RequestSpan):
    __slots__ = ("_ended", "_name", "_path", "_route", "_span", "_tracing")

    recording = True

    def __init__(self, tracing: Tracing, span: _Span, state: bytes | None, name: str, path: str) -> None:
        # RequestSpan.__init__, inlined: as much again as setting its three slots.
        self.traceparent = format_traceparent(span.trace_id, span.span_id, _SAMPLED)
        self._state = state
        self._incoming = None
        self._tracing = tracing
        self._span = span
        self._name = name
        self._path = path
        self._route: str | None = None
        self._ended = False

    def set_route(self, route: str, owner: str | None = None, http_route: str | None = None) -> None:
        attributes = self._span.attributes
        attributes["gateway.route"] = route
        if owner:
            attributes["gateway.route.owner"] = owner
        if http_route:
            attributes["http.route"] = http_route
            self._route = http_route

    def set_request_model(self, model: str | None, operation: str | None = None) -> None:
        if not isinstance(model, str):
            return
        operation = operation or _operation(self._path)
        attributes = self._span.attributes
        if operation is None:
            attributes["gateway.request.model"] = model
            return
        attributes["gen_ai.operation.name"] = operation
        attributes["gen_ai.request.model"] = model

    def attempt(
        self,
        backend: str,
        method: str,
        url: str,
        attempt_no: int,
        canary: bool = False,
        model: str | None = None,
        hedge: bool = False,
    ) -> AttemptSpan:
        attributes = self._tracing.client_attributes(method, url)
        attributes["gateway.backend"] = backend
        attributes["gateway.attempt"] = attempt_no
        attributes["gateway.canary"] = canary
        if attempt_no > 1:
            attributes["http.request.resend_count"] = attempt_no - 1
        if hedge:
            attributes["gateway.hedge"] = True
        mine = self._span.attributes
        if "gateway.route" in mine:
            attributes["gateway.route"] = mine["gateway.route"]
        if "gen_ai.operation.name" in mine:
            attributes["gen_ai.operation.name"] = mine["gen_ai.operation.name"]
            requested = model or mine.get("gen_ai.request.model")
            if requested is not None:
                attributes["gen_ai.request.model"] = requested
        name = method if method in KNOWN_METHODS else "HTTP"
        tracing = self._tracing
        server = self._span
        span = _Span(tracing, name, _CLIENT, server.trace_id, tracing._bits(64) or 1, attributes)
        span.parent_id = server.span_id
        span.trace_state = server.trace_state
        return _SampledAttempt(self, span)

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        self._span.add_event(name, attributes)

    def fallback(self, reason: str, backend: str, attempt_no: int) -> None:
        self._span.add_event(
            "gateway.fallback",
            {"gateway.fallback.reason": reason, "gateway.backend": backend, "gateway.attempt": attempt_no},
        )

    def contract_violation(
        self, direction: Literal["request", "response"], violations: Iterable[ViolationLike], backend: str | None = None
    ) -> None:
        items = list(violations)
        attributes: dict[str, AttributeValue] = {
            "gateway.contract.direction": direction,
            "gateway.contract.pointers": [v.pointer for v in items],
            "gateway.contract.violations": len(items),
        }
        keywords = [str(getattr(v, "keyword", "")) for v in items]
        if any(keywords):
            attributes["gateway.contract.keywords"] = keywords
        if backend is not None:
            attributes["gateway.backend"] = backend
        if self._tracing.capture_content:
            limit = self._tracing.content_limit
            attributes["gateway.contract.messages"] = [_clip(v.message, limit)[0] for v in items]
        self._span.add_event("gateway.contract_violation", attributes)

    def circuit(self, backend: str, before: str, after: str, reason: str = "") -> None:
        self._span.add_event(
            "gateway.circuit",
            {
                "gateway.backend": backend,
                "gateway.circuit.from": before,
                "gateway.circuit.to": after,
                "gateway.circuit.reason": reason,
            },
        )

    def capture_prompt(self, document: Any) -> None:
        if not self._tracing.capture_content:
            return
        if isinstance(document, dict):
            for key in ("messages", "prompt", "input", "inputs"):
                if key in document:
                    document = document[key]
                    break
        text, truncated = _clip(_text(document), self._tracing.content_limit)
        self._span.add_event("gen_ai.content.prompt", {"gen_ai.prompt": text, "gateway.content.truncated": truncated})

    def capture_completion(self, content: Any) -> None:
        if not self._tracing.capture_content:
            return
        if isinstance(content, dict):
            for key in ("choices", "outputs", "predictions"):
                if key in content:
                    content = content[key]
                    break
        text, truncated = _clip(_text(content), self._tracing.content_limit)
        self._span.add_event(
            "gen_ai.content.completion", {"gen_ai.completion": text, "gateway.content.truncated": truncated}
        )

    def end(
        self,
        status: int | None,
        *,
        backend: str | None = None,
        attempts: int | None = None,
        fallback_reason: str | None = None,
        cost_usd: float | None = None,
        cost_estimated: bool | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        response_model: str | None = None,
        canary: bool | None = None,
        tenant: str | None = None,
        cache: str | None = None,
        error_type: str | None = None,
        extra: Attributes | None = None,
        duration_s: float | None = None,
    ) -> None:
        if self._ended:
            return
        self._ended = True
        if _current.get() is self:
            _current.set(None)
        attributes = self._span.attributes
        if status is not None:
            attributes["http.response.status_code"] = status
        if backend is not None:
            attributes["gateway.backend"] = backend
        if attempts is not None:
            attributes["gateway.attempts"] = attempts
        if fallback_reason is not None:
            attributes["gateway.fallback.reason"] = fallback_reason
        if cost_usd is not None:
            attributes["gateway.cost_usd"] = cost_usd
        if cost_estimated is not None:
            attributes["gateway.cost_estimated"] = cost_estimated
        if canary is not None:
            attributes["gateway.canary"] = canary
        if tenant is not None:
            attributes["gateway.tenant"] = tenant
        if cache is not None:
            attributes["gateway.cache"] = cache
        if input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = input_tokens
        if output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = output_tokens
        if response_model is not None:
            attributes["gen_ai.response.model"] = response_model
        # A 4xx is the client's failure, not ours; a 5xx, no response, or a named failure after a 2xx or 3xx
        # (e.g. a stream broken mid-body) is ours.
        failed = status is None or status >= 500 or (error_type is not None and status < 400)
        if failed or error_type is not None:
            attributes["error.type"] = error_type or (str(status) if status is not None else "_OTHER")
        if extra:
            attributes.update(extra)
        span = self._span
        if self._route is not None:
            span.name = f"{self._name} {self._route}"
        span.end(failed, duration_s)


class AttemptSpan:
    """The CLIENT span of one upstream try. This base class is the unsampled (or tracing-off) one: it
    only propagates the trace context. Sampled attempts get `_SampledAttempt`."""

    __slots__ = ("_request",)

    recording = False

    def __init__(self, request: RequestSpan) -> None:
        self._request = request

    def inject(self) -> Headers:
        """The `traceparent` (and `tracestate`) to send upstream in place of the client's: this attempt's
        span when sampled, the request's unsampled context otherwise, the client's own when tracing is off."""
        request = self._request
        parent = request.traceparent
        if parent is None:
            return [(k, v) for k, v in request._incoming or () if k in TRACE_HEADERS]
        state = request._state
        return [(b"traceparent", parent), (b"tracestate", state)] if state else [(b"traceparent", parent)]

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        """A span event with these attributes."""

    def end(self, status: int | None, error_type: str | None = None, *, extra: Attributes | None = None) -> None:
        """`status` is the upstream's status code (None: no response, e.g. a timeout or a refused
        connection). A 4xx or 5xx, no status, or an `error_type` (e.g. `contract`) marks the span as
        failed (HTTP client conventions); `error_type` defaults to the status code. Ending twice is harmless."""

    def __repr__(self) -> str:
        return f"<AttemptSpan {'sampled' if self.recording else 'unsampled'}>"


class _SampledAttempt(AttemptSpan):
    __slots__ = ("_ended", "_span")

    recording = True

    def __init__(self, request: RequestSpan, span: _Span) -> None:
        self._request = request  # AttemptSpan.__init__, inlined
        self._span = span
        self._ended = False

    def inject(self) -> Headers:
        span = self._span
        headers = [(b"traceparent", format_traceparent(span.trace_id, span.span_id, _SAMPLED))]
        if span.trace_state:
            headers.append((b"tracestate", span.trace_state.to_header().encode("latin-1")))
        return headers

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        self._span.add_event(name, attributes)

    def end(self, status: int | None, error_type: str | None = None, *, extra: Attributes | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        span = self._span
        attributes = span.attributes
        if status is not None:
            attributes["http.response.status_code"] = status
        failed = status is None or status >= 400 or error_type is not None
        if failed:
            attributes["error.type"] = error_type or (str(status) if status is not None else "_OTHER")
        if extra:
            attributes.update(extra)
        span.end(failed)


class _Span:
    """A sampled span: plain values, no locks and no attribute checks (the gateway sets every attribute
    itself). When it ends it goes to the SDK's batch processor as it is, for the OTLP exporter's thread
    to encode (a `gateway.otlp.SpanRecord`), else as a `ReadableSpan`. The SDK's own live spans cost
    ~25 us each here; this costs a few. Nothing changes it after it ended (its owners keep an `_ended`
    flag), as the exporter's thread may be reading it."""

    __slots__ = (
        "_tracing",
        "attributes",
        "end_time",
        "events",
        "kind",
        "name",
        "parent_flags",
        "parent_id",
        "parent_remote",
        "span_id",
        "start_time",
        "status_code",
        "trace_id",
        "trace_state",
    )

    links: tuple[()] = ()
    dropped_attributes = dropped_events = dropped_links = 0
    status_description = None
    context = _SAMPLED_CONTEXT  # all the batch span processor reads of a span it queues

    def __init__(
        self, tracing: Tracing, name: str, kind: int, trace_id: int, span_id: int, attributes: dict[str, AttributeValue]
    ) -> None:
        self._tracing = tracing
        self.name = name
        self.kind = kind  # OTLP's numbering (SpanKind + 1)
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = 0  # a root span; set by the caller otherwise
        self.parent_remote = False
        self.parent_flags = _SAMPLED  # a remote parent's own flags
        self.trace_state: TraceState | None = None
        self.attributes = attributes
        self.events: list[Event] | tuple[()] = ()  # most spans have none: no list for them
        self.status_code = _STATUS_UNSET
        self.start_time = time.time_ns()
        self.end_time = 0

    def add_event(self, name: str, attributes: Attributes | None = None) -> None:
        self.events = [*self.events, Event(name, attributes, time.time_ns())]

    def end(self, failed: bool = False, duration_s: float | None = None) -> None:
        self.end_time = time.time_ns() if duration_s is None else self.start_time + int(duration_s * 1e9)
        if failed:
            self.status_code = _STATUS_ERROR
        self._tracing._export(self)

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        context = SpanContext(self.trace_id, self.span_id, False, _SAMPLED_FLAGS, self.trace_state)
        parent = None
        if self.parent_id:
            flags = TraceFlags(self.parent_flags)
            parent = SpanContext(self.trace_id, self.parent_id, self.parent_remote, flags, self.trace_state)
        return ReadableSpan(
            name=self.name,
            context=context,
            parent=parent,
            resource=resource,
            attributes=self.attributes,
            events=self.events,
            kind=SpanKind(self.kind - 1),
            instrumentation_scope=scope,
            status=_ERROR if self.status_code == _STATUS_ERROR else _UNSET,
            start_time=self.start_time,
            end_time=self.end_time,
        )


NO_SPAN = RequestSpan(None, None, None)  # a no-op span, also for answers given before any span starts


def _bounded(work: Callable[[], object], timeout_s: float) -> bool:
    """Run `work` in a daemon thread; True if it finished within `timeout_s`."""
    thread = threading.Thread(target=work, name="tracing-flush", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


def _sdk_disabled(env: Mapping[str, str]) -> bool:
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _exporter_kind(config: Telemetry, env: Mapping[str, str]) -> ExporterKind:
    traces = config.traces
    if _sdk_disabled(env):
        return "none"  # the standard kill switch beats the file
    if "exporter" in traces.model_fields_set:
        return traces.exporter
    for name in env.get("OTEL_TRACES_EXPORTER", "").split(","):
        name = name.strip().lower()
        if name in ("otlp", "console", "none"):
            return name  # type: ignore[return-value]
        if name:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none); ignored", name)
    return traces.exporter


def _sampling(config: Telemetry, env: Mapping[str, str]) -> _Sampling:
    traces = config.traces
    if "sample_ratio" in traces.model_fields_set:
        return _Sampling(traces.sample_ratio)
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    ratio: float | None = None
    if arg:
        try:
            ratio = float(arg)
        except ValueError:
            ratio = None
        if ratio is None or not 0.0 <= ratio <= 1.0:
            log.warning("OTEL_TRACES_SAMPLER_ARG=%s is not a ratio in [0, 1]; ignored", arg)
            ratio = None
    if not name:
        return _Sampling(traces.sample_ratio if ratio is None else ratio)
    if name not in _SAMPLERS:
        log.warning("OTEL_TRACES_SAMPLER=%s is not supported; using parentbased_traceidratio", name)
        return _Sampling(traces.sample_ratio if ratio is None else ratio)
    fixed, parent_based = _SAMPLERS[name]
    if fixed is None:
        fixed = 1.0 if ratio is None else ratio  # the SDK's default ratio for the ratio samplers
    return _Sampling(fixed, parent_based)


def _otlp_exporter(
    config: Telemetry, env: Mapping[str, str], resource: Resource, scope: InstrumentationScope
) -> tuple[SpanExporter, str, bool]:
    """The exporter, its endpoint, and whether it takes the gateway's span records (`SpanRecord`s)."""
    from gateway.otlp import FastOTLPSpanExporter

    traces = config.traces
    if "endpoint" in traces.model_fields_set:
        endpoint: str | None = _traces_url(traces.endpoint)
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = None  # the exporter reads the variables itself (the signal-specific one is used as is)
    else:
        endpoint = _traces_url(traces.endpoint)
    exporter = FastOTLPSpanExporter(endpoint=endpoint, resource=resource, scope=scope)
    return exporter, str(getattr(exporter, "_endpoint", endpoint)), exporter.takes_records


def _traces_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def _resource(config: Telemetry, env: Mapping[str, str], version: str) -> Resource:
    attributes: dict[str, AttributeValue] = {SERVICE_VERSION: version}
    if "service_name" in config.model_fields_set:
        attributes[SERVICE_NAME] = config.service_name
    resource = Resource.create(attributes)  # merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME under these
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: config.service_name}))
    return resource


def _server_attributes(
    method: str, path: str, scheme: str, headers: Headers, client_ip: str, server: tuple[str, int] | None
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {"url.path": path, "url.scheme": scheme}
    _set_method(attributes, method)
    if client_ip:
        attributes["client.address"] = client_ip
    host: bytes | None = None
    for key, value in headers:
        if key == b"host" and host is None:
            host = value
        elif key == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    if host:
        address, port = _split_host(host, scheme)
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    elif server is not None:
        attributes["server.address"] = server[0]
        attributes["server.port"] = server[1]
    return attributes


def _client_attributes(method: str, url: str) -> dict[str, AttributeValue]:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:  # never credentials in url.full (HTTP conventions: REDACTED:REDACTED@host)
        netloc = "REDACTED:REDACTED@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:  # keys stay, values may be secrets
        query = "&".join(p.partition("=")[0] + ("=REDACTED" if "=" in p else "") for p in query.split("&"))
    attributes: dict[str, AttributeValue] = {
        "url.full": urlunsplit((parts.scheme, netloc, parts.path, query, "")),
        "server.address": parts.hostname or "",
    }
    _set_method(attributes, method)
    try:
        port = parts.port
    except ValueError:
        port = None
    attributes["server.port"] = port or (443 if parts.scheme == "https" else 80)
    return attributes


def _set_method(attributes: dict[str, AttributeValue], method: str) -> None:
    if method in KNOWN_METHODS:
        attributes["http.request.method"] = method
    else:
        attributes["http.request.method"] = "_OTHER"
        attributes["http.request.method_original"] = method


@functools.lru_cache(maxsize=256)  # a client sends the same Host again and again
def _split_host(host: bytes, scheme: str) -> tuple[str, int | None]:
    default = 443 if scheme == "https" else 80
    text = host.decode("latin-1")
    if text.startswith("["):  # [IPv6]:port
        address, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port = text.partition(":")
    return address, int(port) if port.isdigit() else default


@functools.lru_cache(maxsize=256)  # an API's paths are few
def _operation(path: str) -> str | None:
    path = path.rstrip("/")
    for suffix, operation in _OPERATIONS:
        if path.endswith(suffix):
            return operation
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, bytes | bytearray):
        return bytes(content).decode("utf-8", "replace")
    return orjson.dumps(content, default=str).decode()


def _clip(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[:limit], True
