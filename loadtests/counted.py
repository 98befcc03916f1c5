"""The real `gateway serve` under wrk, its instructions per request counted by valgrind: the whole process.

    python -m loadtests.counted                                  # plain and observability, ~4 min
    python -m loadtests.counted --features plain tenant traces
    python -m loadtests.counted --against /tmp/base --features plain observability

Why. `side_by_side` times the gateway under wrk and `inprocess` measures the data plane alone;
this counts everything the gateway process runs in user space for a request (uvicorn, httptools,
the upstream client, the data plane, the exporter's and the access log's threads), so the ratio of
two feature sets predicts the throughput loss without the host's noise: four runs of the plain
gateway on 2026-11-26/27 read 497.0k to 498.9k instructions a request.

How. Each gateway runs under `valgrind --tool=callgrind`; wrk (one thread, 16 connections) warms it
up, the counters are zeroed (`callgrind_control -z`), wrk runs again, and the counters are dumped
(`callgrind_control -d`): the dump's total over wrk's request count is the reading. The upstream is
the demo model server, and traces go to the test OTLP receiver; neither is counted.

Caveats. Not time: system calls (the sockets, the access log's writes), cache misses and the GIL's
hand-offs are not in it. In the sessions that had both, the loss it predicted was 2-5 points below
the one timed under wrk on a quiet host, and 1.7 points above it on a host whose system calls were
slow (13.8% counted, 12.0% side by side, 2026-11-27). Under valgrind the gateway runs ~100x slower
while its timers keep wall time, so work done every N ms (tenant settlement every 50 ms, the access
log's flush, span batches) is counted over fewer requests than at full speed: periodic work is
overstated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loadtests.bench import (
    BODY,
    LUA,
    OBSERVABILITY,
    PATH,
    PYTHON,
    ROOT,
    BenchError,
    Load,
    Services,
    add_feature_set_arguments,
    feature_set_sides,
    gateway_config,
    parts_of,
    run_wrk,
)

CONNECTIONS = 16
STARTUP_S = 600.0  # under valgrind, imports alone take a minute on a slow host


def _count(
    services: Services, work: Path, tree: Path | None, features: str, upstream: str, otlp: str, args: argparse.Namespace
) -> tuple[float, int]:
    """(instructions a request, requests counted) for one gateway."""
    side = "this" if tree is None else "other"
    directory = work / f"{features or 'plain'}-{side}"
    directory.mkdir()
    config = gateway_config(upstream, "h1", directory, features, otlp)
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/callgrind.%p"]
    argv += [PYTHON, "-P", "-m", "gateway", "--log-level", "warning", "serve", "--config", str(config)]
    env = {"PYTHONHASHSEED": "0", "PYTHONPATH": os.pathsep.join(str(p) for p in (tree, ROOT) if p)}
    gateway = services.start(f"gateway-{directory.name}", argv, None, timeout_s=STARTUP_S, env=env)
    load = Load(work / "post.lua", None, 1, 60.0)
    try:
        run_wrk(load, gateway.url, CONNECTIONS, args.warmup)
        _control("-z", gateway.process.pid)
        result, _ = run_wrk(load, gateway.url, CONNECTIONS, args.duration)
        _control("-d", gateway.process.pid)
    finally:
        services.stop(gateway)
    if result.non_2xx or any(result.socket_errors.values()) or not result.requests:
        raise BenchError(f"{gateway.name}: {result.non_2xx} non-2xx answers, socket errors {result.socket_errors}")
    # The dump asked for is part 1; what ran after it (shutdown) went to the final file, without a suffix.
    text = (directory / f"callgrind.{gateway.process.pid}.1").read_text(errors="replace")
    found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if found is None:
        raise BenchError(f"{gateway.name}: no instruction total in callgrind's dump")
    return int(found.group(1)) / result.requests, result.requests


def _control(option: str, pid: int) -> None:
    done = subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {option} {pid} failed: {done.stderr.strip() or done.stdout.strip()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_feature_set_arguments(parser)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of counted load (default: 30)")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of load before counting (default: 15)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control", "wrk") if shutil.which(tool) is None]
    if missing:
        parser.error(f"needs {', '.join(missing)} (Debian: apt-get install valgrind wrk; make bench-counted does)")
    sides = feature_set_sides(parser, args)
    results: dict[tuple[str, str], tuple[float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-counted-") as tmp:
        work = Path(tmp)
        (work / "post.lua").write_text(LUA.format(path=PATH, body=json.dumps(BODY)))
        services = Services(work)
        try:
            upstream = services.start(
                "upstream", [PYTHON, "-m", "gateway.demo", "--host", "127.0.0.1", "--port", "0", "--name", "v1"], None
            )
            otlp = ""
            if any("traces" in parts_of("" if f == "plain" else f) for f in args.features):
                receiver = services.start("otlp-receiver", [PYTHON, "-m", "tests.otlp_receiver", "--port", "0"], None)
                otlp = receiver.url + "/v1/traces"
            for features in args.features:
                for tree, name in sides:
                    reading = _count(
                        services, work, tree, "" if features == "plain" else features, upstream.url, otlp, args
                    )
                    results[(features, name)] = reading
                    print(f"{features} ({name}): {reading[0]:,.0f} instructions a request", flush=True)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            services.stop_all()
    print(f"\n{'feature set':<16}{'tree':<24}{'instructions/request':>22}{'requests':>10}{'predicted loss':>16}")
    for (features, name), (count, requests) in results.items():
        plain = results.get(("plain", name))
        loss = f"{1 - plain[0] / count:.1%}" if plain is not None and features != "plain" else ""
        print(f"{features:<16}{name:<24}{count:>22,.0f}{requests:>10,}{loss:>16}")
    if args.against is not None:
        for features in args.features:
            before, after = results[(features, str(args.against))][0], results[(features, "this tree")][0]
            change = f"{after - before:+,.0f} instructions ({(after - before) / before:+.2%})"
            print(f"{features}: this tree {change} a request against {args.against}")
    print(f"(observability = {', '.join(sorted(OBSERVABILITY))}; predicted loss = 1 - plain / variant)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
