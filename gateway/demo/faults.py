"""The transport-level faults: status answers, resets, silence, delays, cut and stalled bodies."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, NoReturn

import orjson
from aiohttp import web

from gateway.demo.behaviour import Behaviour
from gateway.demo.responses import JSON_HEADERS, json_response

__all__ = ["MALFORMED_JSON", "bad_contract_body", "before_handler", "hang_up", "pause", "send_json"]

MALFORMED_JSON = b"{not json"
_LINGER_0 = struct.pack("ii", 1, 0)


async def pause(delay_ms: float | None) -> None:
    """Sleep `delay_ms`, or until cancelled when it is None (the client went away or the server stops)."""
    if delay_ms is None:
        await asyncio.Event().wait()
    elif delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)


def hang_up(request: web.BaseRequest, *, rst: bool) -> NoReturn:
    """Drop the connection now: a TCP RST when `rst` (SO_LINGER 0), else a FIN after whatever was sent.

    Raises `ConnectionResetError`, as a write to a client that went away does: the guard in `app` ends the
    request quietly on either.
    """
    transport = request.transport
    if transport is not None:
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        transport.abort()
    raise ConnectionResetError("the demo server hung up")


def bad_contract_body(path: str, model: str) -> dict[str, Any]:
    """A 200 body that breaks the response contract of the endpoint at `path`."""
    if path.startswith("/v1/chat/"):
        return {"id": "chatcmpl-bad", "object": "chat.completion", "created": 0, "model": model, "choices": "oops"}
    if path.startswith("/v1/completions"):
        return {"id": "cmpl-bad", "object": "text_completion", "created": 0, "model": model}
    if path.startswith("/v1/embeddings"):
        return {"object": "list", "data": "oops", "model": model}
    if path.startswith("/v2/"):
        return {"model_name": model, "outputs": "oops"}
    return {"unexpected": "shape"}


async def before_handler(request: web.Request, behaviour: Behaviour, model: str) -> web.StreamResponse | None:
    """Apply the faults that replace the endpoint's answer; None lets the endpoint answer."""
    mode = behaviour.mode
    if mode == "status":
        if behaviour.body is not None:
            return json_response(behaviour.body, behaviour.status, behaviour.headers)
        error = {"message": f"injected status {behaviour.status}", "type": "server_error", "param": None, "code": None}
        return json_response({"error": error}, behaviour.status, behaviour.headers)
    if mode == "delay":
        await pause(behaviour.delay_ms or 0.0)
        return None
    if mode == "reset":
        hang_up(request, rst=behaviour.rst is not False)
    if mode == "silent":
        await pause(behaviour.delay_ms)
        hang_up(request, rst=behaviour.rst is True)
    if mode == "bad_contract":
        body = behaviour.body if behaviour.body is not None else bad_contract_body(request.path, model)
        return json_response(body)
    return None


async def send_json(request: web.Request, data: object, behaviour: Behaviour) -> web.StreamResponse:
    """A 200 JSON answer, with the body faults: `cut` and `stall` midway, `malformed_event` as invalid JSON."""
    mode = behaviour.mode
    if mode == "cut" or mode == "stall":
        body = orjson.dumps(data)
        response = web.StreamResponse(headers=JSON_HEADERS)
        response.content_length = len(body)
        await response.prepare(request)
        half = len(body) // 2
        await response.write(body[:half])
        if mode == "cut":
            hang_up(request, rst=behaviour.rst is True)
        await pause(behaviour.delay_ms)
        await response.write(body[half:])
        await response.write_eof()
        return response
    if mode == "malformed_event":
        return web.Response(body=MALFORMED_JSON, headers=JSON_HEADERS)
    return web.Response(body=orjson.dumps(data), headers=JSON_HEADERS)
