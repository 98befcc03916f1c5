"""The upstream client on aiohttp: the measured winner at concurrency (see loadtests/README.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Upstream
from gateway.errors import UpstreamConnectError, UpstreamTimeout
from gateway.types import Headers
from gateway.upstream.base import AttemptTimeouts, UpstreamRequest

# aiohttp would add these when absent; a proxy must send only what the client sent.
_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


class AiohttpResponse:
    __slots__ = ("_response", "_idle_s", "_backend", "status", "headers")

    def __init__(self, response: aiohttp.ClientResponse, idle_s: float, backend: str) -> None:
        self._response = response
        self._idle_s = idle_s
        self._backend = backend
        self.status = response.status
        self.headers: Headers = list(response.raw_headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    chunk = await content.readany()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"no bytes for {self._idle_s:g}s (idle_s) mid-body", backend=self._backend
                ) from None
            except aiohttp.ClientError as exc:
                raise UpstreamConnectError(f"connection broke mid-body: {exc}", backend=self._backend) from None
            if not chunk:
                return
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        # release() keeps a fully read connection for reuse; close() drops one left mid-body.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpClient:
    """One shared connection pool: no environment proxies, no redirects, no decompression."""

    def __init__(self, settings: Upstream) -> None:
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            limit_per_host=settings.max_connections_per_backend,
            keepalive_timeout=settings.keepalive_s,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def send(self, request: UpstreamRequest, timeouts: AttemptTimeouts) -> AiohttpResponse:
        headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s)
        try:
            async with asyncio.timeout(timeouts.first_byte_s):
                response = await self._session.request(
                    request.method,
                    URL(request.url, encoded=True),
                    headers=headers,
                    data=request.body or None,
                    allow_redirects=False,
                    timeout=timeout,
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"no response headers within {timeouts.first_byte_s:g}s (first_byte_s)", backend=request.backend
            ) from None
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"connect timed out after {timeouts.connect_s:g}s", backend=request.backend) from None
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(_describe(exc), backend=request.backend) from None
        return AiohttpResponse(response, timeouts.idle_s, request.backend)

    async def aclose(self) -> None:
        await self._session.close()


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed before the response headers"
    return f"{type(exc).__name__}: {exc}"
