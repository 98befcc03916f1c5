"""JSON responses and the OpenAI error body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["JSON_HEADERS", "SSE_HEADERS", "json_response", "openai_error", "read_json_object"]

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
SSE_HEADERS: Mapping[str, str] = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def json_response(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    all_headers = JSON_HEADERS if not headers else {**JSON_HEADERS, **headers}
    return web.Response(body=orjson.dumps(data), status=status, headers=all_headers)


def openai_error(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    """An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""
    return json_response({"error": {"message": message, "type": error_type, "param": param, "code": code}}, status)


async def read_json_object(request: web.Request) -> dict[str, Any] | str:
    """The request's JSON object body, or why it is not one."""
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return "request body is not valid JSON"
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    return payload
