"""The data plane's own Python cost per request, in one process: no sockets, no uvicorn, no kernel.

    python -m loadtests.inprocess                                   # plain and observability, 3 rounds
    python -m loadtests.inprocess --features tenant traces access_log
    python -m loadtests.inprocess --against /tmp/base --features observability
    python -m loadtests.inprocess --instructions --rounds 1 --against /tmp/base   # counted, not timed

Why. The wrk benchmarks measure what a user gets, but a feature's cost there is a few microseconds in
~80 of uvicorn, uvloop and loopback TCP, under the VM's swings; this measures only the gateway's
Python, and repeats within ~0.3 us. Each reading is a fresh child process pinned to one core, with
PYTHONHASHSEED=0 and address-space randomization off (`setarch -R`, when present): separate
processes otherwise differ by ~1 us a request from their layout alone. Sides alternate round by
round, and the median of the rounds is reported. A change that saves 1 us here saved ~1.3 us of CPU
a request side by side under wrk on 2026-11-26 (the kernel and the caches add the rest).

What runs: the real `DataPlane`, built from the benchmark's config for each feature set
(`loadtests.bench.gateway_config`), over an upstream client that answers the chat completion at
once; traces go to the test OTLP receiver, started here as a real process (the exporter thread's
encoding and sending are part of the cost). Requests go 64 to an event-loop turn (the access log
serializes per turn; after-response work runs between turns), after 2,000 to warm up, with the
garbage collector frozen and thresholded as `gateway serve` sets it. Concurrency is one request
at a time, so this is the per-request work, not what contention adds.

`--instructions`: when the host is too noisy for microseconds (on 2026-11-26 one feature set read
88 to 126 us across three children), each reading instead counts the instructions the child
executes, under valgrind's cachegrind, in two children serving 1,024 and 5,120 requests after the
same warm-up; the difference over 4,096 is the instructions a request, start-up and shutdown
cancelled out. The `random` module is seeded in the child, so the same requests are sampled for
traces, and a reading repeats within ~0.1%. It counts user-space instructions of every thread
(the exporter's included), not time: system calls, cache misses and the GIL's hand-offs are not in
it, and batching driven by the clock (tenant settlement every 50 ms, the access log's flush) comes
~50x more often per request under valgrind. Use it to compare trees; time still decides.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loadtests.bench import (
    BODY,
    OBSERVABILITY,
    PATH,
    PYTHON,
    BenchError,
    Services,
    add_feature_set_arguments,
    feature_set_sides,
    gateway_config,
)

HERE = Path(__file__).resolve().parents[1]
CPU = 0
BATCH = 64  # requests to an event-loop turn
ROUNDS_OF = 7  # timed batches of requests in one child; its reading is their median
COUNTED = (1024, 5120)  # requests after the warm-up in the two children whose instructions are counted
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "demo-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how are you?"}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()


class _Answer:
    """An upstream response that is already complete."""

    def __init__(self) -> None:
        self.status = 200
        self.headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(ANSWER)).encode())]

    async def read(self) -> bytes:
        return ANSWER

    async def chunks(self) -> AsyncIterator[bytes]:
        yield ANSWER

    async def aclose(self) -> None:
        pass


class _Upstream:
    """An upstream client that answers at once: what is left is the gateway's own work."""

    async def send(self, request: Any, timeouts: Any) -> _Answer:
        return _Answer()

    async def aclose(self) -> None:
        pass


async def _measure(path: Path, requests: int, *, counting: bool = False) -> float:
    """us of the data plane a request (the median of ROUNDS_OF timed batches), in this process.

    `counting`: one untimed batch, for valgrind to count instructions; the `random` module is seeded, so
    that the same requests are sampled for traces in every run."""
    if counting:
        random.seed(0)
    from gateway.loader import load_config
    from gateway.proxy import DataPlane
    from gateway.runtime import RuntimeHolder, Shared
    from gateway.server import GC_THRESHOLD

    config = load_config(path)
    shared = Shared.for_config(config, _Upstream())
    app = DataPlane(RuntimeHolder(config, shared, path), shared.tasks)
    if shared.access_log is not None:
        shared.access_log.start()
    body = json.dumps(BODY, separators=(",", ":")).encode()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer bench-key"),  # as wrk sends it
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_: Any) -> None:
        pass

    async def turn() -> None:
        for _ in range(BATCH):
            await app(dict(scope), receive, send)
        await asyncio.sleep(0)

    for _ in range(2000 // BATCH):
        await turn()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    if counting:
        for _ in range(requests // BATCH):
            await turn()
        return 0.0
    readings = []
    for _ in range(ROUNDS_OF):
        started = time.perf_counter()
        for _ in range(requests // BATCH):
            await turn()
        readings.append((time.perf_counter() - started) / (requests // BATCH * BATCH) * 1e6)
    return statistics.median(readings)


def _reading(tree: Path | None, features: str, requests: int, otlp: str, work: Path, counting: bool) -> float:
    """One fresh child's us a request, with the gateway package from `tree` (None: this one); `counting`:
    instructions a request instead, from two children under valgrind. The config (and the access log
    beside it) is this tree's, in a directory of its own, removed after."""
    directory = Path(tempfile.mkdtemp(prefix="reading-", dir=work))
    try:
        config = gateway_config("http://127.0.0.1:9", "h1", directory, features, otlp)
        if not counting:
            return _run_child(tree, config, requests)
        # Two runs that differ only in how many requests they serve: start-up and shutdown cancel out.
        # They run at once, one to a core: valgrind runs a child's threads one at a time anyway.
        with ThreadPoolExecutor(2) as pool:
            few, more = pool.map(functools.partial(_count_instructions, tree, config), COUNTED)
        return (more - few) / (COUNTED[1] - COUNTED[0])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _child_argv(config: Path, requests: int, *more: str) -> list[str]:
    # This file runs as a script, not with -m: `tree` comes first on the path, and may have no such module.
    argv = [PYTHON, "-P", __file__, "--child", str(config), "--requests", str(requests), *more]
    return ["setarch", "-R", *argv] if shutil.which("setarch") else argv


def _child_env(tree: Path | None) -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": os.pathsep.join(str(p) for p in (tree, HERE) if p)}


def _run_child(tree: Path | None, config: Path, requests: int) -> float:
    argv = ["taskset", "-c", str(CPU), *_child_argv(config, requests)]
    done = subprocess.run(argv, env=_child_env(tree), capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _count_instructions(tree: Path | None, config: Path, requests: int) -> int:
    """The instructions a child executes in user space, all its threads together (valgrind's cachegrind)."""
    valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    argv = _child_argv(config, requests, "--count")
    argv = [*argv[:2], *valgrind, *argv[2:]] if argv[0] == "setarch" else [*valgrind, *argv]
    done = subprocess.run(argv, env=_child_env(tree), capture_output=True, text=True, timeout=1800, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_feature_set_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3, help="children per side (default: 3)")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per timed batch (default: 20,000)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions a request under valgrind instead of timing (deterministic: one round is enough)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # a config: measure it in this process
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)  # the child runs under valgrind
    args = parser.parse_args(argv)
    if args.child is not None:
        import uvloop

        print(f"{uvloop.run(_measure(args.child, args.requests, counting=args.count)):.3f}", flush=True)
        return 0
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind (Debian: apt-get install valgrind; make bench-instructions does)")
    sides = feature_set_sides(parser, args)
    with tempfile.TemporaryDirectory(prefix="gateway-inprocess-") as tmp:
        work = Path(tmp)
        services = Services(work)
        try:
            receiver = services.start("otlp-receiver", [PYTHON, "-m", "tests.otlp_receiver", "--port", "0"], 1)
            otlp = receiver.url + "/v1/traces"
            results: dict[tuple[str, str], list[float]] = {}
            for number in range(1, args.rounds + 1):
                for features in args.features:
                    for tree, name in sides:
                        value = _reading(
                            tree, "" if features == "plain" else features, args.requests, otlp, work, args.instructions
                        )
                        results.setdefault((features, name), []).append(value)
                print(f"round {number} of {args.rounds} done", flush=True)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            services.stop_all()
    plain = {name: statistics.median(results[("plain", name)]) for _, name in sides if ("plain", name) in results}
    unit, digits = ("instructions", 0) if args.instructions else ("us", 2)
    print(f"\n{'feature set':<16}{'tree':<24}{unit + '/request':>20}{'over plain':>12}   rounds")
    for (features, name), values in results.items():
        median = statistics.median(values)
        over = f"{median - plain[name]:+,.{digits}f}" if name in plain and features != "plain" else ""
        each = ", ".join(f"{v:,.{digits}f}" for v in values)
        print(f"{features:<16}{name:<24}{median:>20,.{digits}f}{over:>12}   {each}")
    if args.against is not None:
        for features in args.features:
            before = statistics.median(results[(features, str(args.against))])
            after = statistics.median(results[(features, "this tree")])
            change = f"{after - before:+,.{digits}f} {unit} ({(after - before) / before:+.2%})"
            print(f"{features}: this tree {change} a request against {args.against}")
    parts = ", ".join(sorted(OBSERVABILITY))
    print(f"(observability = {parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
