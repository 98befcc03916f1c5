"""Composing stages into one handler: starlette's reversed loop, Envoy's filter order."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Sequence

from gateway.context import Reply, RequestContext
from gateway.types import Gate, Next, Stage


def compose(steps: Sequence[Stage | Gate], terminal: Next) -> Next:
    """Steps run in order on the way in, stages in reverse on the way out; `terminal` calls the upstream.

    Every resumption of a request's task walks its whole await chain, so depth costs. Each stage is
    bound with `functools.partial`, not a wrapper coroutine, and adds one frame; a run of gates adds
    none when they decide at once (see `_Gates`).
    """
    handler = terminal
    gates: list[Gate] = []
    for step in reversed(steps):
        if isinstance(step, Gate):
            gates.insert(0, step)
            continue
        if gates:
            handler, gates = _Gates(gates, handler), []
        handler = functools.partial(step.__call__, call_next=handler)
    return _Gates(gates, handler) if gates else handler


class _Gates:
    """Gates ahead of the rest of the pipeline, as one `Next`.

    A plain function, not a coroutine: when every gate decides at once, it returns the next step's
    coroutine for the caller to await, and stays out of the await chain. A refusal raises from the
    call itself, which the caller's `await` expression sees just as it would a raise inside the coroutine.
    """

    __slots__ = ("_enters", "_next")

    def __init__(self, gates: Sequence[Gate], call_next: Next) -> None:
        self._enters = tuple(gate.enter for gate in gates)
        self._next = call_next

    def __call__(self, ctx: RequestContext) -> Awaitable[Reply]:
        enters = self._enters
        for enter in enters:
            pending = enter(ctx)
            if pending is not None:  # rare: look up where to go on only then
                return self._after(pending, enters.index(enter) + 1, ctx)
        return self._next(ctx)

    async def _after(self, pending: Awaitable[None], index: int, ctx: RequestContext) -> Reply:
        """The rest, once a gate needed to wait: from here on this does sit in the await chain."""
        await pending
        for enter in self._enters[index:]:
            pending_next = enter(ctx)
            if pending_next is not None:
                await pending_next
        return await self._next(ctx)
