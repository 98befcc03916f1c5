"""A bare pass-through proxy: the baseline the gateway is measured against.

Raw ASGI on uvicorn with uvloop and httptools (the gateway's server stack), one shared upstream
connection pool, and nothing else: no routing, no header rules, no contracts, no accounting. It
forwards the method, path, query, body and a few headers to one upstream with the chosen client
library, reads the whole answer and returns its status, content type and body.

    python -m loadtests.passthrough --upstream http://127.0.0.1:9001 --client aiohttp --port 0

prints `passthrough (aiohttp) listening on http://HOST:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Generator
from typing import Any, Literal, Protocol, get_args

import aiohttp
import httpx
import uvicorn

from gateway.errors import UpstreamError
from gateway.upstream.base import AttemptTimeouts, UpstreamRequest

ClientName = Literal["aiohttp", "h1", "httpx", "httpx-aiohttp"]
CLIENTS: tuple[ClientName, ...] = get_args(ClientName)

# The request headers worth forwarding to a model server; everything else is dropped.
FORWARDED = frozenset({b"content-type", b"accept", b"x-request-id"})
# Pool sizes as in the gateway's defaults (gateway.config.Upstream).
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_HOST = 256
KEEPALIVE_S = 30.0

Headers = list[tuple[bytes, bytes]]
Scope = dict[str, Any]


class Client(Protocol):
    async def send(self, method: str, url: str, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]: ...

    async def aclose(self) -> None: ...


class AiohttpClient:
    def __init__(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, limit_per_host=MAX_CONNECTIONS_PER_HOST, keepalive_timeout=KEEPALIVE_S
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=30),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def send(self, method: str, url: str, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
        str_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        async with self._session.request(
            method, url, headers=str_headers, data=body or None, allow_redirects=False
        ) as response:
            return response.status, _content_type(response.raw_headers), await response.read()

    async def aclose(self) -> None:
        await self._session.close()


class HttpxClient:
    """httpx on its own transport (httpcore), or on the httpx-aiohttp transport."""

    def __init__(self, transport: Literal["httpcore", "aiohttp"]) -> None:
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_S
        )
        base: httpx.AsyncBaseTransport | None = None
        if transport == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            # The transport ignores the client's limits and defaults to 100 connections: pass them.
            base = AiohttpTransport(limits=limits, trust_env=False)
        self._client = httpx.AsyncClient(
            transport=base, limits=limits, trust_env=False, follow_redirects=False, timeout=30.0
        )

    async def send(self, method: str, url: str, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
        response = await self._client.request(method, url, headers=headers, content=body)
        return response.status_code, _content_type(response.headers.raw), response.content

    async def aclose(self) -> None:
        await self._client.aclose()


class H1Client:
    """The gateway's own HTTP/1.1 client (gateway.upstream.h1_client), with generous timeouts."""

    def __init__(self) -> None:
        from gateway.config import Upstream
        from gateway.upstream.h1_client import H1Client as Client

        self._client = Client(
            Upstream(max_connections=MAX_CONNECTIONS, max_connections_per_backend=MAX_CONNECTIONS_PER_HOST)
        )
        self._timeouts = AttemptTimeouts(connect_s=30, first_byte_s=30, idle_s=30)

    async def send(self, method: str, url: str, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
        response = await self._client.send(UpstreamRequest("upstream", method, url, headers, body), self._timeouts)
        try:
            return response.status, _content_type(response.headers), await response.read()
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(name: ClientName) -> Client:
    if name == "aiohttp":
        return AiohttpClient()
    if name == "h1":
        return H1Client()
    return HttpxClient("aiohttp" if name == "httpx-aiohttp" else "httpcore")


def _content_type(raw: Any) -> Headers:
    return [(b"content-type", v) for k, v in raw if k.lower() == b"content-type"][:1]


class PassThrough:
    """The ASGI app: one upstream, one client, read whole, answer whole."""

    def __init__(self, upstream: str, client: Client) -> None:
        self._upstream = upstream.rstrip("/")
        self._client = client

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        url = self._upstream + (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k in FORWARDED]
        try:
            status, response_headers, content = await self._client.send(scope["method"], url, headers, body)
        except (aiohttp.ClientError, httpx.HTTPError, TimeoutError, UpstreamError) as exc:
            status, response_headers, content = 502, [(b"content-type", b"text/plain")], repr(exc).encode()
        response_headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": content})


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, client_name: str) -> None:
        super().__init__(config)
        self._client_name = client_name

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # serve() installs its own handlers, as the gateway does

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"passthrough ({self._client_name}) listening on http://{host}:{port}", flush=True)


async def serve(upstream: str, client_name: ClientName, host: str, port: int) -> None:
    client = make_client(client_name)
    config = uvicorn.Config(
        PassThrough(upstream, client),
        host=host,
        port=port,
        loop="none",  # already on uvloop (see main())
        http="httptools",
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
    )
    server = _Server(config, client_name)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    try:
        await server.serve()
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="the upstream's origin, e.g. http://127.0.0.1:9001")
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp", help="upstream client (default: aiohttp)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port (default: 8090)")
    args = parser.parse_args(argv)

    import uvloop

    uvloop.run(serve(args.upstream, args.client, args.host, args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
