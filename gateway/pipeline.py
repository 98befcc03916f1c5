"""Composing stages into one handler: starlette's reversed loop, Envoy's filter order."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from gateway.types import Next, Stage


def compose(stages: Sequence[Stage], terminal: Next) -> Next:
    """Stages run in order on the way in and in reverse on the way out; `terminal` calls the upstream.

    Each stage is bound with `functools.partial`, not a wrapper coroutine, so the chain adds no
    frames: every resumption of a request's task walks the whole await chain, so depth costs.
    """
    handler = terminal
    for stage in reversed(stages):
        handler = functools.partial(stage.__call__, call_next=handler)
    return handler
