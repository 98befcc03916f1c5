"""What a demo server saw: request counts per path and the last requests, for tests to assert on.

Recording costs a counter increment and one append on the request path; headers and bodies are kept
as the raw bytes aiohttp already holds and decoded only when `GET /control/stats` asks.
Timestamps are `time.monotonic()` (CLOCK_MONOTONIC on Linux, comparable across processes of one host)
and `time.time()`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["HISTORY", "Arrival", "Recorder", "decode_headers"]

HISTORY = 50
BODY_LIMIT = 65536  # characters of a recorded body shown by the stats endpoint

RawHeaders = tuple[tuple[bytes, bytes], ...]


def decode_headers(raw: RawHeaders) -> list[list[str]]:
    """Headers as `[name, value]` pairs in arrival order, names lower-cased (latin-1, as HTTP/1.1 defines)."""
    return [[name.decode("latin-1").lower(), value.decode("latin-1")] for name, value in raw]


@dataclass(slots=True)
class Arrival:
    seq: int
    method: str
    path: str
    query: str
    monotonic: float
    time: float
    headers: RawHeaders
    body: bytes
    mode: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "monotonic": self.monotonic,
            "time": self.time,
            "headers": decode_headers(self.headers),
            "body": self.body[:BODY_LIMIT].decode("utf-8", "replace"),
            "mode": self.mode,
        }


class Recorder:
    """Counts requests per path and keeps the last `HISTORY` non-probe requests.

    `total` counts the non-probe requests (what the tests mean by "requests the backend saw"); `probes` the
    health and metadata requests; `paths` both, per path.
    """

    __slots__ = ("_counts", "_probes", "_recent", "_seq")

    def __init__(self, history: int = HISTORY) -> None:
        self._counts: dict[str, int] = {}
        self._recent: deque[Arrival] = deque(maxlen=history)
        self._seq = 0  # non-probe requests
        self._probes = 0

    def __repr__(self) -> str:
        return f"<Recorder requests={self._seq} probes={self._probes}>"

    def record(
        self, method: str, path: str, query: str, headers: RawHeaders, body: bytes, mode: str, probe: bool
    ) -> None:
        counts = self._counts
        counts[path] = counts.get(path, 0) + 1
        if probe:
            self._probes += 1
            return
        self._seq += 1
        self._recent.append(Arrival(self._seq, method, path, query, time.monotonic(), time.time(), headers, body, mode))

    def clear(self) -> None:
        self._counts.clear()
        self._recent.clear()
        self._seq = 0
        self._probes = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self._seq,
            "probes": self._probes,
            "paths": dict(self._counts),
            "requests": [arrival.to_json() for arrival in self._recent],
        }
