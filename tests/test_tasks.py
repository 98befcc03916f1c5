"""AfterResponse: requests' after-response work, batched per event-loop turn."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Callable

import pytest

from gateway.tasks import AfterResponse

pytestmark = pytest.mark.anyio


async def test_work_deferred_in_one_turn_runs_in_order_early_in_the_next() -> None:
    after = AfterResponse()
    ran: list[str] = []
    after.defer([lambda: ran.append("a1"), lambda: ran.append("a2")])
    after.defer([lambda: ran.append("b")])
    assert ran == []  # not while the responses are still being written
    await asyncio.sleep(0)
    assert ran == ["a1", "a2", "b"]
    after.defer([lambda: ran.append("c")])  # a later turn gets its own run
    await asyncio.sleep(0)
    assert ran == ["a1", "a2", "b", "c"]


async def test_one_failing_callback_is_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    after = AfterResponse()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    after.defer([broken, lambda: ran.append("same request")])
    after.defer([lambda: ran.append("next request")])
    with caplog.at_level(logging.ERROR, logger="gateway"):
        await asyncio.sleep(0)
    assert ran == ["same request", "next request"]
    assert "after-response work failed" in caplog.text


class _Request:  # as a RequestContext: it holds the list of callbacks, which close over it
    def __init__(self, ran: list[_Request]) -> None:
        self.callbacks: list[Callable[[], None]] = [lambda: ran.append(self)]


async def test_run_callbacks_are_dropped_so_what_they_close_over_is_freed_without_the_cyclic_gc() -> None:
    after = AfterResponse()
    ran: list[_Request] = []
    request = _Request(ran)
    gone = weakref.ref(request)
    gc.disable()
    try:
        after.defer(request.callbacks)
        await asyncio.sleep(0)
        assert ran == [request] and request.callbacks == []
        ran.clear()
        del request
        assert gone() is None  # freed by refcounting, with the cyclic GC off
    finally:
        gc.enable()
