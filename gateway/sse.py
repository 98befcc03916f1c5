"""Incremental Server-Sent Events parsing (WHATWG HTML, "server-sent events"), for pass-through.

Bytes come in arbitrary pieces; complete events come out. Lines end in CRLF, LF or CR; an event
is dispatched at a blank line; `data` lines are joined with LF; lines starting with ':' are
comments (kept, so keep-alive comments still reach the client).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SseEvent:
    data: str = ""
    event: str | None = None
    id: str | None = None
    retry: str | None = None
    comment: bool = False  # a comment-only block (e.g. ": keep-alive")

    def encode(self) -> bytes:
        if self.comment:
            return b": " + self.data.encode() + b"\n\n"
        lines = []
        if self.event is not None:
            lines.append("event: " + self.event)
        if self.id is not None:
            lines.append("id: " + self.id)
        if self.retry is not None:
            lines.append("retry: " + self.retry)
        lines.extend("data: " + line for line in self.data.split("\n"))
        return ("\n".join(lines) + "\n\n").encode()


class SseParser:
    """Feed bytes, get complete events; `pending` tells whether a partial event is buffered."""

    __slots__ = ("_buffer", "_data", "_event", "_id", "_retry", "_has_fields", "_comment")

    def __init__(self) -> None:
        self._buffer = b""
        self._reset()

    def _reset(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: str | None = None
        self._has_fields = False
        self._comment: str | None = None

    @property
    def pending(self) -> bool:
        return bool(self._buffer) or self._has_fields

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buffer = self._buffer + chunk
        events: list[SseEvent] = []
        start = 0
        length = len(buffer)
        while start < length:
            end, step = _line_end(buffer, start)
            if end < 0:
                break
            if buffer[end : end + 1] == b"\r" and end + 1 == length:
                break  # a CR at the very end may be the first half of a CRLF: wait for more bytes
            line = buffer[start:end]
            start = end + step
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buffer = buffer[start:]
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        if not raw:
            if not self._has_fields:
                if self._comment is not None:
                    comment = SseEvent(data=self._comment, comment=True)
                    self._comment = None
                    return comment
                return None
            event = SseEvent("\n".join(self._data), self._event, self._id, self._retry)
            self._reset()
            return event
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            if not self._has_fields:
                self._comment = line[1:].lstrip(" ")
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        elif name == "retry":
            self._retry = value
        else:
            return None  # unknown fields are ignored, as the spec says
        self._has_fields = True
        return None


def _line_end(buffer: bytes, start: int) -> tuple[int, int]:
    """Index of the next line terminator at or after `start` and its length; (-1, 0) when none."""
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
    if cr >= 0:
        return (cr, 2) if buffer[cr + 1 : cr + 2] == b"\n" else (cr, 1)
    return (lf, 1) if lf >= 0 else (-1, 0)
