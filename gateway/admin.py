"""The admin port: health, metrics, routes, reload and events, behind a bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.audit import AuditLog
from gateway.baseline import build_baseline, write_baseline
from gateway.errors import (
    BadRequest,
    ContractViolation,
    FieldError,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
    render_error,
)
from gateway.metrics import Metrics
from gateway.runtime import RuntimeHolder
from gateway.stats import stats_snapshot

Endpoint = Callable[[Request], Awaitable[Response]]


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def create_admin_app(holder: RuntimeHolder, token: str | None, audit: AuditLog) -> Starlette:
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
        return Response(holder.shared.metrics.render(), media_type=Metrics.content_type)

    async def routes(request: Request) -> Response:
        ready, detail = holder.health.readiness()
        breakers = holder.shared.resilience.states()
        out = []
        for route in holder.current.config.routes:
            live = holder.current.choosers[route.name].weights
            out.append(
                {
                    "name": route.name,
                    "owner": route.owner,
                    "match": route.match.model_dump(),
                    "canary_analysis": holder.shared.analyzer.snapshot(route.name),
                    "backends": [
                        {
                            "name": b.name,
                            "url": b.url,
                            "model": b.model,
                            "stable": b.stable,
                            "weight": live.get(b.name, 0.0),
                            "file_weight": b.weight,
                            "circuit": breakers[(route.name, b.name)].value
                            if (route.name, b.name) in breakers
                            else "closed",
                            "reachable": detail["routes"][route.name][b.name],
                        }
                        for b in route.backends
                    ],
                }
            )
        return _Json({"routes": out})

    async def stats(request: Request) -> Response:
        return _Json(await stats_snapshot(holder))

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
        raw = request.query_params.get("limit", "100")
        limit = min(int(raw), 500) if raw.isdigit() else 100
        return _Json({"events": holder.events.recent(limit)})

    def _route(request: Request) -> str:
        name = request.path_params["route"]
        if name not in holder.current.choosers:
            raise NotFound(f"no route named {name!r}", errors=[FieldError("route", "unknown route")])
        return str(name)

    def _change(request: Request, route: str, action: str, weights: dict[str, float], reason: str) -> Response:
        actor = _actor(request)
        before = holder.set_weights(route, weights)
        audit.append(actor, action, {"route": route, "weights": before}, {"route": route, "weights": weights})
        holder.events.record(action, reason, route=route, actor=actor, details={"before": before, "after": weights})
        return _Json({"route": route, "weights": weights, "before": before})

    async def put_weights(request: Request) -> Response:
        route = _route(request)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise BadRequest("the body is not valid JSON", errors=[FieldError("", str(exc))]) from None
        names = {b.name for b in holder.current.router.by_name[route].backends}
        if not isinstance(body, dict):
            raise BadRequest("the body must be an object of backend name to weight")
        errors = [FieldError(f"/{k}", "no such backend") for k in body if k not in names]
        errors += [
            FieldError(f"/{k}", "must be a number >= 0")
            for k, v in body.items()
            if k in names and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0)
        ]
        if not errors and sum(body.values()) <= 0:
            errors.append(FieldError("", "at least one weight must be above 0"))
        if errors:
            raise ContractViolation("invalid weights", errors=errors)
        weights = {name: float(body.get(name, 0.0)) for name in names}
        return _change(request, route, "weights", weights, "weights set through the admin API")

    async def promote(request: Request) -> Response:
        route = _route(request)
        canary = _canary(holder, route, request.query_params.get("backend"))
        weights = {b.name: (100.0 if b.name == canary else 0.0) for b in holder.current.router.by_name[route].backends}
        return _change(request, route, "promote", weights, f"all traffic to {canary}")

    async def baseline(request: Request) -> Response:
        """Build the route's drift baseline from live traffic; write it where `monitor.drift.baseline` says."""
        route = _route(request)
        config = next(r for r in holder.current.config.routes if r.name == route)
        pairs = holder.shared.samples.pairs(route)
        if config.monitor is None or not pairs:
            raise BadRequest(f"route {route!r} has no monitored traffic to build a baseline from")
        responses = [response for _, response in pairs] if all(r is not None for _, r in pairs) else None
        try:
            built = build_baseline(config, [document for document, _ in pairs], responses=responses)
        except ValueError as exc:
            raise BadRequest(f"cannot build a baseline: {exc}") from None
        drift = config.monitor.drift
        written = None
        if drift is not None and drift.baseline is not None and holder.path is not None:
            target = holder.path.parent / drift.baseline
            write_baseline(target, built)
            written = str(target)
            audit.append(_actor(request), "baseline", None, {"route": route, "path": written, "documents": len(pairs)})
        return _Json({"route": route, "documents": len(pairs), "written_to": written, "baseline": built})

    async def rollback(request: Request) -> Response:
        route = _route(request)
        stable = holder.current.router.by_name[route].stable.name
        weights = {b.name: (100.0 if b.name == stable else 0.0) for b in holder.current.router.by_name[route].backends}
        return _change(request, route, "rollback", weights, f"all traffic back to {stable}")

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/admin/routes", guarded(routes)),
            Route("/admin/reload", guarded(reload), methods=["POST"]),
            Route("/admin/events", guarded(events)),
            Route("/admin/stats", guarded(stats)),
            Route("/admin/routes/{route}/weights", guarded(put_weights), methods=["PUT"]),
            Route("/admin/routes/{route}/promote", guarded(promote), methods=["POST"]),
            Route("/admin/routes/{route}/rollback", guarded(rollback), methods=["POST"]),
            Route("/admin/routes/{route}/baseline", guarded(baseline), methods=["POST"]),
        ],
        exception_handlers={
            GatewayError: lambda request, exc: _error(exc),
            HTTPException: lambda request, exc: _error(_from_http(exc)),
        },
    )


def _canary(holder: RuntimeHolder, route: str, named: str | None) -> str:
    """The backend to promote: the one named, else the non-stable backend with the most traffic now."""
    compiled = holder.current.router.by_name[route]
    if named is not None:
        if compiled.backend(named) is None:
            raise NotFound(f"route {route!r} has no backend {named!r}", errors=[FieldError("backend", "unknown")])
        return named
    weights = holder.current.choosers[route].weights
    candidates = [b for b in compiled.backends if b is not compiled.stable]
    if not candidates:
        raise BadRequest(f"route {route!r} has no canary: it has only its stable backend")
    return max(candidates, key=lambda b: weights.get(b.name, 0.0)).name


def _from_http(exc: HTTPException) -> GatewayError:
    error = {404: NotFound, 405: MethodNotAllowed}.get(exc.status_code, BadRequest)
    return error(str(exc.detail))


def _actor(request: Request) -> str:
    client = request.client.host if request.client else "unknown"
    return request.headers.get("x-admin-actor", f"admin@{client}")[:100]


def _error(error: GatewayError) -> Response:
    status, headers, body = render_error(error, request_id="")
    return Response(body, status_code=status, media_type=headers[0][1].decode())
