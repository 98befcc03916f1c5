"""The seam between the proxy and an HTTP client library: one `send`, one response shape.

Client adapters translate their library's exceptions into the gateway's `UpstreamError`s here, at
the boundary, so nothing above this package knows which library is underneath.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from gateway.types import Headers


@dataclass(frozen=True, slots=True)
class AttemptTimeouts:
    """The limits of one attempt, already cut down to what the request's deadline leaves."""

    connect_s: float
    first_byte_s: float  # until the response headers
    idle_s: float  # longest silence between body chunks


@dataclass(slots=True)
class UpstreamRequest:
    backend: str  # for error attribution
    method: str
    url: str  # already percent-encoded
    headers: Headers
    body: bytes


class UpstreamResponse(Protocol):
    status: int
    headers: Headers  # as received (original case)

    def chunks(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive; raises UpstreamTimeout past idle_s, UpstreamConnectError on a break."""
        ...

    async def read(self) -> bytes:
        """The whole body (for small JSON answers that the gateway inspects)."""
        ...

    async def aclose(self) -> None:
        """Release the connection: back to the pool when the body was read, else closed."""
        ...


class UpstreamClient(Protocol):
    async def send(self, request: UpstreamRequest, timeouts: AttemptTimeouts) -> UpstreamResponse:
        """Send a request and return once the response headers arrived."""
        ...

    async def aclose(self) -> None: ...
