"""Upstream HTTP clients behind one small interface (`UpstreamClient`)."""

from __future__ import annotations

import httpx

from gateway.config import Upstream
from gateway.upstream.base import AttemptTimeouts, UpstreamClient, UpstreamRequest, UpstreamResponse

__all__ = ["AttemptTimeouts", "UpstreamClient", "UpstreamRequest", "UpstreamResponse", "make_client"]


def make_client(settings: Upstream, transport: httpx.AsyncBaseTransport | None = None) -> UpstreamClient:
    """The configured client; a given httpx transport (tests) always means the httpx client."""
    if settings.client == "h1" and transport is None:
        from gateway.upstream.h1_client import H1Client

        return H1Client(settings)
    if settings.client == "aiohttp" and transport is None:
        from gateway.upstream.aiohttp_client import AiohttpClient

        return AiohttpClient(settings)
    from gateway.upstream.httpx_client import HttpxClient

    return HttpxClient(settings, transport)
