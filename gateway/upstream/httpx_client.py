"""The upstream client on httpx (optionally over the httpx-aiohttp transport).

Kept for measurement and for unit tests, where `httpx.MockTransport` stands in for a backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from gateway.config import Upstream
from gateway.errors import UpstreamConnectError, UpstreamTimeout
from gateway.types import Headers
from gateway.upstream.base import AttemptTimeouts, UpstreamRequest


class HttpxResponse:
    __slots__ = ("_response", "_backend", "_idle_s", "status", "headers")

    def __init__(self, response: httpx.Response, backend: str, idle_s: float) -> None:
        self._response = response
        self._backend = backend
        self._idle_s = idle_s
        self.status = response.status_code
        self.headers: Headers = list(response.headers.raw)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._response.is_stream_consumed:  # a response built from bytes (MockTransport) is read already
            yield self._response.content
            return
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"no bytes for {self._idle_s:g}s (idle_s) mid-body", backend=self._backend) from None
        except httpx.TransportError as exc:
            raise UpstreamConnectError(f"connection broke mid-body: {exc}", backend=self._backend) from None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxClient:
    def __init__(self, settings: Upstream, transport: httpx.AsyncBaseTransport | None = None) -> None:
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=settings.keepalive_s,
        )
        if transport is None and settings.client == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport

            # The transport keeps its own pool: it needs the limits and trust_env=False itself.
            transport = AiohttpTransport(limits=limits, trust_env=False)
        self._client = httpx.AsyncClient(
            transport=transport, limits=limits, trust_env=False, follow_redirects=False, timeout=None
        )

    async def send(self, request: UpstreamRequest, timeouts: AttemptTimeouts) -> HttpxResponse:
        timeout = httpx.Timeout(
            connect=timeouts.connect_s, read=timeouts.first_byte_s, write=timeouts.first_byte_s, pool=timeouts.connect_s
        )
        built = self._client.build_request(
            request.method, request.url, headers=request.headers, content=request.body, timeout=timeout
        )
        try:
            response = await self._client.send(built, stream=True)
        except httpx.ConnectTimeout:
            raise UpstreamTimeout(f"connect timed out after {timeouts.connect_s:g}s", backend=request.backend) from None
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"no response headers within {timeouts.first_byte_s:g}s (first_byte_s)", backend=request.backend
            ) from None
        except httpx.TransportError as exc:
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}", backend=request.backend) from None
        # After the headers, the read timeout becomes the idle limit between body chunks
        # (httpcore reads this dict on every receive).
        built.extensions["timeout"]["read"] = timeouts.idle_s
        return HttpxResponse(response, request.backend, timeouts.idle_s)

    async def aclose(self) -> None:
        await self._client.aclose()
