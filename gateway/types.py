"""Shared vocabulary of the request pipeline; no logic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.context import Reply, RequestContext

Headers = list[tuple[bytes, bytes]]
Clock = Callable[[], float]
Next = Callable[["RequestContext"], Awaitable["Reply"]]


class Stage(Protocol):
    """One step of the request path: do its part, call the rest, see the reply on the way back."""

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply: ...
