"""An in-process gateway for unit tests: the real DataPlane over ASGI, a MockTransport as the backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from gateway.loader import parse_config
from gateway.proxy import DataPlane
from gateway.runtime import RuntimeHolder, Shared
from gateway.upstream import make_client

Handler = Callable[[httpx.Request], httpx.Response]


@asynccontextmanager
async def inprocess_gateway(
    config_yaml: str, handler: Handler, client_ip: str = "10.1.2.3"
) -> AsyncIterator[httpx.AsyncClient]:
    config = parse_config(config_yaml, env={})
    upstream = make_client(config.upstream, transport=httpx.MockTransport(handler))
    shared = Shared(upstream)
    holder = RuntimeHolder(config, shared, None)
    app = DataPlane(holder, shared.tasks)
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client
    finally:
        await upstream.aclose()


def seen(requests: list[httpx.Request]) -> Handler:
    """A backend that records each request and echoes it back as JSON."""

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body: dict[str, Any] = {
            "method": request.method,
            "url": str(request.url),
            "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
            "body": request.content.decode(),
        }
        return httpx.Response(200, json=body, headers={"x-upstream": request.url.host})

    return handle
