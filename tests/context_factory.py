"""A RequestContext for unit tests of one stage."""

from __future__ import annotations

from typing import Any

from gateway.config import Telemetry
from gateway.context import RequestContext
from gateway.tracing import Tracing

_TRACING = Tracing(Telemetry())


def make_ctx(
    headers: list[tuple[bytes, bytes]] | None = None, document: Any = None, path: str = "/v1"
) -> RequestContext:
    headers = headers or []
    return RequestContext(
        request_id="req-1",
        received_at=0.0,
        method="POST",
        path=path,
        raw_path=path.encode(),
        query=b"",
        headers=headers,
        client_ip="127.0.0.1",
        scheme="http",
        trace=_TRACING.start_request("POST", path, "http", headers, "127.0.0.1"),
        document=document,
    )
