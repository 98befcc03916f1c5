"""Header rules for both directions of the proxy (RFC 9110 §7.6.1 hop-by-hop fields)."""

from __future__ import annotations

from gateway.types import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
    }
)
# The client's credentials are for the gateway, never for the upstream (backend `headers` carry its own).
CREDENTIALS = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"x-api-key", b"api-key"})
# Framing and addressing are recomputed for the upstream; forwarding and trace headers are rebuilt by
# the gateway (traceparent/tracestate from its own spans: tracing.AttemptSpan.inject).
_REBUILT = frozenset(
    {
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"forwarded",
        b"expect",
        b"traceparent",
        b"tracestate",
    }
)
_DROP_TO_UPSTREAM = HOP_BY_HOP | CREDENTIALS | _REBUILT
_DROP_TO_CLIENT = HOP_BY_HOP | frozenset({b"x-request-id", b"server-timing", b"traceparent"})
GATEWAY_PREFIX = b"x-gateway-"


def connection_named(headers: Headers) -> frozenset[bytes]:
    """Fields that the Connection header declares hop-by-hop."""
    named: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def to_upstream(headers: Headers, also_drop: frozenset[bytes] = frozenset()) -> Headers:
    """The client's headers minus hop-by-hop, credentials, framing, the gateway's own controls and
    `also_drop` (the names a backend sets itself); one pass, as this runs on every attempt."""
    kept = []
    named: set[bytes] | None = None
    for key, value in headers:
        if key in _DROP_TO_UPSTREAM or key in also_drop or key.startswith(GATEWAY_PREFIX):
            if key == b"connection":
                named = (named or set()) | {token.strip().lower() for token in value.split(b",")}
            continue
        kept.append((key, value))
    return [(k, v) for k, v in kept if k not in named] if named else kept


def to_client(raw: Headers) -> Headers:
    """The upstream's response headers minus hop-by-hop ones; names lower-cased for ASGI."""
    lowered = [(key.lower(), value) for key, value in raw]
    named = connection_named(lowered)
    return [
        (key, value)
        for key, value in lowered
        if key not in _DROP_TO_CLIENT and key not in named and not key.startswith(GATEWAY_PREFIX)
    ]


def forwarded_for(client_ip: str, incoming: bytes | None, trusted: bool) -> bytes:
    """X-Forwarded-For to send upstream: extend a trusted proxy's chain, replace anyone else's."""
    if trusted and incoming:
        return incoming + b", " + client_ip.encode()
    return client_ip.encode()
