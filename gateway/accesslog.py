"""The access log: one JSON line per request, sampled, written off the request's critical path.

A request pays for a sampling draw and an append: the gateway hands over its entry as a tuple of plain
values (`record_values`), and the entries of one event-loop turn are serialized together early in the
next, while they are still in the CPU's caches (one entry serialized per request cost several times as
much per entry; a batch kept for the writer's thread was cold when it got there).
It never blocks nor raises; when `max_queue` entries wait, the next is dropped and counted. A
background task (`start()`) writes what waits every `flush_interval_s` (sooner when half the queue is
full) in a worker thread, to the configured file (appending) or to the `gateway.access` logger.
`aclose()` stops the task and writes what is left.

Only the fields in `FIELDS` are written, in that order: never headers, bodies, keys or prompts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Iterator
from itertools import starmap
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
        self._fresh: list[tuple[Any, ...]] = []  # this loop turn's `record_values` entries
        self._queue: list[bytes] = []  # serialized lines, one or more to an item
        self._waiting = 0  # entries in `_fresh` and `_queue`
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._file: IO[bytes] | None = None
        self.written = 0
        self.dropped = 0  # the queue was full
        self.sampled_out = 0
        self.failed = 0  # unserializable, or lost to a write error
        self._complained_at = -60.0

    def sampled(self) -> bool:
        """Draw whether this request is logged, before its entry is built (then `record_values`).

        False also when nothing would come out: no file and the `gateway.access` logger is off.
        """
        ratio = self.sample_ratio
        if (ratio < 1.0 and (ratio <= 0.0 or self._random() >= ratio)) or (
            self.path is None and not self._logger.isEnabledFor(logging.INFO)
        ):
            self.sampled_out += 1
            return False
        return True

    def record_values(self, values: tuple[Any, ...]) -> bool:
        """Queue the gateway's own entry, already sampled: the values of `FIELDS`, in that order. It is
        serialized with the other entries of this event-loop turn, soon after it ends."""
        if self._waiting >= self._max_queue:
            self.dropped += 1
            return False
        self._waiting += 1
        if self._waiting == self._wake_at:
            self._wake.set()
        fresh = self._fresh
        if not fresh:
            try:
                asyncio.get_running_loop().call_soon(self._serialize)
            except RuntimeError:  # no event loop: `_flush` serializes it
                pass
        fresh.append(values)
        return True

    def _serialize(self) -> None:
        """The fresh entries as JSON lines, queued for the writer; unserializable ones are counted and left out."""
        fresh, self._fresh = self._fresh, []
        if not fresh:
            return
        text = _batch_text(fresh)
        if text is None:
            lines = list(_each_line(fresh))
            self.failed += len(fresh) - len(lines)
            self._waiting -= len(fresh) - len(lines)
            if not lines:
                return
            text = b"\n".join(lines)
        self._queue.append(text)

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
            log.warning("the access log did not flush within %.1fs; %d entries lost", timeout_s, self._waiting)
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
        """Write what waits now, as one batch; `until_empty`: also what arrives meanwhile. Under load the
        queue never empties, and chasing it wrote batches of a few entries, each paying a trip to the
        worker thread; what arrives during a write waits for the next wake-up instead."""
        self._serialize()
        while self._queue:
            chunks, self._queue = self._queue, []
            entries = self._waiting - len(self._fresh)  # every serialized entry waiting is in `chunks`
            self._waiting -= entries
            try:
                await asyncio.to_thread(self._write, chunks)
            except Exception as exc:  # a full disk must not take the gateway down; say so (once a minute), go on
                self.failed += entries
                now = time.monotonic()
                if now - self._complained_at >= 60.0:
                    self._complained_at = now
                    log.error("cannot write the access log (%d lines lost so far): %s", self.failed, exc)
            else:
                self.written += entries
            if not until_empty:
                return
            self._serialize()

    def _write(self, chunks: list[bytes]) -> None:
        """Runs in a worker thread."""
        if self.path is None:  # one record per batch: the logger's cost is per call, not per line
            self._logger.info(b"\n".join(chunks).decode())
        else:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab")
            self._file.write(b"\n".join([*chunks, b""]))  # the last line's newline too, without another copy
            self._file.flush()

    def __repr__(self) -> str:
        target = str(self.path) if self.path else "logger gateway.access"
        return (
            f"<AccessLog {target} sample={self.sample_ratio:g} queued={self._waiting} "
            f"written={self.written} dropped={self.dropped}>"
        )


# An entry as orjson serializes fastest: a dataclass instance with a __dict__, whose attributes it writes
# in field order. Built from a `record_values` tuple when a loop turn's entries are serialized, it costs
# a quarter of a dict of the same 22 keys (a dict grows as it fills; an instance's attributes share one
# set of keys).
_Entry = dataclasses.make_dataclass("_Entry", FIELDS)


def _batch_text(entries: list[tuple[Any, ...]]) -> bytes | None:
    """`record_values` tuples as JSON lines, one orjson call each, driven from C (`map`): 1.3k instructions
    an entry fewer than one call for the whole list cut into lines, in batches of six. None when a value
    is not one orjson writes natively (or a tuple has too few or too many): `_each_line` then goes entry
    by entry, writing such values with `str` and leaving out what still fails."""
    try:
        return b"\n".join(map(orjson.dumps, starmap(_Entry, entries)))
    except Exception:
        return None


def _each_line(entries: list[tuple[Any, ...]]) -> Iterator[bytes]:
    """The entries one by one, leaving out (and logging) any that cannot be serialized."""
    for entry in entries:
        try:
            yield orjson.dumps(_Entry(*entry), default=str)
        except Exception as exc:
            log.error("cannot serialize an access-log entry: %s", exc)
