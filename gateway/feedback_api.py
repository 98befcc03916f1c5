"""`POST /v1/feedback {"request_id", "label"}` on the data port: join a ground-truth label to a
prediction the gateway saw recently, so accuracy and calibration per backend become metrics."""

from __future__ import annotations

import orjson
from starlette.types import Receive, Send

from gateway.errors import BadRequest, ContractViolation, FieldError, GatewayError, NotFound, render_error
from gateway.feedback import FeedbackStore, LabelMismatch, UnknownPrediction

PATH = "/v1/feedback"
MAX_BODY = 1024 * 1024


async def answer_feedback(store: FeedbackStore, receive: Receive, send: Send, request_id: str) -> None:
    try:
        result = store.label(*await _read(receive))
        status, headers, body = 200, [(b"content-type", b"application/json")], orjson.dumps(result.to_dict())
    except UnknownPrediction as exc:
        status, headers, body = render_error(
            NotFound(str(exc), errors=[FieldError("/request_id", "no recent prediction with this id")]), request_id
        )
    except LabelMismatch as exc:
        status, headers, body = render_error(
            ContractViolation(str(exc), errors=[FieldError("/label", str(exc))]), request_id
        )
    except GatewayError as exc:
        status, headers, body = render_error(exc, request_id)
    headers.append((b"x-request-id", request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read(receive: Receive) -> tuple[str, object]:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest("the feedback body is too large")
        chunks.append(chunk)
        more = message.get("more_body", False)
    try:
        document = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise BadRequest("the body is not valid JSON", errors=[FieldError("", str(exc))]) from None
    if not isinstance(document, dict):
        raise ContractViolation("the body must be an object", errors=[FieldError("", "expected an object")])
    errors = []
    if not isinstance(document.get("request_id"), str) or not document["request_id"]:
        errors.append(FieldError("/request_id", "a non-empty string is required"))
    if "label" not in document:
        errors.append(FieldError("/label", "is required"))
    if errors:
        raise ContractViolation("the feedback is incomplete", errors=errors)
    return document["request_id"], document["label"]
