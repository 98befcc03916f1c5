"""compose(): stages wrap the rest, gates only look on the way in, and both run in config order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from gateway.context import Reply, RequestContext
from gateway.errors import Unauthorized
from gateway.pipeline import compose
from gateway.types import Next
from tests.context_factory import make_ctx

pytestmark = pytest.mark.anyio


class Recorder:
    """A stage that notes when it ran, on the way in and on the way out."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        self.log.append(f"{self.name} in")
        reply = await call_next(ctx)
        self.log.append(f"{self.name} out")
        return reply


class SyncGate:
    def __init__(self, name: str, log: list[str], refuse: bool = False) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    def enter(self, ctx: RequestContext) -> None:
        self.log.append(self.name)
        if self.refuse:
            raise Unauthorized(f"{self.name} refused")


class WaitingGate:
    """A gate that must wait (as a check against Redis does) before it decides."""

    def __init__(self, name: str, log: list[str], refuse: bool = False) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    def enter(self, ctx: RequestContext) -> Awaitable[None]:
        return self._decide()

    async def _decide(self) -> None:
        await asyncio.sleep(0)
        self.log.append(self.name)
        if self.refuse:
            raise Unauthorized(f"{self.name} refused")


def terminal(log: list[str]) -> Next:
    async def call(ctx: RequestContext) -> Reply:
        log.append("upstream")
        return Reply(status=200, headers=[], body=b"ok")

    return call


async def test_gates_and_stages_run_in_order_and_stages_see_the_reply() -> None:
    log: list[str] = []
    handler = compose(
        [Recorder("outer", log), SyncGate("a", log), WaitingGate("b", log), SyncGate("c", log), Recorder("inner", log)],
        terminal(log),
    )
    reply = await handler(make_ctx())
    assert reply.status == 200
    assert log == ["outer in", "a", "b", "c", "inner in", "upstream", "inner out", "outer out"]


async def test_gates_that_decide_at_once_add_no_coroutine() -> None:
    log: list[str] = []
    inner = terminal(log)
    handler = compose([SyncGate("a", log), SyncGate("b", log)], inner)
    pending = handler(make_ctx())
    # What comes back is the terminal's own coroutine: the gates are not in the await chain.
    assert getattr(pending, "cr_code", None) is getattr(inner, "__code__", None)
    await pending
    assert log == ["a", "b", "upstream"]


@pytest.mark.parametrize("gate", [SyncGate, WaitingGate])
async def test_a_refusing_gate_stops_the_request_and_the_stage_around_it_sees_the_error(gate: type) -> None:
    log: list[str] = []
    seen: list[str] = []

    class Outer:
        async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
            try:
                return await call_next(ctx)
            except Unauthorized as exc:
                seen.append(exc.detail)
                raise

    handler = compose([Outer(), gate("guard", log, refuse=True), SyncGate("after", log)], terminal(log))
    with pytest.raises(Unauthorized):
        await handler(make_ctx())
    assert log == ["guard"]  # neither the next gate nor the upstream ran
    assert seen == ["guard refused"]
