"""The OTLP span encoder against the SDK's own: the same request for every kind of span and value."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway.otlp import FastOTLPSpanExporter, ReadableRecord, SpanRecord, encode_spans
from tests.otlp_receiver import Store, make_handler

RESOURCE = Resource({"service.name": "gw", "service.version": "1.0"}, schema_url="https://schema/1")
OTHER_RESOURCE = Resource({"service.name": "other"})
SCOPE = InstrumentationScope("gateway", "1.0")
BARE_SCOPE = InstrumentationScope("bare")


class Colour(enum.StrEnum):
    RED = "red"


def span(
    span_id: int,
    *,
    parent: SpanContext | None = None,
    attributes: dict[str, Any] | None = None,
    events: tuple[Event, ...] = (),
    links: tuple[Link, ...] = (),
    kind: SpanKind = SpanKind.SERVER,
    status: Status | None = None,
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
    state: TraceState | None = None,
) -> ReadableSpan:
    context = SpanContext(0xABC, span_id, False, TraceFlags(1), state)
    return ReadableSpan(
        name=f"span {span_id}",
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes or {},
        events=events,
        links=links,
        kind=kind,
        instrumentation_scope=scope,
        status=status or Status(StatusCode.UNSET),
        start_time=1_700_000_000_000_000_000 + span_id,
        end_time=1_700_000_000_500_000_000 + span_id,
    )


SPANS = [
    span(
        1,
        parent=SpanContext(0xABC, 0x99, True, TraceFlags(1)),
        attributes={
            "url.path": "/v1/chat/completions",
            "server.port": 8080,
            "gateway.canary": False,
            "gateway.cost_usd": 0.00125,
            "big": 2**62,
            "negative": -3,
            "raw": b"\x00\xff",
            "nothing": None,
            "pointers": ["/messages/0", "/model"],
            "counts": [1, 2],
            "empty": [],
            "enum": Colour.RED,
            "nested": {"a": 1, "b": ["x"]},
        },
        events=(
            Event("gateway.fallback", {"gateway.fallback.reason": "status_5xx", "gateway.attempt": 1}, 5),
            Event("bare", None, 6),
        ),
        state=TraceState([("vendor", "abc"), ("other", "x")]),
    ),
    span(2, parent=SpanContext(0xABC, 1, False, TraceFlags(1)), kind=SpanKind.CLIENT),
    span(3, kind=SpanKind.INTERNAL, status=Status(StatusCode.ERROR, "upstream timed out")),
    span(4, status=Status(StatusCode.ERROR)),
    span(5, status=Status(StatusCode.OK)),
    span(6, links=(Link(SpanContext(0xDEF, 7, True, TraceFlags(1)), {"why": "retry"}),)),
    span(8, resource=OTHER_RESOURCE),
    span(9, scope=BARE_SCOPE),
    span(10, scope=None),
]


@pytest.mark.parametrize("index", range(len(SPANS)))
def test_each_span_encodes_as_the_sdk_encodes_it(index: int) -> None:
    spans = [SPANS[index]]
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == sdk_encode_spans(spans)


def test_a_batch_groups_by_resource_and_scope_as_the_sdk_does() -> None:
    ours = ExportTraceServiceRequest.FromString(encode_spans(SPANS))
    assert ours == sdk_encode_spans(SPANS)
    assert len(ours.resource_spans) == 2
    assert [len(r.scope_spans) for r in ours.resource_spans] == [3, 1]


def test_values_the_protocol_cannot_carry_are_refused() -> None:
    with pytest.raises(TypeError, match="attribute value of type object"):
        encode_spans([span(1, attributes={"odd": object()})])


def test_long_and_non_ascii_values_get_multi_byte_lengths() -> None:
    spans = [
        span(1, attributes={"prompt": "héllo wörld " * 40, "n": 300, "ü": "ß"}, events=(Event("é" * 200, None, 1),))
    ]
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == sdk_encode_spans(spans)


def test_floats_are_packed_onto_their_keys_encoding() -> None:
    # A float's key is encoded once and kept; each value is packed onto it (a short key and one whose
    # length takes two bytes).
    long_key = "gateway." + "k" * 150
    spans = [span(i + 1, attributes={"cost": i / 7, long_key: -i * 1e300, "n": 1.0}) for i in range(3)]
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == sdk_encode_spans(spans)


def test_repeated_and_high_cardinality_attributes_encode_the_same_every_time() -> None:
    # Values are cached by key and value; past the cache's size it starts over, with the same output.
    spans = [
        span(i + 1, attributes={"route": "chat", "tokens": i, "canary": i % 2 == 0, "id": f"r{i}"}) for i in range(5000)
    ]
    first = encode_spans(spans)
    assert encode_spans(spans) == first
    assert ExportTraceServiceRequest.FromString(first) == sdk_encode_spans(spans)


def test_span_records_are_framed_with_the_exporters_resource_and_scope() -> None:
    # The gateway queues its own span records; they belong to the exporter's resource and scope.
    records = [ReadableRecord(s) for s in SPANS[:6]]
    framed = ExportTraceServiceRequest.FromString(encode_spans(records, RESOURCE, SCOPE))
    assert framed == sdk_encode_spans(SPANS[:6])


def test_a_batch_can_mix_records_and_readable_spans() -> None:
    batch: list[ReadableSpan | SpanRecord] = [ReadableRecord(SPANS[0]), SPANS[6], ReadableRecord(SPANS[1])]
    ours = ExportTraceServiceRequest.FromString(encode_spans(batch, RESOURCE, SCOPE))
    assert ours == sdk_encode_spans([SPANS[0], SPANS[6], SPANS[1]])


def test_span_records_without_a_resource_are_refused() -> None:
    with pytest.raises(ValueError, match="resource"):
        encode_spans([ReadableRecord(SPANS[1])])


# How the exporter sends: urllib3 unless requests would add something from the environment.

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "NETRC")


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, str]]:
    """The test receiver's handler on a loopback port in this process, and an environment without proxies."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    store = Store()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(store))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield store, f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


def test_the_exporter_sends_with_urllib3_when_requests_would_add_nothing(receiver: tuple[Store, str]) -> None:
    store, url = receiver
    exporter = FastOTLPSpanExporter(endpoint=url, headers={"x-team": "ml-platform"}, compression=None)
    try:
        assert exporter.transport == "urllib3"
        assert exporter.export([SPANS[0], SPANS[1]]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped
    assert [span["name"] for span in store.spans] == ["span 1", "span 2"]
    assert store.spans[0]["attributes"]["gateway.cost_usd"] == 0.00125
    headers = store.requests[0]["headers"]
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-team"] == "ml-platform"  # the exporter's own headers still go out
    assert headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")


def test_a_failed_export_through_urllib3_is_reported(receiver: tuple[Store, str]) -> None:
    _, url = receiver
    exporter = FastOTLPSpanExporter(endpoint=url.replace("/v1/traces", "/nowhere"), timeout=2)
    try:
        assert exporter.transport == "urllib3"
        assert exporter.export([SPANS[1]]) is SpanExportResult.FAILURE  # a 404 is not retried
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped


@pytest.mark.parametrize(
    "variable",
    [("HTTP_PROXY", "http://proxy.internal:3128"), ("all_proxy", "http://proxy.internal:3128")],
)
def test_requests_stays_when_a_proxy_applies_to_the_endpoint(
    receiver: tuple[Store, str], monkeypatch: pytest.MonkeyPatch, variable: tuple[str, str]
) -> None:
    _, url = receiver
    monkeypatch.setenv(*variable)
    exporter = FastOTLPSpanExporter(endpoint=url)
    assert exporter.transport == "requests"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # ... and not when the endpoint bypasses the proxy
    assert FastOTLPSpanExporter(endpoint=url).transport == "urllib3"


def test_requests_stays_when_netrc_has_credentials_for_the_endpoint(
    receiver: tuple[Store, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, url = receiver
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login collector password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert FastOTLPSpanExporter(endpoint=url).transport == "requests"


@pytest.mark.parametrize("bundle", [None, "/etc/ssl/collector-ca.pem"])
def test_urllib3_verifies_with_the_ca_bundle_requests_would_use(
    receiver: tuple[Store, str], monkeypatch: pytest.MonkeyPatch, bundle: str | None
) -> None:
    import requests.utils

    import gateway.otlp

    _, url = receiver
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    if bundle is not None:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    given: dict[str, Any] = {}

    class Recorded:
        def __init__(self, **settings: Any) -> None:
            given.update(settings)

    monkeypatch.setattr(gateway.otlp, "Urllib3HTTPTransport", Recorded)
    exporter = FastOTLPSpanExporter(endpoint=url.replace("http://", "https://"))
    assert exporter.transport == "urllib3"
    assert given == {"verify": bundle or requests.utils.DEFAULT_CA_BUNDLE_PATH, "cert": None}
