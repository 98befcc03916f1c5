"""One upstream attempt: build the request for a backend, send it, classify the answer.

An attempt succeeds with a `Reply` or fails with an `UpstreamError` whose `reason` is the
fallback class (`status_5xx`, `timeout`, ...). For an SSE answer the attempt lasts until the
first event arrived, so a backend that fails or stays silent before it can still be replaced
without the client ever seeing it (DESIGN.md, "Streaming").
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.context import Attempt, Reply, RequestContext
from gateway.contract_check import ContractStats, field_errors
from gateway.contracts import Schema
from gateway.errors import (
    FieldError,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from gateway.headers import forwarded_for, to_client, to_upstream
from gateway.routing import BackendTarget
from gateway.sse import SseEvent, SseParser
from gateway.types import Clock, Headers
from gateway.upstream import AttemptTimeouts, UpstreamClient, UpstreamRequest, UpstreamResponse

# Bodies up to this size with a known length are read whole before answering, so a break
# mid-body is still a clean failure that can fall back; larger or unknown-length bodies stream.
BUFFER_LIMIT = 256 * 1024
DEADLINE_HEADER = b"x-gateway-timeout-ms"  # the time left for the request, so the upstream can give up too
_CONTEXT_LENGTH = b"context_length_exceeded"


class TrustedProxies:
    """Peers allowed to tell us who the client is (X-Forwarded-For / -Proto)."""

    def __init__(self, entries: list[str]) -> None:
        self._networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        trusted = self._cache.get(ip)
        if trusted is None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            trusted = any(address in network for network in self._networks)
            if len(self._cache) < 4096:
                self._cache[ip] = trusted
        return trusted


@dataclass(slots=True)
class StreamStart:
    """An SSE answer whose first events arrived: what the stream guard continues from."""

    parser: SseParser
    first_events: list[SseEvent]
    chunks: AsyncIterator[bytes]  # the rest of the body, from where the first events ended
    response: UpstreamResponse  # to close when the stream is done with


class Forwarder:
    """Sends one attempt; knows the header, body and URL rules but nothing about retries."""

    def __init__(
        self, client: UpstreamClient, trusted: TrustedProxies, stats: ContractStats, clock: Clock = time.perf_counter
    ) -> None:
        self._client = client
        self._trusted = trusted
        self._stats = stats
        self._clock = clock

    async def attempt(
        self, ctx: RequestContext, backend: BackendTarget, body: bytes, deadline: float, attempt: Attempt
    ) -> Reply:
        """One try against `backend`, bounded by the route's per-attempt limits and `deadline`."""
        route = ctx.route
        limits = route.timeouts
        now = self._clock()
        left = min(deadline, now + limits.attempt_s) - now
        if left <= 0:
            raise UpstreamTimeout(f"request deadline of {limits.request_s:g}s passed", backend=backend.name)
        url = self._url(ctx, backend)
        span = ctx.trace.attempt(
            backend.name, ctx.method, url, len(ctx.attempts), backend is not route.stable, backend.model, attempt.hedge
        )
        request = UpstreamRequest(
            backend=backend.name,
            method=ctx.method,
            url=url,
            headers=self._headers(ctx, backend, deadline - now) + span.inject(),
            body=body,
        )
        timeouts = AttemptTimeouts(
            connect_s=min(limits.connect_s, left), first_byte_s=min(limits.first_byte_s, left), idle_s=limits.idle_s
        )
        try:
            reply = await self._exchange(ctx, backend, request, timeouts, attempt, now, left)
        except UpstreamError as exc:
            span.end(exc.upstream_status if isinstance(exc, UpstreamStatus) else None, exc.reason)
            raise
        except BaseException:  # cancelled (a hedge that lost, a client that left)
            attempt.cancelled = True
            span.end(None, "cancelled")
            raise
        span.end(reply.status)
        reply.attempt = attempt
        return reply

    async def _exchange(
        self,
        ctx: RequestContext,
        backend: BackendTarget,
        request: UpstreamRequest,
        timeouts: AttemptTimeouts,
        attempt: Attempt,
        now: float,
        left: float,
    ) -> Reply:
        limits = ctx.route.timeouts
        response = await self._client.send(request, timeouts)
        attempt.status = response.status
        attempt.headers_at = self._clock()
        status = response.status
        try:
            headers = to_client(response.headers)
            if status >= 500 or status == 429 or (status == 400 and ctx.route.watches_context_length):
                body_bytes = await _read_small(response)
                await response.aclose()
                reason = _failure_reason(status, body_bytes)
                if reason is not None:
                    raise UpstreamStatus(status, reason, backend=backend.name, headers=headers, body=body_bytes)
                return Reply(status, headers, body=body_bytes, backend=backend)
            if _is_event_stream(headers):
                first_byte_by = now + min(limits.first_byte_s, left)
                start = await _first_events(response, first_byte_by - self._clock(), backend.name)
                return Reply(status, headers, stream=start.chunks, upstream=response, backend=backend, sse=start)
            length = _content_length(headers)
            schema = ctx.contract.response if ctx.contract is not None and status < 300 else None
            if schema is not None or (length is not None and length <= BUFFER_LIMIT):
                body_bytes = await response.read()
                await response.aclose()
                reply = Reply(status, headers, body=body_bytes, backend=backend)
                if schema is not None:
                    reply.document = self._check_response(ctx, schema, body_bytes, backend.name)
                return reply
            return Reply(status, headers, stream=response.chunks(), upstream=response, backend=backend)
        except BaseException:
            await response.aclose()
            raise

    def _check_response(self, ctx: RequestContext, schema: Schema, body: bytes, backend: str) -> Any:
        """The parsed answer, or UpstreamBadResponse (reason `contract`) naming every failing field."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            errors = [FieldError("", f"not valid JSON: {exc}")]
        else:
            errors = field_errors(schema.violations(document))
        if not errors:
            return document
        self._stats.violated(ctx.route.name, "response", errors)
        ctx.trace.contract_violation("response", errors, backend)
        raise UpstreamBadResponse(f"the response breaks the {schema.name} contract", backend=backend, errors=errors)

    @staticmethod
    def _url(ctx: RequestContext, backend: BackendTarget) -> str:
        url = backend.origin + backend.base_path + ctx.raw_path.decode("latin-1")
        return url + "?" + ctx.query.decode("latin-1") if ctx.query else url

    def _headers(self, ctx: RequestContext, backend: BackendTarget, left_s: float) -> Headers:
        headers = to_upstream(ctx.headers, backend.header_names)
        headers.extend(backend.headers)
        trusted = ctx.client_ip in self._trusted
        incoming_proto = ctx.header(b"x-forwarded-proto") if trusted else None
        headers.append((b"x-forwarded-for", forwarded_for(ctx.client_ip, ctx.header(b"x-forwarded-for"), trusted)))
        headers.append((b"x-forwarded-proto", incoming_proto or ctx.scheme.encode()))
        headers.append((b"x-request-id", ctx.request_id.encode()))
        headers.append((DEADLINE_HEADER, str(max(0, int(left_s * 1000))).encode()))
        return headers


def request_body(ctx: RequestContext, backend: BackendTarget, extra: dict[str, object] | None = None) -> bytes:
    """The body for one backend: the client's bytes, unless its "model" or `extra` fields change it."""
    document = ctx.document
    if not isinstance(document, dict):
        return ctx.body
    rewrite_model = backend.model is not None and document.get("model") != backend.model
    if not rewrite_model and not extra:
        return ctx.body
    changed = {**document, **(extra or {})}
    if rewrite_model:
        changed["model"] = backend.model
    return orjson.dumps(changed)


def _failure_reason(status: int, body: bytes) -> str | None:
    if status >= 500:
        return "status_5xx"
    if status == 429:
        return "status_429"
    if status == 400 and _CONTEXT_LENGTH in body:
        try:
            error = orjson.loads(body).get("error", {})
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if isinstance(error, dict) and error.get("code") == "context_length_exceeded":
            return "context_length"
    return None


async def _read_small(response: UpstreamResponse) -> bytes:
    """An error answer's body, up to BUFFER_LIMIT (enough to pass it on or to read its error code)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.chunks():
        chunks.append(chunk)
        size += len(chunk)
        if size > BUFFER_LIMIT:
            break
    return b"".join(chunks)


async def _first_events(response: UpstreamResponse, budget_s: float, backend: str) -> StreamStart:
    """Read until the first complete SSE event, within `budget_s`; a failure here can still fall back."""
    parser = SseParser()
    chunks = response.chunks()
    events: list[SseEvent] = []
    try:
        async with asyncio.timeout(max(budget_s, 0.0)):
            async for chunk in chunks:
                events.extend(parser.feed(chunk))
                if any(not e.comment for e in events):
                    return StreamStart(parser, events, chunks, response)
    except TimeoutError:
        raise UpstreamTimeout(f"no stream event within {budget_s:.3g}s (first_byte_s)", backend=backend) from None
    raise UpstreamConnectError("the stream ended before its first event", backend=backend)


def _is_event_stream(headers: Headers) -> bool:
    for key, value in headers:
        if key == b"content-type":
            return value.startswith(b"text/event-stream")
    return False


def _content_length(headers: Headers) -> int | None:
    for key, value in headers:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
