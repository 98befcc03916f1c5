"""The upstream client on aiohttp: the measured winner at concurrency (see loadtests/README.md)."""

from __future__ import annotations

import functools
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
        # From here on the socket's read timeout is the idle limit between body chunks (it was the
        # first-byte limit while waiting for the headers). aiohttp enforces it on the socket, so
        # reading needs no timer of its own.
        connection = response.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = idle_s

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"no bytes for {self._idle_s:g}s (idle_s) mid-body", backend=self._backend) from None
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(f"connection broke mid-body: {exc}", backend=self._backend) from None

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"no bytes for {self._idle_s:g}s (idle_s) mid-body", backend=self._backend) from None
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(f"connection broke mid-body: {exc}", backend=self._backend) from None

    async def aclose(self) -> None:
        # release() keeps a fully read connection for reuse; close() drops one left mid-body.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


@functools.lru_cache(maxsize=4096)
def _url(url: str) -> URL:
    """Parsed once per distinct URL: inference traffic repeats a handful of paths."""
    return URL(url, encoded=True)


@functools.lru_cache(maxsize=256)
def _client_timeout(connect_s: float, first_byte_s: float) -> aiohttp.ClientTimeout:
    """aiohttp enforces both on the socket: connect, then silence until the response headers."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=first_byte_s)


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
        headers = CIMultiDict([(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers])
        try:
            response = await self._session.request(
                request.method,
                _url(request.url),
                headers=headers,
                data=request.body or None,
                allow_redirects=False,
                timeout=_client_timeout(timeouts.connect_s, timeouts.first_byte_s),
            )
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(f"connect timed out after {timeouts.connect_s:g}s", backend=request.backend) from None
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(
                f"no response headers within {timeouts.first_byte_s:g}s (first_byte_s)", backend=request.backend
            ) from None
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
