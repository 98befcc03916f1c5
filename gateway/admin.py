"""The admin port: health, metrics, routes, reload and events, behind a bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.audit import AuditLog
from gateway.errors import GatewayError, Unauthorized, render_error
from gateway.runtime import RuntimeHolder

Endpoint = Callable[[Request], Awaitable[Response]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def create_admin_app(
    holder: RuntimeHolder, token: str | None, audit: AuditLog, registry: CollectorRegistry
) -> Starlette:
    expected = f"Bearer {token}".encode() if token else None

    def guarded(endpoint: Endpoint) -> Endpoint:
        async def check(request: Request) -> Response:
            if expected is not None:
                given = request.headers.get("authorization", "").encode()
                # compare_digest runs in constant time, so the token cannot be guessed byte by byte.
                if not hmac.compare_digest(given, expected):
                    return _error(Unauthorized("a valid 'Authorization: Bearer <admin token>' header is required"))
            return await endpoint(request)

        return check

    async def healthz(request: Request) -> Response:
        return _Json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, detail = holder.health.readiness()
        return _Json(detail, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def routes(request: Request) -> Response:
        ready, detail = holder.health.readiness()
        out = []
        for route in holder.current.config.routes:
            out.append(
                {
                    "name": route.name,
                    "owner": route.owner,
                    "match": route.match.model_dump(),
                    "backends": [
                        {
                            "name": b.name,
                            "url": b.url,
                            "model": b.model,
                            "stable": b.stable,
                            "weight": b.weight,
                            "reachable": detail["routes"][route.name][b.name],
                        }
                        for b in route.backends
                    ],
                }
            )
        return _Json({"routes": out})

    async def reload(request: Request) -> Response:
        actor = _actor(request)
        before = holder.current.config.model_dump(mode="json")
        result = holder.reload(actor=actor)
        if not result.ok:
            errors = [{"pointer": path, "message": message} for path, message in result.problems]
            return _Json({"reloaded": False, "detail": result.message, "errors": errors}, status_code=422)
        audit.append(actor, "reload", before, holder.current.config.model_dump(mode="json"))
        return _Json({"reloaded": True, "detail": result.message})

    async def events(request: Request) -> Response:
        limit = min(int(request.query_params.get("limit", "100") or 100), 500)
        return _Json({"events": holder.events.recent(limit)})

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/admin/routes", guarded(routes)),
            Route("/admin/reload", guarded(reload), methods=["POST"]),
            Route("/admin/events", guarded(events)),
        ],
        exception_handlers={GatewayError: lambda request, exc: _error(exc)},
    )


def _actor(request: Request) -> str:
    client = request.client.host if request.client else "unknown"
    return request.headers.get("x-admin-actor", f"admin@{client}")[:100]


def _error(error: GatewayError) -> Response:
    status, headers, body = render_error(error, request_id="")
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers[:1]})
