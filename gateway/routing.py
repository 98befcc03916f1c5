"""Matching a request to a route: path prefix on segment boundaries, then the body's "model"."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config import Backend, Route, Timeouts
from gateway.context import RequestContext
from gateway.errors import ErrorFormat, FieldError, NoRoute
from gateway.types import Headers


@dataclass(frozen=True, slots=True)
class BackendTarget:
    """A backend compiled for the hot path: URL pieces and header bytes computed once."""

    name: str
    origin: str  # scheme://host:port
    base_path: str  # a path prefix the backend's URL carries, "" for none
    model: str | None
    stable: bool
    weight: float
    headers: Headers  # the backend's own headers (e.g. its Authorization), lower-cased names
    header_names: frozenset[bytes]
    config: Backend

    @classmethod
    def compile(cls, backend: Backend) -> BackendTarget:
        parts = urlsplit(backend.url)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in backend.headers.items()]
        return cls(
            name=backend.name,
            origin=f"{parts.scheme}://{parts.netloc}",
            base_path=parts.path.rstrip("/"),
            model=backend.model,
            stable=backend.stable,
            weight=backend.weight,
            headers=headers,
            header_names=frozenset(k for k, _ in headers),
            config=backend,
        )


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    prefix: str  # without a trailing slash; "" matches everything
    model: str | None
    backends: tuple[BackendTarget, ...]
    stable: BackendTarget
    timeouts: Timeouts
    error_format: ErrorFormat
    config: Route
    name_header: bytes  # the route name as a header value, encoded once
    watches_context_length: bool  # a 400 context_length_exceeded counts as a failure

    @classmethod
    def compile(cls, route: Route) -> CompiledRoute:
        backends = tuple(BackendTarget.compile(b) for b in route.backends)
        stable = next((b for b in backends if b.stable), backends[0])
        return cls(
            name=route.name,
            prefix=route.match.path.rstrip("/"),
            model=route.match.model,
            backends=backends,
            stable=stable,
            timeouts=route.timeouts,
            error_format=route.error_format,
            config=route,
            name_header=route.name.encode(),
            watches_context_length="context_length" in route.fallback.when,
        )

    def backend(self, name: str) -> BackendTarget | None:
        return next((b for b in self.backends if b.name == name), None)

    def matches_path(self, path: str) -> bool:
        prefix = self.prefix
        return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/" or prefix == "")


class Router:
    """Routes ordered longest prefix first; among equal prefixes, a model match before the catch-all."""

    def __init__(self, routes: list[CompiledRoute]) -> None:
        self.routes = sorted(routes, key=lambda r: (-len(r.prefix), r.model is None))
        self.by_name = {r.name: r for r in routes}

    def needs_model(self, path: str) -> bool:
        """Whether routing this path depends on the body's "model" (so the body must be JSON)."""
        return any(r.model is not None and r.matches_path(path) for r in self.routes)

    def match(self, path: str, model: object) -> CompiledRoute | None:
        for route in self.routes:
            if route.matches_path(path) and (route.model is None or route.model == model):
                return route
        return None

    def __repr__(self) -> str:
        return f"<Router {[r.name for r in self.routes]}>"


class Routing:
    """Gate: find the route for the request, or answer 404."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def enter(self, ctx: RequestContext) -> None:
        document = ctx.document
        model = document.get("model") if isinstance(document, dict) else None
        route = self._router.match(ctx.path, model)
        if route is None:
            errors = (
                [FieldError("/model", f"no route serves model {model!r}")] if self._router.needs_model(ctx.path) else []
            )
            raise NoRoute(f"no route for {ctx.method} {ctx.path}", errors=errors)
        ctx.route = route
        ctx.trace.set_route(route.name, route.config.owner, route.config.match.path)
        if isinstance(model, str):
            ctx.trace.set_request_model(model)
        ctx.trace.capture_prompt(document)
