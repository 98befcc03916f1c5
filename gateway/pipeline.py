"""Composing stages into one handler: starlette's reversed loop, Envoy's filter order."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.context import Reply, RequestContext
from gateway.types import Next, Stage


def compose(stages: Sequence[Stage], terminal: Next) -> Next:
    """Stages run in order on the way in and in reverse on the way out; `terminal` calls the upstream."""
    handler = terminal
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage, call_next: Next) -> Next:
    async def handle(ctx: RequestContext) -> Reply:
        return await stage(ctx, call_next)

    return handle
