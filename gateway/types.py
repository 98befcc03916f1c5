"""Shared vocabulary of the request pipeline; no logic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.context import Reply, RequestContext

Headers = list[tuple[bytes, bytes]]
Clock = Callable[[], float]
Next = Callable[["RequestContext"], Awaitable["Reply"]]


class Stage(Protocol):
    """One step of the request path: do its part, call the rest, see the reply on the way back."""

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply: ...


@runtime_checkable
class Gate(Protocol):
    """A step that only looks at the request on its way in and never sees the reply: it notes what it
    found on the context, or raises to refuse. None when it decided at once; else an awaitable that
    decides (a check that needs a round trip)."""

    def enter(self, ctx: RequestContext) -> Awaitable[None] | None: ...
