"""The `gateway` command: serve, check, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gateway import __version__
from gateway.loader import ConfigError, load_config

DEFAULT_CONFIG = "config/gateway.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="An inference gateway: a reverse proxy in front of model servers that enforces contracts, "
        "splits traffic between model versions, falls back on failure, and accounts for latency and cost.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway (data port and admin port)",
        description="Run the gateway. SIGTERM drains in-flight requests then exits; SIGHUP, POST /admin/reload "
        "or an edit of the file reloads the config (a bad file keeps the running config).",
    )
    serve.add_argument("--config", default=DEFAULT_CONFIG, help=f"the YAML config file (default: {DEFAULT_CONFIG})")

    check = commands.add_parser(
        "check",
        help="validate a config file and print every error with its key path",
        description="Validate a config file. Prints every error as 'key.path: message' and exits 1 if any.",
    )
    check.add_argument("file", help="the YAML config file")

    baseline = commands.add_parser(
        "baseline",
        help="build a route's drift baseline from logged requests",
        description="Build the feature distributions of a route's `monitor` section from a JSON-lines file of "
        "request bodies (one per line), and write them as the baseline file that `monitor.drift.baseline` names.",
    )
    baseline.add_argument("--config", default=DEFAULT_CONFIG, help=f"the YAML config file (default: {DEFAULT_CONFIG})")
    baseline.add_argument("--route", required=True, help="the route whose `monitor` section to use")
    baseline.add_argument("--input", required=True, help="REQUESTS.jsonl: one JSON request body per line")
    baseline.add_argument("--responses", help="RESPONSES.jsonl, line by line matching --input (for predictions)")
    baseline.add_argument("--output", required=True, help="BASELINE.json to write")

    demo = commands.add_parser(
        "demo",
        help="start demo model servers and the gateway, send traffic for ~20 s, print a report",
        description="Start the demo model servers and the gateway on the demo config, drive traffic through it "
        "with visible progress, and print requests, status codes and per-backend p50/p99.",
    )
    demo.add_argument("--config", default="config/demo.yaml", help="the demo config (default: config/demo.yaml)")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of traffic (default: 20)")
    demo.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default: 8)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    access = logging.getLogger("gateway.access")  # JSON lines as they are, without the log-line prefix
    access.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    if args.command == "check":
        sys.exit(_check(args.file))
    if args.command == "serve":
        sys.exit(_serve(args.config))
    if args.command == "baseline":
        sys.exit(_baseline(args.config, args.route, args.input, args.responses, args.output))
    if args.command == "demo":
        from gateway.demo.driver import run_demo

        sys.exit(run_demo(Path(args.config), duration_s=args.duration, concurrency=args.concurrency))


def _check(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} error(s)", file=sys.stderr)
        for key, message in exc.problems:
            print(f"{key or '<root>'}: {message}", file=sys.stderr)
        return 1
    backends = sum(len(r.backends) for r in config.routes)
    print(f"{path}: ok ({len(config.routes)} routes, {backends} backends)")
    return 0


def _baseline(config_path: str, route_name: str, requests: str, responses: str | None, output: str) -> int:
    from gateway.baseline import BaselineError, BaselineInputError, build_baseline_from_jsonl, write_baseline

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    route = next((r for r in config.routes if r.name == route_name), None)
    if route is None or route.monitor is None:
        known = ", ".join(r.name for r in config.routes if r.monitor is not None) or "none"
        print(f"route {route_name!r} has no `monitor` section (routes with one: {known})", file=sys.stderr)
        return 1
    try:
        baseline = build_baseline_from_jsonl(route, requests, responses_path=responses, route=route.name)
        write_baseline(output, baseline)
    except (BaselineError, BaselineInputError, OSError) as exc:
        print(f"cannot build the baseline: {exc}", file=sys.stderr)
        return 1
    print(f"{output}: baseline of route {route.name!r} from {baseline.get('documents', '?')} requests")
    return 0


def _serve(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    from gateway.server import run

    run(config, Path(path))
    return 0
