"""Liveness and readiness: the config is loaded and every route has a backend that accepts connections."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.config import GatewayConfig

log = logging.getLogger("gateway")


class Health:
    """Probes each backend's TCP port every `interval_s`; `/readyz` answers from the last results."""

    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        state: Callable[[], dict[str, Any]] = dict,
        interval_s: float = 2.0,
        timeout_s: float = 1.0,
    ) -> None:
        self._config = config
        self._state = state
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._reachable: dict[tuple[str, int], bool] = {}  # (host, port) -> last probe result
        self.draining = False

    async def probe_once(self) -> None:
        origins = {_origin(b.url) for r in self._config().routes for b in r.backends}
        results = await asyncio.gather(*(self._probe(origin) for origin in origins))
        for origin, ok in zip(origins, results, strict=True):
            if self._reachable.get(origin) is not None and self._reachable[origin] != ok:
                log.warning("backend %s is %s", origin, "reachable again" if ok else "unreachable")
            self._reachable[origin] = ok

    async def run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self._interval_s)

    async def _probe(self, origin: tuple[str, int]) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                _, writer = await asyncio.open_connection(*origin)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        routes: dict[str, Any] = {}
        ready = not self.draining
        for route in self._config().routes:
            backends = {b.name: self._reachable.get(_origin(b.url), False) for b in route.backends}
            routes[route.name] = backends
            ready = ready and any(backends.values())
        detail = {"status": "ready" if ready else "not ready", "draining": self.draining, "routes": routes}
        return ready, {**detail, "state": self._state()}

    async def answer(self, path: str, send: Any) -> None:
        """Answer /healthz or /readyz as plain ASGI (the data port serves them too)."""
        if path == "/healthz":
            status, body = 200, b'{"status":"ok"}'
        else:
            ready, detail = self.readiness()
            status, body = (200 if ready else 503), orjson.dumps(detail)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _origin(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
