"""`gateway demo`: demo model servers + the gateway + ~20 s of traffic, then a short report.

Everything runs as real processes on loopback, exactly as `gateway serve` would in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from gateway.config import GatewayConfig
from gateway.loader import ConfigError, load_config

# How each demo backend behaves, by backend name: the canary is a little slower and flakier.
BEHAVIOUR: dict[str, list[str]] = {
    "v1": ["--latency-ms", "15", "--jitter-ms", "10"],
    "v2": ["--latency-ms", "30", "--jitter-ms", "20", "--error-rate", "0.02"],
    "kserve": ["--latency-ms", "5", "--jitter-ms", "3"],
}

CHAT = {"model": "demo-chat", "messages": [{"role": "user", "content": "Summarise the quarterly report in one line"}]}
EMBED = {"model": "demo-embed", "input": ["the gateway", "sits in front of models"]}
KSERVE = {
    "inputs": [
        {"name": "age", "shape": [4], "datatype": "FP32", "data": [31.0, 45.0, 22.0, 60.0]},
    ]
}


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    transport_errors: int = 0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors


def run_demo(config_path: Path, duration_s: float = 20.0, concurrency: int = 8) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    with _processes(config, config_path) as gateway_url:
        if gateway_url is None:
            return 1
        tally = asyncio.run(_drive(gateway_url, duration_s, concurrency))
    _report(tally)
    return 0 if tally.statuses.get(200, 0) > 0 else 1


@contextlib.contextmanager
def _processes(config: GatewayConfig, config_path: Path) -> Iterator[str | None]:
    procs: list[subprocess.Popen[str]] = []
    try:
        origins: dict[tuple[str, int], str] = {}
        for route in config.routes:
            for backend in route.backends:
                parts = urlsplit(backend.url)
                origins.setdefault((parts.hostname or "127.0.0.1", parts.port or 80), backend.name)
        for (host, port), name in origins.items():
            argv = ["--host", host, "--port", str(port), "--name", name, *BEHAVIOUR.get(name, [])]
            proc, line = _start([sys.executable, "-m", "gateway.demo", *argv], r"listening on")
            procs.append(proc)
            print(f"started {line}")
        serve = [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)]
        proc, line = _start(serve, r"^gateway listening on")
        procs.append(proc)
        print(f"started {line}")
        match = re.search(r"gateway listening on (\S+)", line)
        yield match.group(1) if match else None
    except RuntimeError as exc:
        print(f"demo failed to start: {exc}", file=sys.stderr)
        yield None
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _start(argv: list[str], ready: str, timeout_s: float = 15.0) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip())
        if re.search(ready, line):
            # Keep draining its output so the child never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
            return proc, line.strip()
    proc.kill()
    raise RuntimeError(f"{' '.join(argv)} did not start:\n" + "\n".join(seen[-20:]))


async def _drive(url: str, duration_s: float, concurrency: int) -> Tally:
    tally = Tally()
    rng = random.Random(7)
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                await _one_request(client, rng, tally)

        async def progress() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                elapsed = time.monotonic() - tally.started
                bad = tally.total - tally.statuses.get(200, 0)
                print(
                    f"  {elapsed:5.1f}s  {tally.total:6d} requests  {tally.total / elapsed:7.1f} req/s  {bad} not 200",
                    flush=True,
                )

        print(f"sending traffic to {url} for {duration_s:g}s with {concurrency} clients ...", flush=True)
        await asyncio.gather(progress(), *(worker() for _ in range(concurrency)))
    return tally


async def _one_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    pick = rng.random()
    started = time.perf_counter()
    try:
        if pick < 0.6:
            response = await client.post("/v1/chat/completions", json=CHAT)
        elif pick < 0.7:
            async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
                await response.aread()
        elif pick < 0.85:
            response = await client.post("/v1/embeddings", json=EMBED)
        else:
            response = await client.post("/v2/models/credit/infer", json=KSERVE)
    except httpx.HTTPError:
        tally.transport_errors += 1
        return
    elapsed_ms = (time.perf_counter() - started) * 1000
    tally.statuses[response.status_code] += 1
    key = (response.headers.get("x-gateway-route", "-"), response.headers.get("x-gateway-backend", "-"))
    tally.latencies_ms[key].append(elapsed_ms)


def _report(tally: Tally) -> None:
    elapsed = time.monotonic() - tally.started
    print()
    print(f"{tally.total} requests in {elapsed:.1f}s ({tally.total / elapsed:.1f} req/s)")
    codes = ", ".join(f"{code}: {count}" for code, count in sorted(tally.statuses.items()))
    broken = f"; transport errors: {tally.transport_errors}" if tally.transport_errors else ""
    print(f"status codes: {codes}{broken}")
    print()
    print(f"{'route':<14} {'backend':<8} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for (route, backend), values in sorted(tally.latencies_ms.items()):
        ordered = sorted(values)
        p50 = ordered[int(0.50 * (len(ordered) - 1))]
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        print(f"{route:<14} {backend:<8} {len(values):>8} {p50:>8.1f} {p99:>8.1f}")
    print()
    print("latency is measured by the client, end to end through the gateway.")
