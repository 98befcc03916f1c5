"""The plain gateway and a variant, side by side: both on the proxy core at once, each under its own wrk.

    python -m loadtests.side_by_side                          # observability, 5 rounds of 8 s
    python -m loadtests.side_by_side --features tenant --rounds 3
    python -m loadtests.side_by_side --against /tmp/base      # this tree against another checkout
    python -m loadtests.side_by_side --traces-ratio 0.01      # what the sampled traces cost: vary the share

Why. On a shared VM the same gateway swings by ±30% from one run to the next, so a plain run and a
variant run taken minutes (or seconds) apart often differ by more than the variant costs. Run at
the same time on the same core, both meet the same noise, and the kernel splits the core between
them fairly; what each did with its share is CPU time per request, read from /proc for each process.
The variant's loss is `1 - plain_cpu_per_request / variant_cpu_per_request`, the throughput it would
lose with a core to itself. Measured this way, the loss of each round stays within about ±1 point of
the others, where the sequential `bench --paired` runs spread over 30 points.

Caveat: two processes on one core switch on and off it, so both pay some cache refill per request
that neither pays alone. It weighs more on the plain gateway (whose smaller working set otherwise
stays in cache) than on a variant, so the loss shown errs low: on 2026-11-26 the observability set
read ~15% this way and 15-20% in back-to-back pairs alone on the core (`bench --paired`).
With `--against DIR` (a checkout of another revision: `git worktree add DIR REV`), both sides run the
same `--features` (`plain` for none), one from DIR and one from this tree: what a change saves, with
the noise cancelled as above. The other tree runs as `python -P -m gateway` with DIR on PYTHONPATH:
without `-P` the working directory, this tree, would come first on the path and win.
Results go to `loadtests/results/side-by-side-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loadtests.bench import (
    BODY,
    BUDGETS,
    GATEWAY,
    GATEWAY_CLIENT,
    LUA,
    OBSERVABILITY,
    PARTS,
    PATH,
    PYTHON,
    RESULTS,
    TARGET_CONNECTIONS,
    TRACES_RATIO,
    BenchError,
    Load,
    Service,
    Services,
    WrkResult,
    cpu_snapshot,
    gateway_config,
    parts_of,
    preflight,
    run_wrk,
)

PROXY_CPU, LOAD_CPU = 0, 1


def measure(load: Load, gateways: tuple[Service, Service], duration_s: float) -> list[tuple[WrkResult, float]]:
    """Both gateways under load at once: each one's wrk result and CPU seconds per request."""
    before = cpu_snapshot()
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda g: run_wrk(load, g.url, TARGET_CONNECTIONS, duration_s)[0], gateways))
    after = cpu_snapshot()
    measured = []
    for gateway, result in zip(gateways, runs, strict=True):
        pid = gateway.process.pid
        if result.errors or not result.requests:
            raise BenchError(f"{gateway.name}: {result.errors} errors in {result.requests} requests")
        measured.append((result, (after[pid].seconds - before[pid].seconds) / result.requests))
    return measured


def start_gateway(services: Services, name: str, config: Path, source: Path | None = None) -> Service:
    """The gateway of this tree, or the one in `source` (another checkout) under this venv's Python."""
    command = [GATEWAY] if source is None else ["env", f"PYTHONPATH={source}", PYTHON, "-P", "-m", "gateway"]
    gateway = services.start(name, [*command, "--log-level", "warning", "serve", "--config", str(config)], PROXY_CPU)
    preflight(gateway.url, "gateway")
    return gateway


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--features", default="observability", help="the variant: observability or one of " + ", ".join(PARTS)
    )
    parser.add_argument(
        "--traces-ratio",
        type=float,
        default=TRACES_RATIO,
        metavar="R",
        help=f"the share of requests traced, with traces on (default {TRACES_RATIO}; the budget is set there)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="compare this tree with another checkout (git worktree add DIR REV), both running --features: "
        "what a change saves, with the noise cancelled",
    )
    args = parser.parse_args(argv)
    if args.features not in ("observability", *PARTS, "plain"):
        parser.error(f"--features takes observability, plain or one of {', '.join(PARTS)}")
    if args.against is not None and not (args.against / "gateway" / "__init__.py").is_file():
        parser.error(f"--against {args.against}: no gateway package there")
    if not 0.0 <= args.traces_ratio <= 1.0:
        parser.error(f"--traces-ratio takes a share in [0, 1], not {args.traces_ratio}")
    if args.against is None and args.features == "plain":
        parser.error("--features plain only makes sense with --against")
    # Traces at another share than the budget's: no verdict for a set with traces in it.
    other_ratio = "traces" in parts_of(args.features) and args.traces_ratio != TRACES_RATIO
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="gateway-side-by-side-") as tmp:
        work = Path(tmp)
        script = work / "chat.lua"
        script.write_text(LUA.format(path=PATH, body=json.dumps(BODY, separators=(",", ":"))))
        load = Load(script=script, cpu=LOAD_CPU, threads=1, timeout_s=5.0)
        services = Services(work)
        try:
            upstream = services.start(
                "upstream",
                [PYTHON, "-m", "gateway.demo", "--host", "127.0.0.1", "--port", "0", "--name", "v1"],
                LOAD_CPU,
            )
            receiver = services.start("otlp-receiver", [PYTHON, "-m", "tests.otlp_receiver", "--port", "0"], LOAD_CPU)
            features = "" if args.features == "plain" else args.features
            sides = (("plain", ""), (args.features, features))
            if args.against is not None:
                sides = (("before", features), ("after", features))
            configs = []
            for name, side_features in sides:
                (work / name).mkdir()
                trace_url = receiver.url + "/v1/traces"
                config = gateway_config(
                    upstream.url, GATEWAY_CLIENT, work / name, side_features, trace_url, args.traces_ratio
                )
                configs.append((name, config))
            label = f"{args.features}: {args.against} and this tree" if args.against else f"plain and {args.features}"
            if other_ratio:
                label += f" (traces sampled at {args.traces_ratio:.0%})"
            print(f"{label} side by side on core {PROXY_CPU}, {TARGET_CONNECTIONS} connections each")
            for number in range(1, args.rounds + 1):
                # Fresh processes every round: each draws its own hash seed and memory layout, which moves
                # a process's speed by a few percent for its whole life; the rounds sample that too.
                pair = (start_gateway(services, *configs[0], args.against), start_gateway(services, *configs[1]))
                measure(load, pair, args.warmup)
                (plain, plain_cpu), (variant, variant_cpu) = measure(load, pair, args.duration)
                for gateway in pair:
                    services.stop(gateway)
                loss = 1 - plain_cpu / variant_cpu
                rounds.append({"plain_rps": plain.rps, "plain_cpu_us": plain_cpu * 1e6, "variant_rps": variant.rps,
                               "variant_cpu_us": variant_cpu * 1e6, "loss": loss})  # fmt: skip
                (first, _), (second, _) = configs
                print(
                    f"  round {number}: {first} {plain.rps:,.0f} req/s, {plain_cpu * 1e6:.0f} us CPU per request; "
                    f"{second} {variant.rps:,.0f} req/s, {variant_cpu * 1e6:.0f} us; loss {loss:.1%}",
                    flush=True,
                )
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            services.stop_all()
    losses = sorted(r["loss"] for r in rounds)
    median = statistics.median(losses)
    each = ", ".join(f"{x:.1%}" for x in losses)
    if args.against is not None:  # loss > 0: this tree needs more CPU per request than the other one
        print(f"{args.features}: this tree's throughput {-median:+.1%} against {args.against} (loss per round: {each})")
    else:
        budget = None if other_ratio else BUDGETS.get(args.features)
        verdict = "" if budget is None else f", budget {budget:.0%} -> {'MET' if median <= budget else 'NOT MET'}"
        print(f"{args.features}: {median:.1%} below the plain gateway (rounds: {each}){verdict}")
    output = RESULTS / f"side-by-side-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "features": args.features,
        "against": str(args.against) if args.against else None,
        "parts": sorted(OBSERVABILITY) if args.features == "observability" else [args.features],
        "traces_ratio": args.traces_ratio,
    }
    output.write_text(json.dumps({**report, "rounds": rounds, "median_loss": median}, indent=2))
    print(f"results written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
