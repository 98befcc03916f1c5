"""The KServe v2 / Open Inference Protocol endpoints (and KServe v1 `:predict`), serving a toy classifier.

Infer: `n` = first dimension of the first input; one prediction per row of `prod(shape[1:])` elements.
Outputs `label` (BYTES, "positive"/"negative") and `score` (FP32). Errors are `{"error": "..."}` with 400,
as the protocol specifies. Any model name is served.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.demo.answers import classify
from gateway.demo.behaviour import Behaviour
from gateway.demo.faults import send_json
from gateway.demo.responses import json_response, read_json_object
from gateway.demo.settings import DemoSettings

__all__ = ["KServeEndpoints"]

_OUTPUTS = (("label", "BYTES"), ("score", "FP32"))


def _error(message: str, status: int = 400) -> web.Response:
    return json_response({"error": message}, status)


def _flatten(data: object) -> Iterator[object]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _row(instance: object) -> list[object]:
    if isinstance(instance, dict):
        return list(instance.values())
    if isinstance(instance, list):
        return list(_flatten(instance))
    return [instance]


class KServeEndpoints:
    """Handlers of `/v2/...` (health, metadata, infer) and `/v1/models/{model}:predict`."""

    __slots__ = ("_name",)

    def __init__(self, settings: DemoSettings) -> None:
        self._name = settings.name

    def __repr__(self) -> str:
        return f"<KServeEndpoints {self._name!r}>"

    async def infer(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        payload = await read_json_object(request)
        if isinstance(payload, str):
            return _error(payload)
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
            return _error("'inputs' must be a non-empty array of tensors")
        first: dict[str, Any] = inputs[0]
        shape = first.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            return _error(f"input '{first.get('name')}': 'shape' must be a non-empty array of non-negative integers")
        data = list(_flatten(first.get("data")))
        if len(data) != math.prod(shape):
            return _error(
                f"input '{first.get('name')}': shape {shape} needs {math.prod(shape)} elements, got {len(data)}"
            )
        n = shape[0]
        width = len(data) // n if n else 0
        predictions = [classify(data[i * width : (i + 1) * width]) for i in range(n)]
        columns = {"label": [label for label, _ in predictions], "score": [score for _, score in predictions]}
        wanted = payload.get("outputs")
        names = {o.get("name") for o in wanted if isinstance(o, dict)} if isinstance(wanted, list) else None
        outputs = [
            {"name": name, "shape": [n], "datatype": datatype, "data": columns[name]}
            for name, datatype in _OUTPUTS
            if names is None or name in names
        ]
        body: dict[str, Any] = {"model_name": request.match_info["model"]}
        if "version" in request.match_info:
            body["model_version"] = request.match_info["version"]
        if isinstance(payload.get("id"), str):
            body["id"] = payload["id"]
        body["outputs"] = outputs
        return await send_json(request, body, behaviour)

    async def predict(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        payload = await read_json_object(request)
        if isinstance(payload, str):
            return _error(payload)
        instances = payload.get("instances")
        if not isinstance(instances, list):
            return _error("'instances' must be an array")
        predictions = [{"label": label, "score": score} for label, score in map(classify, map(_row, instances))]
        return await send_json(request, {"predictions": predictions}, behaviour)

    async def server_metadata(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        return json_response({"name": f"demo-{self._name}", "version": __version__, "extensions": []})

    async def live(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        return json_response({"live": True})

    async def ready(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        return json_response({"ready": True})

    async def model_ready(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        return json_response({"name": request.match_info["model"], "ready": True})

    async def model_metadata(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        version = request.match_info.get("version")
        return json_response(
            {
                "name": request.match_info["model"],
                "versions": [version] if version else ["1"],
                "platform": "demo",
                "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [{"name": name, "datatype": datatype, "shape": [-1]} for name, datatype in _OUTPUTS],
            }
        )
