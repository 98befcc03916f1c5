"""`gateway serve`: the data port and the admin port in one process, on uvloop and httptools.

uvicorn's own signal capture is per server; with two servers in one loop the gateway installs its
handlers itself: SIGTERM/SIGINT drain both servers (bounded by `listen.drain_s`), SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Generator
from pathlib import Path

import uvicorn

from gateway.admin import create_admin_app
from gateway.config import GatewayConfig
from gateway.proxy import DataPlane
from gateway.runtime import RuntimeHolder, Shared
from gateway.upstream import make_client

log = logging.getLogger("gateway")

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
GC_THRESHOLD = 10_000  # allocations (net of frees) between young collections; CPython's default is 700


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the gateway owns signal handling for both servers


def _uvicorn_config(app: object, host: str, port: int, keepalive_s: float, drain_s: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop="none",  # the loop is already uvloop (see run())
        http="httptools",
        lifespan="off",
        proxy_headers=False,  # X-Forwarded-* are handled by the gateway's trusted_proxies
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        timeout_keep_alive=int(max(1, keepalive_s)),
        timeout_graceful_shutdown=int(max(1, drain_s)),
    )


async def serve(config: GatewayConfig, path: Path | None, ready: asyncio.Event | None = None) -> None:
    shared = Shared.for_config(config, make_client(config.upstream))
    tasks = shared.tasks
    holder = RuntimeHolder(config, shared, path)
    admin_host = config.admin.host
    if not config.admin.token and admin_host not in LOOPBACK:
        log.warning("admin.token is not set: the admin port binds to 127.0.0.1 instead of %s", admin_host)
        admin_host = "127.0.0.1"
    admin_app = create_admin_app(holder, config.admin.token or None, shared.audit)
    listen = config.listen
    data = _Server(
        _uvicorn_config(DataPlane(holder, tasks), listen.host, listen.port, listen.keepalive_s, listen.drain_s)
    )
    admin = _Server(_uvicorn_config(admin_app, admin_host, config.admin.port, 5, 2))

    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        if data.should_exit:  # a second signal: stop waiting
            data.force_exit = admin.force_exit = True
            return
        log.info("received %s: draining in-flight requests (up to %.0fs)", signal.Signals(signum).name, listen.drain_s)
        holder.health.draining = True
        data.should_exit = admin.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGHUP, lambda: holder.reload(actor="SIGHUP"))

    if shared.access_log is not None:
        shared.access_log.start()
    log.info("tracing: %r", shared.tracing)
    background = [
        tasks.spawn(holder.health.run(), name="health-probe"),
        tasks.spawn(holder.watch(), name="config-watch"),
        tasks.spawn(shared.analyzer.run(), name="canary-analysis"),
    ]
    # Everything built so far (modules, config, pipeline) lives as long as the process: keep it out
    # of the cyclic GC's scans, which otherwise walk it on every full collection under load.
    gc.collect()
    gc.freeze()
    # A request leaves no cyclic garbage (its context is freed by refcounting: `tasks.AfterResponse`),
    # but at the default threshold of 700 the objects of the requests in flight still set off a young
    # collection every ~30 requests, each scanning them all: ~5 us a request. At 10,000 none ran in
    # 10 s of load; cyclic garbage from elsewhere (an exception's traceback) is still collected.
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    try:
        servers = asyncio.gather(data.serve(), admin.serve())
        while not (data.started and admin.started):
            if servers.done():
                break
            await asyncio.sleep(0.01)
        if data.started and admin.started:
            _announce(data, admin)
            if ready is not None:
                ready.set()
        await servers
    finally:
        for task in background:
            task.cancel()
        await tasks.drain(timeout_s=2.0)
        await shared.client.aclose()
        await shared.store.aclose()
        if shared.access_log is not None:
            await shared.access_log.aclose()
        await shared.tracing.aclose()
        log.info("gateway stopped")


def _announce(data: uvicorn.Server, admin: uvicorn.Server) -> None:
    def address(server: uvicorn.Server) -> str:
        sockets = [s for srv in server.servers for s in srv.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    # Tests and the demo read this line to learn the bound ports (port 0 picks a free one).
    log.info("gateway listening on %s (admin %s)", address(data), address(admin))
    print(f"gateway listening on {address(data)} admin {address(admin)}", flush=True)


def run(config: GatewayConfig, path: Path | None) -> None:
    import uvloop

    uvloop.run(serve(config, path))
