"""The access log: sampled, bounded, written in the background, flushed on close."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.accesslog import FIELDS, AccessLog
from gateway.config import AccessLog as AccessLogConfig

pytestmark = pytest.mark.anyio


def entry(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "time": 1700000000.0 + n,
        "request_id": f"req-{n}",
        "method": "POST",
        "path": "/v1/chat/completions",
        "route": "chat",
        "backend": "v1",
        "status": 200,
        "attempts": 1,
        "fallback_reason": None,
        "duration_ms": 12.5,
        "cost_usd": 0.0001,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        **extra,
    }


def values(n: int, **extra: Any) -> tuple[Any, ...]:
    """`entry(n)` as the tuple of FIELDS the gateway hands over (None for what it leaves out)."""
    fields = entry(n, **extra)
    return tuple(fields.get(name) for name in FIELDS)


def log(access: AccessLog, n: int, **extra: Any) -> bool:
    """As the gateway logs a request: a sampling draw, then its values."""
    return access.sampled() and access.record_values(values(n, **extra))


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_entries_are_written_as_json_lines_of_the_known_fields(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)))
    access.start()
    for n in range(3):
        assert log(access, n)
    await access.aclose()
    written = lines(path)
    assert [w["request_id"] for w in written] == ["req-0", "req-1", "req-2"]
    assert list(written[0]) == list(FIELDS)  # FIELDS order, nothing else
    assert written[0]["fallback_reason"] is None and written[0]["status"] == 200
    assert (access.written, access.dropped, access.sampled_out) == (3, 0, 0)


async def test_the_writer_flushes_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)), flush_interval_s=0.01)
    access.start()
    try:
        log(access, 1)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if path.exists() and path.read_bytes():
                break
        assert [w["request_id"] for w in lines(path)] == ["req-1"]
    finally:
        await access.aclose()


async def test_a_full_queue_wakes_the_writer_early(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)), max_queue=4, flush_interval_s=60)
    access.start()
    try:
        for n in range(2):  # half the queue: the writer is woken without waiting for its interval
            log(access, n)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if access.written == 2:
                break
        assert access.written == 2
    finally:
        await access.aclose()


async def test_sampling_uses_the_injected_rng(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path), sample_ratio=0.3), rng=random.Random(42))
    kept = [log(access, n) for n in range(1000)]
    await access.aclose()
    draws = random.Random(42)
    assert kept == [draws.random() < 0.3 for _ in range(1000)]
    assert 250 < sum(kept) < 350
    assert len(lines(path)) == sum(kept) == access.written
    assert access.sampled_out == 1000 - sum(kept)


async def test_ratio_zero_logs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path), sample_ratio=0.0))
    assert not any(log(access, n) for n in range(10))
    await access.aclose()
    assert not path.exists()
    assert access.sampled_out == 10


async def test_a_full_queue_drops_and_counts_and_close_flushes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)), max_queue=5)  # never started: nothing drains
    assert [log(access, n) for n in range(8)] == [True] * 5 + [False] * 3
    assert access.dropped == 3
    assert repr(access) == f"<AccessLog {path} sample=1 queued=5 written=0 dropped=3>"
    await access.aclose()
    assert [w["request_id"] for w in lines(path)] == [f"req-{n}" for n in range(5)]


async def test_without_a_path_entries_go_to_the_access_logger(caplog: pytest.LogCaptureFixture) -> None:
    access = AccessLog(AccessLogConfig())
    access.start()
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        log(access, 7, status=503, upstream_ms=None)
        await access.aclose()
    (record,) = [r for r in caplog.records if r.name == "gateway.access"]
    assert orjson.loads(record.getMessage())["status"] == 503


async def test_a_write_error_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    access = AccessLog(AccessLogConfig(path=str(blocker / "access.jsonl")))
    log(access, 1)
    await access.aclose()
    assert (access.written, access.failed) == (0, 1)


async def test_the_entries_of_one_loop_turn_are_serialized_together_right_after_it(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)))
    access.start()
    row = tuple(range(len(FIELDS)))
    assert access.record_values(row)
    assert access.record_values((2**70, *row[1:]))  # past what JSON numbers carry here: dropped, counted
    assert log(access, 3)
    assert repr(access) == f"<AccessLog {path} sample=1 queued=3 written=0 dropped=0>"
    await asyncio.sleep(0)  # the next turn: one serialization for the three, before any write
    assert access._queue == [
        orjson.dumps(dict(zip(FIELDS, row, strict=True)))
        + b"\n"
        + orjson.dumps(dict(zip(FIELDS, values(3), strict=True)))
    ]
    assert (access.written, access.failed) == (0, 1)
    await access.aclose()
    written = lines(path)
    assert written == [dict(zip(FIELDS, row, strict=True)), dict(zip(FIELDS, values(3), strict=True))]
    assert (access.written, access.failed, access.dropped) == (2, 1, 0)


async def test_a_batch_of_values_is_cut_into_lines_only_between_entries(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)))
    access.start()
    tricky = ['},{"time":1}', "a\nb", '"},\n{"time":', "ünï"]
    rows = [tuple([1700000000.0 + n, tricky[n % 4], *range(len(FIELDS) - 2)]) for n in range(40)]
    for row in rows:
        assert access.record_values(row)
    await access.aclose()
    assert path.read_bytes().count(b"\n") == 40
    assert lines(path) == [dict(zip(FIELDS, row, strict=True)) for row in rows]
    assert (access.written, access.failed) == (40, 0)


async def test_one_bad_value_costs_only_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)))
    access.start()
    rows = [tuple([float(n), f"req-{n}", *range(len(FIELDS) - 2)]) for n in range(5)]
    rows[2] = (2**70, *rows[2][1:])  # orjson takes no integer this large
    for row in rows:
        access.record_values(row)
    await access.aclose()
    assert [w["request_id"] for w in lines(path)] == ["req-0", "req-1", "req-3", "req-4"]
    assert (access.written, access.failed) == (4, 1)


async def test_a_tuple_of_the_wrong_length_is_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)))
    rows = [tuple([float(n), f"req-{n}", *range(len(FIELDS) - 2)]) for n in range(3)]
    rows[1] = rows[1][:-1]
    for row in rows:
        access.record_values(row)
    await access.aclose()
    assert [w["request_id"] for w in lines(path)] == ["req-0", "req-2"]
    assert (access.written, access.failed) == (2, 1)


async def test_entries_arriving_during_a_write_wait_for_the_next_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under steady load the queue never empties: the writer must not chase it one small batch after another."""
    batches: list[int] = []
    write = AccessLog._write

    def slow_write(self: AccessLog, chunks: list[bytes]) -> None:
        batches.append(sum(chunk.count(b"\n") + 1 for chunk in chunks))
        time.sleep(0.005)
        write(self, chunks)

    monkeypatch.setattr(AccessLog, "_write", slow_write)
    path = tmp_path / "access.jsonl"
    access = AccessLog(AccessLogConfig(path=str(path)), flush_interval_s=0.1)
    access.start()
    for n in range(250):  # one entry every 2 ms for half a second
        log(access, n)
        await asyncio.sleep(0.002)
    await access.aclose()
    assert len(lines(path)) == 250
    assert sum(batches) == 250
    assert len(batches) <= 10, batches  # about one per flush interval; chasing the queue made ~80
