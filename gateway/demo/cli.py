"""`python -m gateway.demo`: run one demo model server until SIGTERM or SIGINT (exit status 0)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from gateway.demo.server import start
from gateway.demo.settings import DemoSettings

__all__ = ["main", "parse_args", "serve"]


def parse_args(argv: list[str] | None = None) -> DemoSettings:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo",
        description="A demo model server (OpenAI-compatible and KServe v2) with failure injection for tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001, help="0 picks a free port (printed on startup)")
    parser.add_argument("--name", default="demo", help="server name: in the startup line, ids and fingerprints")
    parser.add_argument("--model", default="demo-model", help="model named in answers when the request names none")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every model request")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="latency varies uniformly by ± this")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of model requests answered with a 500")
    parser.add_argument("--seed", type=int, default=0, help="seed of the error and jitter draws")
    parser.add_argument("--stream-interval-ms", type=float, default=0.0, help="pause between stream events")
    parser.add_argument(
        "--context-window", type=int, default=0, help="tokens (words); longer requests get context_length_exceeded"
    )
    args = parser.parse_args(argv)
    try:
        return DemoSettings(
            name=args.name,
            host=args.host,
            port=args.port,
            model=args.model,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            error_rate=args.error_rate,
            seed=args.seed,
            stream_interval_ms=args.stream_interval_ms,
            context_window=args.context_window,
        )
    except ValueError as exc:
        parser.error(str(exc))


async def serve(settings: DemoSettings) -> None:
    """Serve until SIGTERM or SIGINT, after printing `demo server <name> listening on <url>`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await start(settings)
    try:
        print(f"demo server {settings.name} listening on {server.url}", flush=True)
        await stop.wait()
    finally:
        await server.aclose()


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    uvloop.run(serve(settings))
