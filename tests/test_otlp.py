"""The OTLP span encoder against the SDK's own: the same request for every kind of span and value."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway.otlp import ReadableRecord, SpanRecord, encode_spans

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
