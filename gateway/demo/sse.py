"""Server-sent events: write a stream event by event, with the stream faults.

`stall`, `cut` and `malformed_event` act after `after_events` events (the role chunk counts as one;
`data: [DONE]` too). `no_done` leaves `data: [DONE]` out. Events are written one `write` each, spaced by
the interval, so a client sees the first one before the last is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from aiohttp import web

from gateway.demo.behaviour import Behaviour
from gateway.demo.faults import MALFORMED_JSON, hang_up, pause
from gateway.demo.responses import SSE_HEADERS

__all__ = ["DONE", "MALFORMED_EVENT", "event", "send_events"]

DONE = b"data: [DONE]\n\n"
MALFORMED_EVENT = b"data: " + MALFORMED_JSON + b"\n\n"
_FAULTS = frozenset({"stall", "cut", "malformed_event"})


def event(data: object) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def send_events(
    request: web.Request, events: Sequence[bytes], behaviour: Behaviour, interval_s: float
) -> web.StreamResponse:
    """Stream `events` then `data: [DONE]` as `text/event-stream`."""
    mode = behaviour.mode
    if mode != "no_done":
        events = [*events, DONE]
    fault_at = behaviour.after_events if mode in _FAULTS else -1
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)  # a StreamResponse sends its headers now, before any event
    for i, data in enumerate(events):
        if i == fault_at:
            await _fault(request, response, behaviour)
        if interval_s and i:
            await asyncio.sleep(interval_s)
        await response.write(data)
    if fault_at >= len(events):
        await _fault(request, response, behaviour)
    await response.write_eof()
    return response


async def _fault(request: web.Request, response: web.StreamResponse, behaviour: Behaviour) -> None:
    mode = behaviour.mode
    if mode == "cut":
        hang_up(request, rst=behaviour.rst is True)
    elif mode == "stall":
        await pause(behaviour.delay_ms)
    else:
        await response.write(MALFORMED_EVENT)
