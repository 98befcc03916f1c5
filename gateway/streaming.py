"""The stream guard: passes an SSE answer on event by event and never lets a broken one look complete.

- a break (reset, incomplete body) or a silence past `idle_s` ends the client's stream with a final
  `event: error` naming the reason and the request id, never with `[DONE]`;
- a stream that ends cleanly after its final chunk (`finish_reason` set) but without `[DONE]` gets it;
- malformed events (data that is not JSON, or that breaks the chunk contract) are dropped and counted;
- the usage-only chunk the gateway asked for is hidden from a client that did not ask for it;
- with a `resume` callback, a chat stream broken mid-answer continues on another backend from the
  text already delivered, spliced into the same client stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import FieldError, UpstreamError
from gateway.forward import StreamStart
from gateway.sse import SseEvent, SseParser

log = logging.getLogger("gateway")

DONE = b"data: [DONE]\n\n"
ChunkCheck = Callable[[Any], list[FieldError]]
Resume = Callable[[str, str], Awaitable[StreamStart | None]]  # (text delivered, failure) -> continuation


@dataclass(slots=True)
class StreamState:
    """What the guard learned from the events it passed on (read by accounting afterwards)."""

    hide_usage: bool = False
    stream_id: str | None = None
    text: list[str] = field(default_factory=list)  # choice 0's content deltas, for resume and estimates
    finished: bool = False  # a chunk carried finish_reason
    done: bool = False  # [DONE] was passed on
    usage: dict[str, Any] | None = None
    dropped: int = 0  # malformed or contract-breaking events
    violations: list[FieldError] = field(default_factory=list)
    error: str | None = None  # why the stream was cut short, if it was
    first_event_at: float | None = None
    resumed_on: list[str] = field(default_factory=list)

    @property
    def delivered_text(self) -> str:
        return "".join(self.text)


class StreamGuard:
    def __init__(
        self,
        request_id: str,
        state: StreamState,
        check: ChunkCheck | None = None,
        resume: Resume | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._request_id = request_id
        self.state = state
        self._check = check
        self._resume = resume
        self._clock = clock

    async def run(self, start: StreamStart) -> AsyncIterator[bytes]:
        continuations: list[StreamStart] = []
        try:
            async for piece in self._run(start, continuations):
                yield piece
        finally:
            for continuation in continuations:  # the first upstream is the writer's to close
                await continuation.response.aclose()

    async def _run(self, start: StreamStart, continuations: list[StreamStart]) -> AsyncIterator[bytes]:
        state = self.state
        parser, chunks, events = start.parser, start.chunks, start.first_events
        splicing = False
        state.first_event_at = self._clock()
        while True:
            for event in events:
                out = self._accept(event, splicing)
                if out:
                    yield out
                if state.done:
                    return
            failure = await self._next(chunks, parser)
            if isinstance(failure, list):
                events = failure
                continue
            if failure is None:  # a clean end of the body
                if state.finished:
                    state.done = True
                    yield DONE
                    return
                failure = "the stream ended before its final chunk"
            if self._resume is not None and not state.finished:
                continuation = await self._resume(state.delivered_text, failure)
                if continuation is not None:
                    continuations.append(continuation)
                    state.resumed_on.append(failure)
                    log.info("request %s: stream resumed after: %s", self._request_id, failure)
                    parser, chunks, events = continuation.parser, continuation.chunks, continuation.first_events
                    splicing = True
                    continue
            state.error = failure
            log.warning("request %s: stream cut short: %s", self._request_id, failure)
            yield self._error_event(failure)
            return

    async def _next(self, chunks: AsyncIterator[bytes], parser: SseParser) -> list[SseEvent] | str | None:
        """The next events; a failure message when the stream broke; None at a clean end of the body."""
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return "the stream ended in the middle of an event" if parser.pending else None
        except UpstreamError as exc:
            return exc.detail
        return parser.feed(chunk)

    def _accept(self, event: SseEvent, splicing: bool) -> bytes | None:
        """The bytes to pass on for one event, or None to drop it."""
        state = self.state
        if event.comment:
            return event.encode()
        if event.data == "[DONE]":
            if not state.finished:
                return None  # a [DONE] without a final chunk would pass a truncated answer off as whole
            state.done = True
            return DONE
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            state.dropped += 1
            return None
        if self._check is not None:
            problems = self._check(chunk)
            if problems:
                state.dropped += 1
                state.violations.extend(problems)
                return None
        if not isinstance(chunk, dict):
            return event.encode()
        changed = False
        usage = chunk.get("usage")
        if usage:
            state.usage = usage
        choices = chunk.get("choices")
        if isinstance(choices, list):
            if not choices and usage and state.hide_usage:
                return None
            for choice in choices:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    content = delta.get("content")
                    if splicing and "role" in delta and not content and not delta.get("tool_calls"):
                        return None  # the continuation's opening role delta: the client already had one
                    if isinstance(content, str) and content:
                        state.text.append(content)
                if choice.get("finish_reason"):
                    state.finished = True
        if state.stream_id is None:
            state.stream_id = chunk.get("id")
        elif splicing and chunk.get("id") != state.stream_id:
            chunk["id"] = state.stream_id  # one answer, one id, whichever backend wrote this part
            changed = True
        if changed or event.event is not None or event.id is not None:
            return SseEvent(orjson.dumps(chunk).decode() if changed else event.data, event.event, event.id).encode()
        return b"data: " + event.data.encode() + b"\n\n"

    def _error_event(self, reason: str) -> bytes:
        payload = {
            "error": {
                "message": f"the upstream stream failed: {reason}",
                "type": "upstream_error",
                "code": "stream_interrupted",
                "request_id": self._request_id,
            }
        }
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
