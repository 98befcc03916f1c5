"""The running configuration: a compiled snapshot swapped atomically on reload.

A request reads `holder.current` once when it arrives and keeps that snapshot to the end, so a
reload never changes the config under an in-flight request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.events import EventLog
from gateway.forward import Forward, TrustedProxies
from gateway.health import Health
from gateway.loader import ConfigError, load_config
from gateway.pipeline import compose
from gateway.routing import CompiledRoute, Router, Routing
from gateway.types import Next, Stage
from gateway.upstream import UpstreamClient

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class Runtime:
    config: GatewayConfig
    router: Router
    handle: Next


def build_runtime(config: GatewayConfig, client: UpstreamClient, rng: random.Random | None = None) -> Runtime:
    """Compile a validated config into the request pipeline. The stage order lives here, and only here."""
    routes = [CompiledRoute.compile(route) for route in config.routes]
    router = Router(routes)
    stages: list[Stage] = [
        Routing(router),
    ]
    terminal = Forward(client, routes, TrustedProxies(config.listen.trusted_proxies), rng)
    return Runtime(config=config, router=router, handle=compose(stages, terminal))


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    message: str
    problems: list[tuple[str, str]]


class RuntimeHolder:
    """Owns the current Runtime and replaces it whole when a new config validates."""

    def __init__(self, config: GatewayConfig, client: UpstreamClient, path: Path | None, events: EventLog) -> None:
        self.path = path
        self.events = events
        self._client = client
        self.current = build_runtime(config, client)
        self.health = Health(lambda: self.current.config)
        self._stamp = _stamp(path)

    def reload(self, actor: str = "gateway") -> ReloadResult:
        if self.path is None:
            return ReloadResult(False, "the gateway was started without a config file", [])
        self._stamp = _stamp(self.path)
        try:
            config = load_config(self.path)
            runtime = build_runtime(config, self._client)
        except ConfigError as exc:
            message = f"reload rejected, keeping the running config: {len(exc.problems)} error(s)"
            log.error("%s\n%s", message, "\n".join(f"  {p or '<root>'}: {m}" for p, m in exc.problems))
            self.events.record("reload_failed", message, actor=actor, details={"errors": exc.problems})
            return ReloadResult(False, message, exc.problems)
        before = self.current.config
        self.current = runtime
        message = f"config reloaded from {self.path} ({len(config.routes)} routes)"
        self.events.record("reload", message, actor=actor)
        if before.listen != config.listen or before.admin != config.admin or before.upstream != config.upstream:
            log.warning("listen, admin and upstream settings take effect at the next restart")
        return ReloadResult(True, message, [])

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload when the file's mtime or size changes (editors and ConfigMap updates both show up so)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.path is not None and _stamp(self.path) != self._stamp:
                self.reload(actor="file-watch")


def _stamp(path: Path | None) -> tuple[float, int] | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime, stat.st_size
