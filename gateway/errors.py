"""Errors the gateway itself answers with, and how they are rendered.

The HTTP meaning lives on the class, so a stage raises and the edge renders::

    GatewayError                 500  internal_error
    ├── BadRequest               400  invalid_request     unparseable body, ambiguous request
    ├── Unauthorized             401  unauthorized
    ├── NoRoute, NotFound        404  not_found
    ├── MethodNotAllowed         405  method_not_allowed  (admin API)
    ├── BodyTooLarge             413  payload_too_large
    ├── ContractViolation        422  contract_violation  .errors lists every failing field
    ├── TooManyRequests          429  rate_limited        rate limit or budget, with Retry-After
    ├── HeadersTooLarge          431  headers_too_large
    ├── Overloaded               503  overloaded          shedding load, with Retry-After
    └── UpstreamError            502  upstream_error      .backend .reason (the fallback class)
        ├── UpstreamConnectError 502  connect             connection refused or reset before headers
        ├── UpstreamBadResponse  502  contract            response broke its contract
        ├── UpstreamStatus       502  status_5xx/429/...  the upstream answered with a failing status
        ├── CircuitOpen          503  circuit_open        the backend's breaker is open
        ├── UpstreamTimeout      504  timeout             connect, first byte or deadline passed
        └── UpstreamsExhausted   last error's status      .attempt_errors keeps every attempt's error

Bodies are RFC 9457 ``application/problem+json``, or the OpenAI error object for routes with
``error_format: openai``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import orjson

ErrorFormat = Literal["problem", "openai"]

PROBLEM_TYPE_BASE = "https://inference-gateway.dev/problems/"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One failing field: an RFC 6901 pointer into the request (or a header name) and why."""

    pointer: str
    message: str


class GatewayError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal gateway error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or []

    @property
    def status(self) -> int:
        return self.status_code

    @property
    def kind(self) -> str:
        """The error type named in the body (`type` of the problem, `type`/`code` of the OpenAI error)."""
        return self.error_type


class BadRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request"
    title = "Bad request"


class Unauthorized(GatewayError):
    status_code = 401
    error_type = "unauthorized"
    title = "Unauthorized"


class NoRoute(GatewayError):
    status_code = 404
    error_type = "not_found"
    title = "No route matches"


class NotFound(GatewayError):
    status_code = 404
    error_type = "not_found"
    title = "Not found"


class MethodNotAllowed(GatewayError):
    status_code = 405
    error_type = "method_not_allowed"
    title = "Method not allowed"


class BodyTooLarge(GatewayError):
    status_code = 413
    error_type = "payload_too_large"
    title = "Request body too large"


class ContractViolation(GatewayError):
    status_code = 422
    error_type = "contract_violation"
    title = "Request violates the route's contract"


class TooManyRequests(GatewayError):
    """Rate limit or budget reached; carries a Retry-After header."""

    status_code = 429
    error_type = "rate_limited"
    title = "Too many requests"


class Overloaded(GatewayError):
    """Shedding load: more requests in flight than `listen.max_in_flight`; carries a Retry-After header."""

    status_code = 503
    error_type = "overloaded"
    title = "Shedding load"


class HeadersTooLarge(GatewayError):
    status_code = 431
    error_type = "headers_too_large"
    title = "Request header fields too large"


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "upstream_error"
    title = "Upstream failed"
    reason = "status_5xx"  # the fallback class this failure counts as (config `fallback.when`)

    def __init__(
        self,
        detail: str,
        *,
        backend: str,
        errors: list[FieldError] | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(detail, errors=errors, headers=headers)
        self.backend = backend


class UpstreamStatus(UpstreamError):
    """The upstream answered, with a status that counts as a failure; keeps the answer to pass it on."""

    title = "Upstream answered with an error"

    def __init__(
        self, status: int, reason: str, *, backend: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        super().__init__(f"upstream answered {status}", backend=backend)
        self.upstream_status = status
        self.reason = reason
        self.upstream_headers = headers
        self.body = body
        if status == 429 and self.retry_after_s is not None:
            self.headers = [(b"retry-after", str(max(1, round(self.retry_after_s))).encode())]

    @property
    def status(self) -> int:
        return 429 if self.upstream_status == 429 else self.status_code  # still rate limited once every try is

    @property
    def kind(self) -> str:
        return "rate_limited" if self.upstream_status == 429 else self.error_type

    @property
    def retry_after_s(self) -> float | None:
        for key, value in self.upstream_headers:
            if key == b"retry-after":
                try:
                    return max(0.0, float(value))
                except ValueError:
                    return None  # an HTTP-date: treated as absent
        return None


class CircuitOpen(UpstreamError):
    status_code = 503
    error_type = "unavailable"
    title = "Every backend's circuit is open"
    reason = "circuit_open"

    def __init__(self, backend: str, retry_in_s: float) -> None:
        super().__init__(f"circuit open for another {retry_in_s:.1f}s", backend=backend)
        self.retry_in_s = retry_in_s


class UpstreamConnectError(UpstreamError):
    title = "Upstream unreachable"
    reason = "connect"


class UpstreamBadResponse(UpstreamError):
    title = "Upstream answered with an invalid response"
    reason = "contract"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout"
    title = "Upstream timed out"
    reason = "timeout"


class UpstreamsExhausted(UpstreamError):
    """Every attempt failed; keeps each attempt's error and answers with the last one's status."""

    def __init__(self, errors: list[UpstreamError]) -> None:
        last = errors[-1]
        tried = "; ".join(f"{e.backend}: {e.detail}" for e in errors)
        super().__init__(f"all {len(errors)} attempts failed ({tried})", backend=last.backend, headers=last.headers)
        self.attempt_errors = errors
        self.reason = last.reason

    @property
    def status(self) -> int:
        return self.attempt_errors[-1].status

    @property
    def kind(self) -> str:
        return self.attempt_errors[-1].kind


def render_error(
    error: GatewayError, request_id: str, error_format: ErrorFormat = "problem"
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for an error the gateway answers itself."""
    status = error.status
    if error_format == "openai":
        first = error.errors[0] if error.errors else None
        message = error.detail
        if error.errors:
            message += ": " + "; ".join(f"{e.pointer or '/'}: {e.message}" for e in error.errors)
        body = orjson.dumps(
            {
                "error": {
                    "message": message,
                    "type": error.kind,
                    "code": error.kind,
                    "param": first.pointer if first else None,
                }
            }
        )
        content_type = b"application/json"
    else:
        problem: dict[str, object] = {
            "type": PROBLEM_TYPE_BASE + error.kind,
            "title": error.title,
            "status": status,
            "detail": error.detail,
            "request_id": request_id,
        }
        if error.errors:
            problem["errors"] = [{"pointer": e.pointer, "message": e.message} for e in error.errors]
        body = orjson.dumps(problem)
        content_type = b"application/problem+json"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *error.headers]
    return status, headers, body
