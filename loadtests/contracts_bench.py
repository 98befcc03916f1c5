"""Micro-benchmark of contract validation: the cost the request path pays per body.

    python -m loadtests.contracts_bench            # about 10 s
    python -m loadtests.contracts_bench --quick    # a few seconds, to check that everything works

Times `Schema.violations` on a typical chat request, a 100-row KServe v2 request ([100, 8] FP32, flat
and nested), an invalid chat request (the error-collection path), one SSE chunk parsed from bytes, and
`apply_defaults`. Each figure is the median (and 90th percentile) of per-call times, each sample the
mean of a batch of calls sized to take about a millisecond, with the garbage collector off as timeit does.
Targets: a chat request in 50 us or less, a 100-row KServe request in 300 us or less. Exits 1 if one is missed.

The candidates table compares the validators themselves (`is_valid` on the same builtin schemas):
jsonschema-rs, which the gateway uses, and the pure-Python jsonschema when it is installed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from gateway.contracts import Direction, Schema, load_schema

HERE = Path(__file__).resolve().parent
CHAT_TARGET_US = 50.0
KSERVE_TARGET_US = 300.0

CHAT: dict[str, Any] = {
    "model": "small-chat",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer in one short paragraph."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And what is its population, roughly?"},
    ],
    "temperature": 0.7,
    "max_tokens": 256,
}
INVALID_CHAT: dict[str, Any] = {
    **CHAT,
    "temperature": 3,
    "n": 0,
    "messages": [{"role": "user"}, {"role": "robot", "content": 1}, *CHAT["messages"]],
}
KSERVE_FLAT: dict[str, Any] = {
    "id": "bench",
    "inputs": [
        {"name": "features", "shape": [100, 8], "datatype": "FP32", "data": [i * 0.25 - 50 for i in range(800)]}
    ],
}
KSERVE_NESTED: dict[str, Any] = {
    "id": "bench",
    "inputs": [
        {
            "name": "features",
            "shape": [100, 8],
            "datatype": "FP32",
            "data": [[(8 * row + col) * 0.25 - 50 for col in range(8)] for row in range(100)],
        }
    ],
}
CHUNK = orjson.dumps(
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "small-chat",
        "choices": [{"index": 0, "delta": {"content": " Paris"}, "logprobs": None, "finish_reason": None}],
    }
)


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    median_us: float
    p90_us: float
    target_us: float | None = None

    @property
    def met(self) -> bool:
        return self.target_us is None or self.median_us <= self.target_us


def measure(name: str, call: Callable[[], object], *, seconds: float, target_us: float | None = None) -> Result:
    """Median and 90th percentile of the per-call time, over batches that take about a millisecond each."""
    batch = 1
    while _timed(call, batch) < 1e-3 and batch < 1 << 20:
        batch *= 2
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 20:
        samples.append(_timed(call, batch) / batch * 1e6)
    p90 = statistics.quantiles(samples, n=10)[-1]
    return Result(name, statistics.median(samples), p90, target_us)


def _timed(call: Callable[[], object], batch: int) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(batch):
            call()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def gateway_cases(seconds: float) -> list[Result]:
    chat = _schema("openai.chat", "request")
    kserve = _schema("kserve.v2", "request")
    chunk = _schema("openai.chat", "chunk")
    assert (
        chat.violations(CHAT) == [] and kserve.violations(KSERVE_FLAT) == [] and kserve.violations(KSERVE_NESTED) == []
    )
    assert chunk.violations_json(CHUNK) == []
    invalid = len(chat.violations(INVALID_CHAT))
    return [
        measure("chat request, 4 messages", lambda: chat.violations(CHAT), seconds=seconds, target_us=CHAT_TARGET_US),
        measure(
            "kserve request [100, 8] FP32, flat",
            lambda: kserve.violations(KSERVE_FLAT),
            seconds=seconds,
            target_us=KSERVE_TARGET_US,
        ),
        measure(
            "kserve request [100, 8] FP32, nested",
            lambda: kserve.violations(KSERVE_NESTED),
            seconds=seconds,
            target_us=KSERVE_TARGET_US,
        ),
        measure(
            f"chat request, invalid ({invalid} violations)", lambda: chat.violations(INVALID_CHAT), seconds=seconds
        ),
        measure("chat stream chunk from bytes", lambda: chunk.violations_json(CHUNK), seconds=seconds),
        measure("chat apply_defaults (with a copy)", lambda: chat.apply_defaults(copy.copy(CHAT)), seconds=seconds),
    ]


def candidate_cases(seconds: float) -> list[tuple[str, list[Result]]]:
    """The validators alone, `is_valid` on the same builtin schemas: the numbers behind the choice."""
    chat_schema = _document("openai.chat.request.json")
    kserve_schema = _document("kserve.v2.request.json")
    rs_chat = jsonschema_rs.Draft202012Validator(chat_schema)
    rs_kserve = jsonschema_rs.Draft202012Validator(kserve_schema)
    found = [
        (
            f"jsonschema-rs {metadata.version('jsonschema-rs')}",
            [
                measure("chat", lambda: rs_chat.is_valid(CHAT), seconds=seconds),
                measure("kserve flat", lambda: rs_kserve.is_valid(KSERVE_FLAT), seconds=seconds),
            ],
        )
    ]
    try:
        import jsonschema  # type: ignore[import-untyped, import-not-found, unused-ignore]  # optional, to compare
    except ImportError:
        return found
    py_chat = jsonschema.Draft202012Validator(chat_schema)
    py_kserve = jsonschema.Draft202012Validator(kserve_schema)
    found.append(
        (
            f"jsonschema {metadata.version('jsonschema')} (pure Python)",
            [
                measure("chat", lambda: py_chat.is_valid(CHAT), seconds=seconds),
                measure("kserve flat", lambda: py_kserve.is_valid(KSERVE_FLAT), seconds=seconds),
            ],
        )
    )
    return found


def _schema(name: str, direction: Direction) -> Schema:
    schema = load_schema(name, direction=direction, base_dir=HERE)
    assert schema is not None
    return schema


def _document(filename: str) -> Any:
    return orjson.loads(resources.files("gateway.contracts").joinpath("builtin", filename).read_bytes())


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs, to check that everything works")
    args = parser.parse_args(argv)
    seconds = 0.2 if args.quick else 1.0

    print(f"python {platform.python_version()} on {_cpu()}, jsonschema-rs {metadata.version('jsonschema-rs')}")
    results = gateway_cases(seconds)
    print()
    print(f"{'Schema.violations':42s} {'median us':>10s} {'p90 us':>10s}  target")
    for result in results:
        target = f"<= {result.target_us:.0f} us  {'met' if result.met else 'MISSED'}" if result.target_us else ""
        print(f"{result.name:42s} {result.median_us:10.1f} {result.p90_us:10.1f}  {target}")

    print()
    print(f"{'validator candidates, is_valid only':42s} {'chat us':>10s} {'kserve us':>10s}")
    candidates = candidate_cases(seconds)
    for name, (chat, kserve) in candidates:
        print(f"{name:42s} {chat.median_us:10.1f} {kserve.median_us:10.1f}")
    if len(candidates) == 1:
        print(f"{'jsonschema (pure Python)':42s} not installed (pip install jsonschema to compare)")

    missed = [result.name for result in results if not result.met]
    print()
    print(f"targets: chat <= {CHAT_TARGET_US:.0f} us, kserve 100 rows <= {KSERVE_TARGET_US:.0f} us: ", end="")
    print(f"MISSED by {', '.join(missed)}" if missed else "met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
