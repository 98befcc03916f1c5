"""The access log: one JSON line per request, sampled, written off the request's critical path.

A request pays for a sampling draw and an append to a bounded queue: the gateway queues its entry as a
tuple of plain values (`record_values`), and the writer's thread serializes a batch of them with
orjson, in a warm loop (one entry serialized per request cost several times as much per entry).
`record(entry)` takes a mapping, serialized at once. Neither blocks nor raises; when the queue is full
the entry is dropped and counted. A background task (`start()`) drains the queue every
`flush_interval_s` (sooner when it fills up) and writes it in a worker thread, to the configured file
(appending) or to the `gateway.access` logger. `aclose()` stops the task and writes what is left.

Only the fields in `FIELDS` are written, in that order: never headers, bodies, keys or prompts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.config import AccessLog as AccessLogConfig

__all__ = ["FIELDS", "AccessLog"]

log = logging.getLogger("gateway")
access_logger = logging.getLogger("gateway.access")

FIELDS = (
    "time",  # unix seconds
    "request_id",
    "trace_id",
    "method",
    "path",
    "route",
    "backend",
    "status",
    "attempts",
    "fallback_reason",
    "error_type",
    "duration_ms",
    "upstream_ms",
    "ttft_ms",
    "stream",
    "canary",
    "cost_usd",
    "cost_estimated",
    "input_tokens",
    "output_tokens",
    "tenant",
    "client_ip",
)


class AccessLog:
    """The access-log writer for one process. `rng` draws the sampling decisions (inject a seeded one in tests)."""

    def __init__(
        self,
        config: AccessLogConfig,
        *,
        rng: random.Random | None = None,
        max_queue: int = 10_000,
        flush_interval_s: float = 0.2,
        logger: logging.Logger = access_logger,
    ) -> None:
        self.path = Path(config.path) if config.path else None
        self.sample_ratio = config.sample_ratio
        self.keeps_all = self.sample_ratio >= 1.0 and self.path is not None  # `sampled()` would say True
        self._random = (rng or random.Random()).random
        self._max_queue = max_queue
        self._wake_at = max(1, max_queue // 2)
        self._interval = flush_interval_s
        self._logger = logger
        self._queue: list[bytes | tuple[Any, ...]] = []  # serialized lines, or `record_values` tuples
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._file: IO[bytes] | None = None
        self.written = 0
        self.dropped = 0  # the queue was full
        self.sampled_out = 0
        self.failed = 0  # lost to a write error
        self._complained_at = -60.0

    def sampled(self) -> bool:
        """Draw whether this request is logged, before its entry is built (then `record(..., drawn=True)`).

        False also when nothing would come out: no file and the `gateway.access` logger is off.
        """
        ratio = self.sample_ratio
        if (ratio < 1.0 and (ratio <= 0.0 or self._random() >= ratio)) or (
            self.path is None and not self._logger.isEnabledFor(logging.INFO)
        ):
            self.sampled_out += 1
            return False
        return True

    def record(self, entry: Mapping[str, Any], *, drawn: bool = False) -> bool:
        """Queue one request's entry (sampled, unless `drawn` says `sampled()` already decided); True when
        it was queued. Never blocks, never raises."""
        if not drawn and not self.sampled():
            return False
        try:
            line = _line(entry)
        except Exception as exc:  # an unserializable value: drop the entry
            self.failed += 1
            log.error("cannot serialize an access-log entry: %s", exc)
            return False
        return self._queued(line)

    def record_values(self, values: tuple[Any, ...]) -> bool:
        """Queue the gateway's own entry, already sampled: the values of `FIELDS`, in that order. The
        writer's thread serializes it with the rest of its batch: a tuple of plain values is cheap to
        build and to keep, and a batch serializes in a warm loop, where one entry per request did not."""
        return self._queued(values)

    def _queued(self, entry: bytes | tuple[Any, ...]) -> bool:
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            return False
        queue.append(entry)
        if len(queue) == self._wake_at:
            self._wake.set()
        return True

    def start(self) -> None:
        """Start the background writer (call from the running event loop, e.g. in lifespan startup)."""
        if self._task is None:
            self._stopping = False
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="access-log writer")

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop the writer after it wrote everything still queued (bounded by `timeout_s`); close the file."""
        task = self._task
        self._task = None
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(task if task is not None else self._flush(until_empty=True), timeout_s)
        except TimeoutError:
            log.warning("the access log did not flush within %.1fs; %d entries lost", timeout_s, len(self._queue))
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self._flush()
        await self._flush(until_empty=True)  # what arrived while stopping

    async def _flush(self, *, until_empty: bool = False) -> None:
        """Write what is queued now, as one batch; `until_empty`: also what arrives meanwhile. Under load
        the queue never empties, and chasing it wrote batches of a few entries, each paying a trip to the
        worker thread; what arrives during a write waits for the next wake-up instead."""
        while self._queue:
            entries, self._queue = self._queue, []  # taken whole: the queue may hold `max_queue` more meanwhile
            try:
                unserializable = await asyncio.to_thread(self._write, entries)
            except Exception as exc:  # a full disk must not take the gateway down; say so (once a minute), go on
                self.failed += len(entries)
                now = time.monotonic()
                if now - self._complained_at >= 60.0:
                    self._complained_at = now
                    log.error("cannot write the access log (%d lines lost so far): %s", self.failed, exc)
            else:
                self.failed += unserializable
                self.written += len(entries) - unserializable
            if not until_empty:
                return

    def _write(self, entries: list[bytes | tuple[Any, ...]]) -> int:
        """Runs in a worker thread. The number of entries left out because they could not be serialized."""
        if not entries:
            return 0
        text = _batch_text(entries)
        if text is None:
            lines = list(_each_line(entries))
            if not lines:
                return len(entries)
            text, written = b"\n".join(lines), len(lines)
        else:
            written = len(entries)
        if self.path is None:  # one record per batch: the logger's cost is per call, not per line
            self._logger.info(text.decode())
        else:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab")
            self._file.write(text + b"\n")
            self._file.flush()
        return len(entries) - written

    def __repr__(self) -> str:
        target = str(self.path) if self.path else "logger gateway.access"
        return (
            f"<AccessLog {target} sample={self.sample_ratio:g} queued={len(self._queue)} "
            f"written={self.written} dropped={self.dropped}>"
        )


def _line(entry: Mapping[str, Any]) -> bytes:
    """The entry's `FIELDS`, in that order, as one JSON object; any other key is left out."""
    return orjson.dumps({key: entry[key] for key in FIELDS if key in entry}, default=str)


# An entry as orjson serializes fastest: a dataclass instance with a __dict__, whose attributes it writes
# in field order. Built from a `record_values` tuple in the writer's thread, it costs a quarter of a dict
# of the same 22 keys (a dict grows as it fills; an instance's attributes share one set of keys).
_Entry = dataclasses.make_dataclass("_Entry", FIELDS)

_NEXT_ENTRY = b',{"%s":' % FIELDS[0].encode()  # between two entries of a serialized list, and nowhere else


def _batch_text(entries: list[bytes | tuple[Any, ...]]) -> bytes | None:
    """A batch of `record_values` tuples as JSON lines, from one orjson call: a list of objects, cut
    where one object ends and the next begins. Every object starts with the key FIELDS[0], and inside
    a string orjson escapes every quote, so `},{"time":` occurs only there. None when the batch holds
    something else, or a value orjson cannot take: `_each_line` then goes entry by entry."""
    if not all(isinstance(entry, tuple) for entry in entries):
        return None
    try:
        text = orjson.dumps([_Entry(*entry) for entry in entries], default=str)  # too few or too many values raise
    except Exception:
        return None
    return text[1:-1].replace(b"}" + _NEXT_ENTRY, b"}\n" + _NEXT_ENTRY[1:])


def _each_line(entries: list[bytes | tuple[Any, ...]]) -> Iterator[bytes]:
    """The entries one by one, leaving out (and logging) any that cannot be serialized."""
    for entry in entries:
        if isinstance(entry, tuple):
            try:
                entry = orjson.dumps(_Entry(*entry), default=str)
            except Exception as exc:
                log.error("cannot serialize an access-log entry: %s", exc)
                continue
        yield entry
