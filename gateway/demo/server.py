"""Run a demo model server on a socket: `start(settings)` returns it running, `aclose()` stops it."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.demo.app import build_app
from gateway.demo.settings import DemoSettings

__all__ = ["RunningServer", "start"]

# On SIGTERM in-flight requests get this long to finish; aiohttp then waits as long again before it cancels
# handlers that never end (silent, stall), so a server holding those exits within ~2x this.
SHUTDOWN_TIMEOUT_S = 0.5
BACKLOG = 2048


@dataclass(slots=True)
class RunningServer:
    """A started demo server. `port` is the real one when the settings asked for port 0."""

    settings: DemoSettings
    runner: web.AppRunner
    port: int

    def __repr__(self) -> str:
        return f"<RunningServer {self.settings.name!r} {self.url}>"

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    async def aclose(self) -> None:
        await self.runner.cleanup()


async def start(settings: DemoSettings) -> RunningServer:
    """Start serving `build_app(settings)` on the settings' host and port, on the running loop."""
    # No access log: nothing is written per request. Handler cancellation ends the handlers that wait
    # forever (silent, stall, reset) when their client goes away.
    runner = web.AppRunner(
        build_app(settings), access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=BACKLOG, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    return RunningServer(settings, runner, port)
