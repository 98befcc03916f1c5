"""A tiny OTLP/HTTP trace receiver for tests: decodes real OTLP protobuf and serves the spans as JSON.

    python -m tests.otlp_receiver --port 0      # prints "otlp receiver listening on http://127.0.0.1:PORT"

- `POST /v1/traces`: an `ExportTraceServiceRequest` in protobuf, optionally gzip- or deflate-encoded as
  `Content-Encoding` says; answered with an empty `ExportTraceServiceResponse`.
- `GET /spans`: every span received so far, flattened: trace_id, span_id, parent_span_id (hex), name,
  kind (SERVER, CLIENT, ...), attributes, events [{name, attributes}], status {code, message},
  resource (attributes), scope.
- `GET /requests`: each export request as received: its headers, and its decoded protobuf bytes as a
  latin-1 string (`raw`), for checks that a value appears nowhere in what was exported.
- `POST /reset`: forget everything.

In tests: `proc, url = start_receiver()`, then `fetch_spans(url)`, `wait_for_spans(url, n)`, `reset(url)`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

if TYPE_CHECKING:
    from tests.procs import Proc

READY = r"otlp receiver listening on (http://\S+)"


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        result[pair.key] = any_value(pair.value)
    return result


def flatten(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            span: Span
            for span in scope_spans.spans:
                spans.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "trace_state": span.trace_state,
                        "flags": span.flags,
                        "name": span.name,
                        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        "start_time_unix_nano": span.start_time_unix_nano,
                        "end_time_unix_nano": span.end_time_unix_nano,
                        "attributes": attributes(span.attributes),
                        "events": [
                            {
                                "name": event.name,
                                "time_unix_nano": event.time_unix_nano,
                                "attributes": attributes(event.attributes),
                            }
                            for event in span.events
                        ],
                        "links": [
                            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links
                        ],
                        "status": {
                            "code": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                            "message": span.status.message,
                        },
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    }
                )
    return spans


class Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []

    def add(self, request: ExportTraceServiceRequest, raw: bytes, headers: dict[str, str]) -> None:
        with self.lock:
            self.spans.extend(flatten(request))
            self.requests.append({"headers": headers, "raw": raw.decode("latin-1")})

    def reset(self) -> None:
        with self.lock:
            self.spans.clear()
            self.requests.clear()


def make_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stdout for the ready line
            pass

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: Any) -> None:
            self._reply(200, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:
            with store.lock:
                if self.path == "/spans":
                    return self._json(list(store.spans))
                if self.path == "/requests":
                    return self._json(list(store.requests))
            self._reply(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path == "/reset":
                store.reset()
                return self._reply(204, b"", "text/plain")
            if self.path != "/v1/traces":
                return self._reply(404, b"not found", "text/plain")
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
            except Exception as exc:
                return self._reply(400, f"cannot decode: {exc}".encode(), "text/plain")
            store.add(request, body, {k.lower(): v for k, v in self.headers.items()})
            self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    return Handler


def serve(host: str, port: int) -> None:
    store = Store()
    server = ThreadingHTTPServer((host, port), make_handler(store))
    server.daemon_threads = True
    bound_host, bound_port = server.server_address[:2]
    print(f"otlp receiver listening on http://{bound_host!s}:{bound_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.otlp_receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="0 picks a free port (printed on startup)")
    args = parser.parse_args(argv)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.host, args.port)


# Helpers for tests (the receiver itself needs none of these).


def start_receiver() -> tuple[Proc, str]:
    """Start the receiver as a child process; returns (tests.procs.Proc, base URL). Stop it with `proc.stop()`."""
    from tests.procs import Proc

    proc, match = Proc.start([sys.executable, "-m", "tests.otlp_receiver", "--port", "0"], ready=READY)
    return proc, match.group(1)


def fetch_spans(url: str) -> list[dict[str, Any]]:
    import httpx

    response = httpx.get(f"{url}/spans", timeout=5)
    response.raise_for_status()
    spans: list[dict[str, Any]] = response.json()
    return spans


def fetch_requests(url: str) -> list[dict[str, Any]]:
    import httpx

    response = httpx.get(f"{url}/requests", timeout=5)
    response.raise_for_status()
    requests: list[dict[str, Any]] = response.json()
    return requests


def reset(url: str) -> None:
    import httpx

    httpx.post(f"{url}/reset", timeout=5).raise_for_status()


def wait_for_spans(url: str, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The spans received once there are at least `count` (or whatever arrived when `timeout_s` passed)."""
    deadline = time.monotonic() + timeout_s
    spans = fetch_spans(url)
    while len(spans) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        spans = fetch_spans(url)
    return spans


if __name__ == "__main__":
    main()
