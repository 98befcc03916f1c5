"""The demo model server's aiohttp application: routes, the control plane and the per-request guard.

Every model endpoint runs behind a guard that records the request, picks its `Behaviour` and applies the
faults that replace an answer; the endpoint applies the rest (stream faults, prefill refusal). Health and
metadata endpoints are probes: recorded in the per-path counts only, and hit by a control rule only when
its `path_prefix` names them.

Run the application with `handler_cancellation=True` (as `gateway.demo.server.start` does), so handlers
that wait forever (`silent`, `stall`) end when their client goes away.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.demo.behaviour import OK, Behaviour, Controller
from gateway.demo.faults import before_handler, send_json
from gateway.demo.kserve import KServeEndpoints
from gateway.demo.openai import OpenAIEndpoints
from gateway.demo.responses import json_response, read_json_object
from gateway.demo.settings import DemoSettings
from gateway.demo.stats import Recorder, decode_headers

__all__ = ["CONTROLLER", "RECORDER", "Endpoint", "build_app"]

Endpoint = Callable[[web.Request, Behaviour], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTROLLER = web.AppKey("demo_controller", Controller)
RECORDER = web.AppKey("demo_recorder", Recorder)
MAX_BODY = 64 * 1024 * 1024  # large prompts are how tests overflow a context window


def _guard(controller: Controller, recorder: Recorder, model: str, endpoint: Endpoint, *, probe: bool) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()  # aiohttp keeps it: the endpoint's read() returns the same bytes
        url = request.rel_url
        path = url.raw_path
        behaviour = controller.pick(path, probe)
        recorder.record(request.method, path, url.raw_query_string, request.raw_headers, body, behaviour.mode, probe)
        try:
            if behaviour is not OK:
                replaced = await before_handler(request, behaviour, model)
                if replaced is not None:
                    return replaced
            return await endpoint(request, behaviour)
        except ConnectionError:
            # The client went away mid-answer, or a fault hung up on it. aiohttp fails to send this placeholder
            # with a ConnectionError too and then drops the connection quietly (an escaping exception is logged).
            return web.Response()

    return handler


class _Misc:
    """Echo, liveness and the control plane."""

    __slots__ = ("_controller", "_name", "_recorder")

    def __init__(self, name: str, controller: Controller, recorder: Recorder) -> None:
        self._name = name
        self._controller = controller
        self._recorder = recorder

    async def echo(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        url = request.rel_url
        body = await request.read()
        data = {
            "server": self._name,
            "method": request.method,
            "path": url.raw_path,
            "query": url.raw_query_string,
            "url": request.raw_path,
            "http_version": f"{request.version.major}.{request.version.minor}",
            "headers": decode_headers(request.raw_headers),
            "body": body.decode("utf-8", "replace"),
        }
        return await send_json(request, data, behaviour)

    async def healthz(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        return json_response({"status": "ok", "server": self._name})

    def _state(self) -> dict[str, object]:
        rule = self._controller.rule
        return {
            "behaviour": (rule or OK).model_dump(),
            "remaining": self._controller.remaining,
        }

    async def set_control(self, request: web.Request) -> web.StreamResponse:
        payload = await read_json_object(request)
        if isinstance(payload, str):
            return json_response({"error": payload}, 400)
        try:
            rule = Behaviour.model_validate(payload)
        except ValidationError as exc:
            errors = orjson.loads(exc.json(include_url=False, include_context=False))
            return json_response({"error": "invalid control behaviour", "errors": errors}, 400)
        self._controller.set(rule)
        return json_response(self._state())

    async def get_control(self, request: web.Request) -> web.StreamResponse:
        return json_response(self._state())

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self._controller.reset()
        self._recorder.clear()
        return json_response(self._state())

    async def stats(self, request: web.Request) -> web.StreamResponse:
        data = {"server": self._name, "monotonic": time.monotonic(), "time": time.time(), **self._recorder.to_json()}
        return json_response(data)


def build_app(settings: DemoSettings) -> web.Application:
    """The demo model server for `settings`: OpenAI, KServe v2, echo, health and control endpoints."""
    controller = Controller(settings)
    recorder = Recorder()
    app = web.Application(client_max_size=MAX_BODY)
    app[CONTROLLER] = controller
    app[RECORDER] = recorder
    openai = OpenAIEndpoints(settings)
    kserve = KServeEndpoints(settings)
    misc = _Misc(settings.name, controller, recorder)

    def model(endpoint: Endpoint) -> Handler:
        return _guard(controller, recorder, settings.model, endpoint, probe=False)

    def probe(endpoint: Endpoint) -> Handler:
        return _guard(controller, recorder, settings.model, endpoint, probe=True)

    add = app.router.add_route
    add("POST", "/v1/chat/completions", model(openai.chat))
    add("POST", "/v1/completions", model(openai.completions))
    add("POST", "/v1/embeddings", model(openai.embeddings))
    add("GET", "/v1/models", probe(openai.models))
    add("POST", "/v1/models/{model}:predict", model(kserve.predict))
    add("POST", "/v2/models/{model}/infer", model(kserve.infer))
    add("POST", "/v2/models/{model}/versions/{version}/infer", model(kserve.infer))
    add("GET", "/v2", probe(kserve.server_metadata))
    add("GET", "/v2/health/live", probe(kserve.live))
    add("GET", "/v2/health/ready", probe(kserve.ready))
    add("GET", "/v2/models/{model}", probe(kserve.model_metadata))
    add("GET", "/v2/models/{model}/versions/{version}", probe(kserve.model_metadata))
    add("GET", "/v2/models/{model}/ready", probe(kserve.model_ready))
    add("GET", "/v2/models/{model}/versions/{version}/ready", probe(kserve.model_ready))
    add("GET", "/healthz", probe(misc.healthz))
    add("*", "/echo", model(misc.echo))
    add("*", "/echo/{tail:.*}", model(misc.echo))
    add("POST", "/control", misc.set_control)
    add("GET", "/control", misc.get_control)
    add("POST", "/control/reset", misc.reset)
    add("GET", "/control/stats", misc.stats)
    return app
