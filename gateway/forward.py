"""The terminal stage: one HTTP attempt against the chosen backend, turned into a Reply."""

from __future__ import annotations

import ipaddress
import random
import time

import orjson

from gateway.canary import WeightedChoice
from gateway.context import Attempt, Reply, RequestContext
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.headers import forwarded_for, to_client, to_upstream
from gateway.routing import BackendTarget, CompiledRoute
from gateway.types import Clock, Headers
from gateway.upstream import AttemptTimeouts, UpstreamClient, UpstreamRequest

# Bodies up to this size with a known length are read whole before answering, so a break
# mid-body is still a clean 502; anything larger or of unknown length is streamed.
BUFFER_LIMIT = 256 * 1024


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


class Forward:
    """Builds the upstream request (headers, body, URL), sends it once and wraps the answer."""

    def __init__(
        self,
        client: UpstreamClient,
        routes: list[CompiledRoute],
        trusted: TrustedProxies,
        rng: random.Random | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self._client = client
        self._trusted = trusted
        self._clock = clock
        rng = rng or random.Random()
        self._choices = {route.name: WeightedChoice.for_route(route, rng) for route in routes}

    async def __call__(self, ctx: RequestContext) -> Reply:
        route = ctx.route
        backend = self._choices[route.name].pick()
        request = UpstreamRequest(
            backend=backend.name,
            method=ctx.method,
            url=self._url(ctx, backend),
            headers=self._headers(ctx, backend),
            body=self._body(ctx, backend),
        )
        now = self._clock()
        left = ctx.received_at + route.timeouts.request_s - now
        if left <= 0:
            raise UpstreamTimeout(f"request deadline of {route.timeouts.request_s:g}s passed", backend=backend.name)
        timeouts = AttemptTimeouts(
            connect_s=min(route.timeouts.connect_s, left),
            first_byte_s=min(route.timeouts.first_byte_s, route.timeouts.attempt_s, left),
            idle_s=route.timeouts.idle_s,
        )
        attempt = Attempt(backend=backend.name, started_at=now)
        ctx.attempts.append(attempt)
        try:
            response = await self._client.send(request, timeouts)
            attempt.status = response.status
            attempt.headers_at = self._clock()
            headers = to_client(response.headers)
            length = _content_length(headers)
            if length is not None and length <= BUFFER_LIMIT:
                try:
                    body = await response.read()
                finally:
                    await response.aclose()
                return Reply(response.status, headers, body=body, backend=backend)
        except UpstreamError as exc:
            attempt.error = exc
            if isinstance(exc, UpstreamTimeout) and left <= timeouts.first_byte_s:
                raise UpstreamTimeout(
                    f"request deadline of {route.timeouts.request_s:g}s passed", backend=backend.name
                ) from None
            raise
        return Reply(response.status, headers, stream=response.chunks(), upstream=response, backend=backend)

    @staticmethod
    def _url(ctx: RequestContext, backend: BackendTarget) -> str:
        url = backend.origin + backend.base_path + ctx.raw_path.decode("latin-1")
        return url + "?" + ctx.query.decode("latin-1") if ctx.query else url

    def _headers(self, ctx: RequestContext, backend: BackendTarget) -> Headers:
        headers = [(k, v) for k, v in to_upstream(ctx.headers) if k not in backend.header_names]
        headers.extend(backend.headers)
        trusted = ctx.client_ip in self._trusted
        incoming_proto = ctx.header(b"x-forwarded-proto") if trusted else None
        headers.append((b"x-forwarded-for", forwarded_for(ctx.client_ip, ctx.header(b"x-forwarded-for"), trusted)))
        headers.append((b"x-forwarded-proto", incoming_proto or ctx.scheme.encode()))
        headers.append((b"x-request-id", ctx.request_id.encode()))
        return headers

    @staticmethod
    def _body(ctx: RequestContext, backend: BackendTarget) -> bytes:
        document = ctx.document
        if backend.model is None or not isinstance(document, dict) or document.get("model") == backend.model:
            return ctx.body
        document = {**document, "model": backend.model}
        return orjson.dumps(document)


def _content_length(headers: Headers) -> int | None:
    for key, value in headers:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
