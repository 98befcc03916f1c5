"""The data-plane ASGI app: read and vet the request, run the pipeline, write the reply.

This is the hot path, written as plain ASGI (no framework request objects): every request pays
for what happens here.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Receive, Scope, Send

from gateway.context import Reply, RequestContext
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    ErrorFormat,
    FieldError,
    GatewayError,
    HeadersTooLarge,
    Overloaded,
    UpstreamError,
    render_error,
)
from gateway.feedback_api import PATH as FEEDBACK_PATH, answer_feedback
from gateway.tasks import AfterResponse, TaskSet
from gateway.tracing import NO_SPAN

if TYPE_CHECKING:
    from gateway.runtime import Runtime, RuntimeHolder
    from gateway.tracing import RequestSpan

log = logging.getLogger("gateway")
_RETRY_SOON = [(b"retry-after", b"1")]
_random_bits = random.Random().getrandbits  # seeded from os.urandom once, at import


_HEALTH = frozenset({"/healthz", "/readyz"})


class DataPlane:
    """ASGI entry point of the data port."""

    def __init__(self, holder: RuntimeHolder, tasks: TaskSet) -> None:
        self._holder = holder
        self._tasks = tasks
        self._tracing = holder.shared.tracing
        self._after = AfterResponse()
        self._in_flight = 0  # across requests, by design: the load to shed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # uvicorn runs with lifespan="off"; websockets are not proxied
            return
        runtime = self._holder.current  # in-flight requests finish on the config they started with
        received_at = time.perf_counter()
        if scope["path"] in _HEALTH and scope["method"] == "GET":
            await self._holder.health.answer(scope["path"], send)
            return
        request_id = _request_id(scope["headers"])
        if scope["path"] == FEEDBACK_PATH and scope["method"] == "POST":
            await answer_feedback(self._holder.shared.feedback, receive, send, request_id)
            return
        limit = runtime.config.listen.max_in_flight
        if limit is not None and self._in_flight >= limit:
            shed = Overloaded(f"{self._in_flight} requests in flight; the limit is {limit}", headers=_RETRY_SOON)
            await _send_error(send, shed, request_id, None, NO_SPAN)
            return
        self._in_flight += 1
        try:
            await self._handle(scope, receive, send, runtime, received_at, request_id)
        finally:
            self._in_flight -= 1

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, runtime: Runtime, received_at: float, request_id: str
    ) -> None:
        client = scope.get("client")
        client_ip = client[0] if client else ""
        span = self._tracing.start_request(
            scope["method"], scope["path"], scope["scheme"], scope["headers"], client_ip, scope.get("server")
        )
        ctx: RequestContext | None = None
        try:
            ctx = await _read_request(scope, receive, runtime, request_id, received_at, client_ip, span)
            reply = await runtime.handle(ctx)
        except GatewayError as exc:
            await _send_error(send, exc, request_id, ctx, span)
            if ctx is not None and ctx.after_response:
                ctx.ended_at = time.perf_counter()
                self._after.defer(ctx.after_response)
            else:  # refused before the pipeline (400, 413, 431): nothing else will end the span
                span.end(exc.status, error_type=exc.kind)
            return
        except Exception:
            log.exception("unhandled error on request %s", request_id)
            error = GatewayError("the gateway failed to handle this request")
            await _send_error(send, error, request_id, ctx, span)
            span.end(500, error_type=error.kind)
            return
        await _write(ctx, reply, send, receive, self._tasks)
        ctx.ended_at = time.perf_counter()
        if ctx.after_response:
            self._after.defer(ctx.after_response)


async def _read_request(
    scope: Scope,
    receive: Receive,
    runtime: Runtime,
    request_id: str,
    received_at: float,
    client_ip: str,
    span: RequestSpan,
) -> RequestContext:
    limits = runtime.config.listen
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    content_type, content_length = _vet_headers(headers, limits.max_header_count, limits.max_header_bytes)
    path: str = scope["path"]
    _vet_path(path)
    ctx = RequestContext(
        request_id=request_id,
        received_at=received_at,
        method=scope["method"],
        path=path,
        raw_path=scope.get("raw_path") or path.encode(),
        query=scope["query_string"],
        headers=headers,
        client_ip=client_ip,
        scheme=scope["scheme"],
        trace=span,
    )
    ctx.body = await _read_body(receive, content_length, limits.max_body_bytes)
    if ctx.body and (content_type is None or b"json" in content_type):  # application/json, +json, text/json
        ctx.document = _parse_json(ctx.body)
    return ctx


def _vet_headers(
    headers: list[tuple[bytes, bytes]], max_count: int, max_bytes: int
) -> tuple[bytes | None, bytes | None]:
    """Enforce the header limits (httptools has none) and find Content-Type and Content-Length, in one pass."""
    if len(headers) > max_count:
        raise HeadersTooLarge(f"{len(headers)} header fields; the limit is {max_count}")
    size = 0
    hosts = 0
    content_type = content_length = None
    for key, value in headers:
        size += len(key) + len(value) + 4
        if key == b"host":
            hosts += 1
        elif key == b"content-type":
            content_type = value
        elif key == b"content-length":
            content_length = value
    if size > max_bytes:
        raise HeadersTooLarge(f"{size} bytes of header fields; the limit is {max_bytes}")
    if hosts > 1:
        raise BadRequest("more than one Host header", errors=[FieldError("host", "must appear once")])
    return content_type, content_length


def _vet_path(path: str) -> None:
    # The path arrives percent-decoded, so "%2e%2e" shows up here as "..".
    if "." in path:
        for segment in path.split("/"):
            if segment in (".", ".."):
                raise BadRequest(
                    "the path contains a dot-segment",
                    errors=[FieldError("path", "'.' and '..' segments are ambiguous")],
                )


async def _read_body(receive: Any, declared: bytes | None, limit: int) -> bytes:
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if length > limit:
            raise BodyTooLarge(f"the body is {length} bytes; the limit is {limit}", headers=[(b"connection", b"close")])
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes", headers=[(b"connection", b"close")])
        parts.append(chunk)
    return b"".join(parts)


def _parse_json(body: bytes) -> Any:
    # orjson rejects NaN/Infinity, numbers that overflow a double and nesting past 1024 levels,
    # all as JSONDecodeError: none of them can reach a backend or turn into a 500.
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("the body is not valid JSON", errors=[FieldError("", str(exc))]) from None


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's x-request-id when it is a sane token (visible ASCII, at most 128 bytes), else a new one."""
    for key, value in headers:
        if key == b"x-request-id":
            if 0 < len(value) <= 128 and all(33 <= c <= 126 for c in value):
                return value.decode()
            break
    # 128 bits from the process's PRNG: unique enough to correlate logs and traces, and without the
    # getrandom() system call that os.urandom (and uuid4) make on every request.
    return f"{_random_bits(128):032x}"


async def _send_error(
    send: Send, error: GatewayError, request_id: str, ctx: RequestContext | None, span: RequestSpan
) -> None:
    routed = ctx is not None and ctx.has_route
    error_format: ErrorFormat = ctx.route.error_format if ctx is not None and routed else "problem"
    status, headers, body = render_error(error, request_id, error_format)
    headers.append((b"x-request-id", request_id.encode()))
    if ctx is not None and routed:
        headers.append((b"x-gateway-route", ctx.route.name_header))
        headers.append((b"x-gateway-attempts", str(len(ctx.attempts)).encode()))
    if isinstance(error, UpstreamError):
        headers.append((b"x-gateway-backend", error.backend.encode()))
    traceparent = span.traceparent
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _write(ctx: RequestContext, reply: Reply, send: Any, receive: Any, tasks: TaskSet) -> None:
    headers = reply.headers
    headers.append((b"x-request-id", ctx.request_id.encode()))
    if ctx.has_route:
        headers.append((b"x-gateway-route", ctx.route.name_header))
    if reply.backend is not None:
        headers.append((b"x-gateway-backend", reply.backend.name.encode()))
    if ctx.attempts:
        headers.append((b"x-gateway-attempts", str(len(ctx.attempts)).encode()))
        headers.append((b"server-timing", _server_timing(ctx, reply)))
    if ctx.fallback_reason is not None:
        headers.append((b"x-gateway-fallback", ctx.fallback_reason.encode()))
    traceparent = ctx.trace.traceparent
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
    if reply.stream is None:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
    else:
        await _stream(ctx, reply, send, receive, tasks)


async def _stream(ctx: RequestContext, reply: Reply, send: Any, receive: Any, tasks: TaskSet) -> None:
    """Pass the body on chunk by chunk; stop pulling from the upstream as soon as the client leaves."""
    assert reply.stream is not None
    streaming = asyncio.current_task()
    assert streaming is not None
    watcher = tasks.spawn(_cancel_on_disconnect(receive, streaming), name=f"disconnect-watch {ctx.request_id}")
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        async for chunk in reply.stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except UpstreamError as exc:
        # Bytes already reached the client: ending without the final chunk tells it the body is incomplete.
        log.warning("request %s: upstream %s broke mid-body: %s", ctx.request_id, exc.backend, exc.detail)
    except asyncio.CancelledError:
        if not watcher.done():
            raise
        streaming.uncancel()
        log.info("request %s: client disconnected mid-stream", ctx.request_id)
    finally:
        watcher.cancel()
        if reply.upstream is not None:
            await reply.upstream.aclose()


async def _cancel_on_disconnect(receive: Any, task: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


def _server_timing(ctx: RequestContext, reply: Reply) -> bytes:
    now = time.perf_counter()
    answered = reply.attempt
    upstream_ms = ((answered.headers_at or now) - answered.started_at) * 1000 if answered is not None else 0.0
    gateway_ms = (now - ctx.received_at) * 1000 - upstream_ms
    return f"gateway;dur={gateway_ms:.2f}, upstream;dur={upstream_ms:.2f}".encode()
