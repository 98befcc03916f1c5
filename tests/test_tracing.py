"""Traces: spans exported with the real OTLP/HTTP exporter to a receiver process that decodes the protobuf."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import Telemetry
from gateway.contracts.violation import Violation
from gateway.tracing import TRACE_HEADERS, Tracing, format_traceparent, parse_traceparent
from tests.otlp_receiver import fetch_requests, reset, start_receiver, wait_for_spans

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SECRETS = ("Bearer sk-client-secret", "session=cookie-secret", "key-secret-123", "pw-secret")
PROMPT = "Tell me the launch codes, my name is Alice Example"
ANSWER = "The codes are 0000, Alice"
CHAT = "/v1/chat/completions"
OTEL_VARIABLES = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    proc, url = start_receiver()
    yield url
    proc.stop()


@pytest.fixture
def otlp(receiver: str) -> str:
    reset(receiver)
    return receiver


def telemetry(**telemetry: Any) -> Telemetry:
    """A telemetry section as the config file would give it (so "set in the file" is what the dict says)."""
    return Telemetry.model_validate(telemetry)


def client_headers(traceparent: str | None = None, tracestate: str | None = None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"host", b"gw.example:8443"),
        (b"user-agent", b"test-client/1.0"),
        (b"content-type", b"application/json"),
        (b"authorization", SECRETS[0].encode()),
        (b"cookie", SECRETS[1].encode()),
        (b"x-api-key", SECRETS[2].encode()),
    ]
    if traceparent is not None:
        headers.append((b"traceparent", traceparent.encode()))
    if tracestate is not None:
        headers.append((b"tracestate", tracestate.encode()))
    return headers


def start(tracing: Tracing, headers: list[tuple[bytes, bytes]] | None = None, path: str = CHAT) -> Any:
    return tracing.start_request(
        "POST", path, "https", client_headers() if headers is None else headers, "10.1.2.3", ("127.0.0.1", 8080)
    )


def run_request(tracing: Tracing) -> dict[str, Any]:
    """One request with an incoming traceparent, a failed attempt, a fallback and a successful second attempt."""
    headers = client_headers(f"00-{TRACE_ID}-{PARENT_ID}-01", "vendor=abc")
    request = start(tracing, headers)
    request.set_route("chat", "ml-platform@example.com", CHAT)
    request.set_request_model("small-chat")
    request.capture_prompt({"model": "small-chat", "messages": [{"role": "user", "content": PROMPT}]})
    url = f"http://user:{SECRETS[3]}@127.0.0.1:9001{CHAT}?api_key={SECRETS[2]}&mode=fast"
    first = request.attempt("v2", "POST", url, 1, canary=True, model="llama-v2")
    first_headers = first.inject()
    first.end(None, "timeout")
    request.fallback("timeout", "v2", 1)
    request.circuit("v2", "closed", "open", "5 of 8 attempts failed")
    second = request.attempt("v1", "POST", f"http://127.0.0.1:9002{CHAT}", 2, canary=False, model="llama-v1")
    second_headers = second.inject()
    second.end(200)
    request.contract_violation(
        "response", [Violation("/choices/0/message/content", f"{PROMPT!r} is too long", "maxLength")], backend="v1"
    )
    request.capture_completion({"choices": [{"message": {"role": "assistant", "content": ANSWER}}]})
    response_traceparent = request.traceparent
    request.end(
        200,
        backend="v1",
        attempts=2,
        fallback_reason="timeout",
        cost_usd=0.0021,
        cost_estimated=False,
        input_tokens=12,
        output_tokens=34,
        response_model="llama-v1",
        canary=False,
    )
    assert tracing.force_flush()
    return {"first": first_headers, "second": second_headers, "response": response_traceparent}


def by_kind(spans: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["kind"] == kind), key=lambda s: s["start_time_unix_nano"])


def test_spans_reach_an_otlp_receiver_with_links_attributes_and_events(otlp: str) -> None:
    tracing = Tracing(telemetry(traces={"exporter": "otlp", "endpoint": otlp}), service_version="9.9.9")
    try:
        sent = run_request(tracing)
        spans = wait_for_spans(otlp, 3)
    finally:
        tracing.shutdown()

    assert len(spans) == 3
    (server,) = by_kind(spans, "SERVER")
    first, second = by_kind(spans, "CLIENT")

    # The SERVER span continues the client's trace; attempts are its children.
    assert server["trace_id"] == TRACE_ID
    assert server["parent_span_id"] == PARENT_ID
    assert server["trace_state"] == "vendor=abc"
    assert server["name"] == f"POST {CHAT}"
    assert {first["parent_span_id"], second["parent_span_id"]} == {server["span_id"]}
    assert {first["trace_id"], second["trace_id"]} == {TRACE_ID}
    assert first["name"] == second["name"] == "POST"
    assert server["resource"]["service.name"] == "inference-gateway"
    assert server["resource"]["service.version"] == "9.9.9"

    # What was sent upstream names each attempt span; the response names the server span.
    assert sent["first"] == [
        (b"traceparent", f"00-{TRACE_ID}-{first['span_id']}-01".encode()),
        (b"tracestate", b"vendor=abc"),
    ]
    assert sent["second"][0] == (b"traceparent", f"00-{TRACE_ID}-{second['span_id']}-01".encode())
    assert sent["response"] == f"00-{TRACE_ID}-{server['span_id']}-01".encode()

    attributes = server["attributes"]
    assert (
        attributes
        | {
            "http.request.method": "POST",
            "url.path": CHAT,
            "url.scheme": "https",
            "http.route": CHAT,
            "http.response.status_code": 200,
            "server.address": "gw.example",
            "server.port": 8443,
            "client.address": "10.1.2.3",
            "user_agent.original": "test-client/1.0",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "small-chat",
            "gen_ai.response.model": "llama-v1",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 34,
            "gateway.route": "chat",
            "gateway.route.owner": "ml-platform@example.com",
            "gateway.backend": "v1",
            "gateway.attempts": 2,
            "gateway.fallback.reason": "timeout",
            "gateway.cost_usd": 0.0021,
            "gateway.cost_estimated": False,
            "gateway.canary": False,
        }
        == attributes
    )
    assert "error.type" not in attributes
    assert server["status"]["code"] == "UNSET"
    events = {e["name"]: e["attributes"] for e in server["events"]}
    assert set(events) == {"gateway.fallback", "gateway.circuit", "gateway.contract_violation"}  # no content events
    assert events["gateway.fallback"] == {
        "gateway.fallback.reason": "timeout",
        "gateway.backend": "v2",
        "gateway.attempt": 1,
    }
    assert events["gateway.circuit"]["gateway.circuit.to"] == "open"
    assert events["gateway.contract_violation"] == {
        "gateway.contract.direction": "response",
        "gateway.contract.pointers": ["/choices/0/message/content"],
        "gateway.contract.violations": 1,
        "gateway.contract.keywords": ["maxLength"],
        "gateway.backend": "v1",
    }

    assert first["status"]["code"] == "ERROR"
    assert (
        first["attributes"]
        | {
            "http.request.method": "POST",
            "server.address": "127.0.0.1",
            "server.port": 9001,
            "url.full": f"http://REDACTED:REDACTED@127.0.0.1:9001{CHAT}?api_key=REDACTED&mode=REDACTED",
            "error.type": "timeout",
            "gateway.backend": "v2",
            "gateway.attempt": 1,
            "gateway.canary": True,
            "gateway.route": "chat",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "llama-v2",
        }
        == first["attributes"]
    )
    assert "http.response.status_code" not in first["attributes"]
    assert second["status"]["code"] == "UNSET"
    assert second["attributes"]["http.response.status_code"] == 200
    assert second["attributes"]["http.request.resend_count"] == 1
    assert second["attributes"]["gateway.attempt"] == 2
    assert "error.type" not in second["attributes"]

    # Nothing sensitive anywhere in what was exported: credentials, keys, the prompt, the answer.
    raw = "".join(r["raw"] for r in fetch_requests(otlp))
    for secret in (*SECRETS, "sk-client-secret", "cookie-secret", PROMPT, ANSWER, "Alice"):
        assert secret not in raw


def test_without_the_exporters_http_client_spans_take_the_sdks_own_path(
    otlp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Should a release of the OTLP exporter rename the client the fast path sends with, spans are
    # handed over as ReadableSpans and the SDK encodes and sends them: slower, the same spans.
    from gateway.otlp import FastOTLPSpanExporter

    monkeypatch.setattr(FastOTLPSpanExporter, "takes_records", property(lambda self: False))
    tracing = Tracing(telemetry(traces={"exporter": "otlp", "endpoint": otlp}))
    try:
        assert not tracing._records
        run_request(tracing)
        spans = wait_for_spans(otlp, 3)
    finally:
        tracing.shutdown()
    assert sorted(s["kind"] for s in spans) == ["CLIENT", "CLIENT", "SERVER"]
    (server,) = by_kind(spans, "SERVER")
    assert server["trace_id"] == TRACE_ID and server["attributes"]["gateway.route"] == "chat"


def test_capture_content_puts_prompts_and_outputs_in_events(otlp: str) -> None:
    tracing = Tracing(telemetry(traces={"exporter": "otlp", "endpoint": otlp}, capture_content=True))
    try:
        run_request(tracing)
        spans = wait_for_spans(otlp, 3)
    finally:
        tracing.shutdown()
    (server,) = by_kind(spans, "SERVER")
    events = {e["name"]: e["attributes"] for e in server["events"]}
    assert PROMPT in events["gen_ai.content.prompt"]["gen_ai.prompt"]
    assert '"role":"user"' in events["gen_ai.content.prompt"]["gen_ai.prompt"]
    assert ANSWER in events["gen_ai.content.completion"]["gen_ai.completion"]
    assert PROMPT in events["gateway.contract_violation"]["gateway.contract.messages"][0]
    raw = "".join(r["raw"] for r in fetch_requests(otlp))
    assert PROMPT in raw
    for secret in (*SECRETS, "sk-client-secret", "cookie-secret"):  # capture_content never exports credentials
        assert secret not in raw


def test_content_is_bounded() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(telemetry(capture_content=True), exporter=exporter, content_limit=100)
    request = start(tracing)
    request.capture_prompt({"prompt": "x" * 1000})
    request.capture_completion("y" * 50)
    request.end(200)
    tracing.shutdown()
    prompt, completion = exporter.get_finished_spans()[0].events
    assert prompt.attributes == {"gen_ai.prompt": "x" * 100, "gateway.content.truncated": True}
    assert completion.attributes == {"gen_ai.completion": "y" * 50, "gateway.content.truncated": False}


def memory_tracing(**telemetry_: Any) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(telemetry(**telemetry_), exporter=exporter, rng=random.Random(7)), exporter


def finish(tracing: Tracing, exporter: InMemorySpanExporter) -> list[Any]:
    tracing.force_flush()
    spans = list(exporter.get_finished_spans())
    tracing.shutdown()
    return spans


def test_ratio_zero_records_nothing_but_still_propagates_a_context() -> None:
    tracing, exporter = memory_tracing(traces={"sample_ratio": 0.0})
    request = start(tracing)
    assert not request.recording
    attempt = request.attempt("v1", "POST", "http://127.0.0.1:9001/v1/chat/completions", 1)
    assert not attempt.recording
    (header,) = attempt.inject()
    trace_id, span_id, flags = parse_traceparent(header[1]) or (0, 0, 0)
    assert header[0] == b"traceparent"
    assert (trace_id, span_id) == (request.trace_id, request.span_id)  # unsampled: the request's own context
    assert flags & 1 == 0
    assert request.traceparent == header[1]
    assert request.trace_id_hex == f"{trace_id:032x}"
    request.set_route("chat", None, CHAT)
    request.fallback("timeout", "v1", 1)
    attempt.end(None, "timeout")
    request.end(500)
    assert finish(tracing, exporter) == []


def test_ratio_zero_follows_a_sampled_parent() -> None:
    tracing, exporter = memory_tracing(traces={"sample_ratio": 0.0})
    request = start(tracing, client_headers(f"00-{TRACE_ID}-{PARENT_ID}-01"))
    assert request.recording
    request.attempt("v1", "POST", "http://127.0.0.1:9001/x", 1).end(200)
    request.end(200)
    spans = finish(tracing, exporter)
    assert len(spans) == 2
    assert {f"{s.context.trace_id:032x}" for s in spans} == {TRACE_ID}


def test_an_unsampled_parent_is_not_recorded_and_its_tracestate_passes_on() -> None:
    tracing, exporter = memory_tracing(traces={"sample_ratio": 1.0})
    request = start(tracing, client_headers(f"00-{TRACE_ID}-{PARENT_ID}-00", "vendor=abc"))
    assert not request.recording
    traceparent, tracestate = request.attempt("v1", "POST", "http://127.0.0.1:9001/x", 1).inject()
    assert traceparent[1].startswith(f"00-{TRACE_ID}-".encode())
    assert traceparent[1].endswith(b"-00")
    assert PARENT_ID.encode() not in traceparent[1]  # the gateway's own (unrecorded) span is the parent
    assert tracestate == (b"tracestate", b"vendor=abc")
    request.end(200)
    assert finish(tracing, exporter) == []


def test_sampling_ratio_applies_to_new_traces() -> None:
    tracing, exporter = memory_tracing(traces={"sample_ratio": 0.25})
    sampled: set[int] = set()
    for _ in range(2000):
        request = start(tracing)
        if request.recording:
            sampled.add(request.trace_id)
        request.end(200)
    assert 400 < len(sampled) < 600
    # The decision is the SDK's TraceIdRatioBased rule on the trace id the span really has.
    exported = {span.context.trace_id for span in finish(tracing, exporter)}
    assert exported == sampled
    assert all(trace_id & (2**64 - 1) < 2**62 for trace_id in exported)


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
        f"00-{TRACE_ID}-{PARENT_ID}-0",
        f"00_{TRACE_ID}-{PARENT_ID}-01",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(traceparent: str) -> None:
    assert parse_traceparent(traceparent.encode()) is None
    tracing, exporter = memory_tracing()
    request = start(tracing, client_headers(traceparent, "vendor=abc"))
    request.end(200)
    (span,) = finish(tracing, exporter)
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" != TRACE_ID
    assert not span.context.trace_state  # a tracestate without a valid traceparent is dropped


def test_traceparent_parsing() -> None:
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-01".encode()) == (int(TRACE_ID, 16), int(PARENT_ID, 16), 1)
    assert parse_traceparent(f" 00-{TRACE_ID}-{PARENT_ID}-03 ".encode()) == (int(TRACE_ID, 16), int(PARENT_ID, 16), 3)
    # A later version may add fields after a dash; the known ones are read.
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-01-what-ever".encode()) == (
        int(TRACE_ID, 16),
        int(PARENT_ID, 16),
        1,
    )
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-01x".encode()) is None
    assert format_traceparent(int(TRACE_ID, 16), int(PARENT_ID, 16), 1) == f"00-{TRACE_ID}-{PARENT_ID}-01".encode()


def test_two_traceparents_start_a_new_trace() -> None:
    tracing, exporter = memory_tracing()
    headers = client_headers(f"00-{TRACE_ID}-{PARENT_ID}-01")
    headers.append((b"traceparent", f"00-{'1' * 32}-{PARENT_ID}-01".encode()))
    start(tracing, headers).end(200)
    (span,) = finish(tracing, exporter)
    assert span.parent is None


def test_tracing_off_costs_nothing_and_passes_trace_headers_through() -> None:
    tracing = Tracing(telemetry())
    assert not tracing.enabled
    assert repr(tracing) == "<Tracing off>"
    headers = client_headers(f"00-{TRACE_ID}-{PARENT_ID}-01", "vendor=abc")
    request = start(tracing, headers)
    assert not request.recording
    assert request.traceparent is None
    assert request.trace_id_hex is None
    attempt = request.attempt("v1", "POST", "http://127.0.0.1:9001/x", 1)
    assert attempt.inject() == [(k, v) for k, v in headers if k in TRACE_HEADERS]
    attempt.end(200)
    request.end(200)
    tracing.shutdown()


def test_status_rules_follow_the_http_conventions() -> None:
    tracing, exporter = memory_tracing()
    cases = [(404, None), (422, "contract_violation"), (502, None), (None, "client_disconnected"), (200, "idle")]
    for status, error_type in cases:
        request = start(tracing)
        attempt = request.attempt("v1", "POST", "http://127.0.0.1:9001/x", 1)
        attempt.end(404 if status == 404 else 503)
        request.end(status, error_type=error_type)
        request.end(200)  # a second end changes nothing
    spans = finish(tracing, exporter)
    servers = [s for s in spans if s.kind.name == "SERVER"]
    clients = [s for s in spans if s.kind.name == "CLIENT"]
    assert [s.status.status_code.name for s in servers] == ["UNSET", "UNSET", "ERROR", "ERROR", "ERROR"]
    assert [(s.attributes or {}).get("error.type") for s in servers] == [
        None,
        "contract_violation",
        "502",
        "client_disconnected",
        "idle",
    ]
    assert [s.status.status_code.name for s in clients] == ["ERROR"] * 5  # a 4xx fails a client span
    assert [(s.attributes or {}).get("error.type") for s in clients] == ["404", "503", "503", "503", "503"]


def test_non_llm_routes_and_odd_methods() -> None:
    tracing, exporter = memory_tracing()
    request = tracing.start_request("PURGE", "/v2/models/credit/infer", "http", [], "", ("10.0.0.5", 8080))
    request.set_route("credit", None, "/v2/models")
    request.set_request_model("credit")
    request.attempt("kserve", "PURGE", "https://models.internal/v2/models/credit/infer", 1).end(200)
    request.end(200)
    spans = finish(tracing, exporter)
    server = next(s for s in spans if s.kind.name == "SERVER")
    client = next(s for s in spans if s.kind.name == "CLIENT")
    assert server.name == "HTTP /v2/models"
    assert server.attributes is not None and client.attributes is not None
    assert server.attributes["http.request.method"] == "_OTHER"
    assert server.attributes["http.request.method_original"] == "PURGE"
    assert server.attributes["gateway.request.model"] == "credit"
    assert "gen_ai.request.model" not in server.attributes
    assert (server.attributes["server.address"], server.attributes["server.port"]) == ("10.0.0.5", 8080)
    assert client.name == "HTTP"
    assert client.attributes["server.port"] == 443
    assert "gen_ai.operation.name" not in client.attributes


def test_attempts_on_one_url_get_their_own_attributes() -> None:
    # CLIENT attributes are worked out once per URL; each span still gets its own copy.
    tracing, exporter = memory_tracing()
    request = start(tracing)
    url = "http://127.0.0.1:9001" + CHAT
    request.attempt("v1", "POST", url, 1).end(502)
    request.attempt("v1", "POST", url, 2, hedge=True).end(200)
    request.end(200)
    clients = sorted(
        (s for s in finish(tracing, exporter) if s.kind.name == "CLIENT"), key=lambda s: s.attributes["gateway.attempt"]
    )
    assert len(clients) == 2
    first, second = clients
    assert first.attributes["url.full"] == second.attributes["url.full"] == url
    assert first.attributes["http.response.status_code"] == 502 and "gateway.hedge" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1 and second.attributes["gateway.hedge"] is True


def test_current_is_the_running_sampled_request() -> None:
    tracing, exporter = memory_tracing()
    assert not tracing.current().recording
    request = start(tracing)
    assert tracing.current() is request
    tracing.current().circuit("v1", "closed", "open", "failure ratio 0.6")
    request.end(200)
    assert not tracing.current().recording
    (span,) = finish(tracing, exporter)
    assert [e.name for e in span.events] == ["gateway.circuit"]


def test_config_file_settings_win_over_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,service.name=from-attributes")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.0")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")

    from_env = Tracing(telemetry(), exporter=InMemorySpanExporter())
    assert from_env.service_name == "from-env"
    assert from_env.sample_ratio == 0.0
    assert Tracing(telemetry()).kind == "console"
    assert Tracing(telemetry(traces={"exporter": "none"})).kind == "none"

    from_file = Tracing(
        telemetry(service_name="from-file", traces={"sample_ratio": 0.5}), exporter=InMemorySpanExporter()
    )
    assert from_file.service_name == "from-file"
    assert from_file.sample_ratio == 0.5
    exporter = InMemorySpanExporter()
    tracing = Tracing(telemetry(traces={"sample_ratio": 1.0}), exporter=exporter)
    start(tracing).end(200)
    (span,) = finish(tracing, exporter)
    assert span.resource.attributes["deployment.environment"] == "test"
    assert span.resource.attributes["service.name"] == "from-env"
    for t in (from_env, from_file):
        t.shutdown()


def test_sampler_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert Tracing(telemetry(), exporter=InMemorySpanExporter()).sample_ratio == 0.0
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.3")
    assert repr(Tracing(telemetry(), exporter=InMemorySpanExporter())).endswith(
        "traceidratio(0.3) capture_content=False>"
    )
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    assert Tracing(telemetry(), exporter=InMemorySpanExporter()).sample_ratio == 0.3
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")
    assert Tracing(telemetry(), exporter=InMemorySpanExporter()).sample_ratio == 1.0
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert not Tracing(telemetry()).enabled
    assert not Tracing(telemetry(traces={"exporter": "console"})).enabled  # the kill switch beats the file
    assert not Tracing(telemetry(), exporter=InMemorySpanExporter()).enabled


def test_otlp_endpoint_headers_and_compression_from_variables(otlp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-tenant=team-a")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    tracing = Tracing(telemetry(traces={"exporter": "otlp"}))
    assert tracing.endpoint == f"{otlp}/v1/traces"
    try:
        start(tracing).end(200)
        tracing.force_flush()
        assert len(wait_for_spans(otlp, 1)) == 1
    finally:
        tracing.shutdown()
    (request,) = fetch_requests(otlp)
    assert request["headers"]["x-collector-tenant"] == "team-a"
    assert request["headers"]["content-encoding"] == "gzip"
    assert request["headers"]["content-type"] == "application/x-protobuf"

    # The file's endpoint wins over the variable.
    file_tracing = Tracing(telemetry(traces={"exporter": "otlp", "endpoint": "http://127.0.0.1:1/"}))
    assert file_tracing.endpoint == "http://127.0.0.1:1/v1/traces"
    file_tracing.shutdown(timeout_s=0.1)


def test_shutdown_is_bounded_when_the_collector_is_gone() -> None:
    tracing = Tracing(telemetry(traces={"exporter": "otlp", "endpoint": "http://127.0.0.1:9"}))
    for _ in range(5):
        start(tracing).end(200)
    started = time.monotonic()
    tracing.shutdown(timeout_s=0.5)
    assert time.monotonic() - started < 3.0
    assert not tracing.enabled
    assert not start(tracing).recording


def test_decisions_outside_requests_are_internal_spans() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(Telemetry(), exporter=exporter)
    tracing.decision("rollback", "chat", {"gateway.reason": "error_rate_delta 0.3 > 0.02"})
    tracing.force_flush()
    (span,) = exporter.get_finished_spans()
    assert span.name == "gateway.rollback"
    assert span.attributes is not None and span.attributes["gateway.route"] == "chat"
    assert span.events[0].attributes == {"gateway.reason": "error_rate_delta 0.3 > 0.02"}
    tracing.shutdown()
    Tracing(Telemetry()).decision("rollback", "chat", {})  # tracing off: a no-op


def test_a_span_ended_after_its_request_keeps_the_requests_duration() -> None:
    """Accounting runs a little after the response (AfterResponse): the span ends when the request did."""
    tracing, exporter = memory_tracing()
    request = start(tracing)
    time.sleep(0.03)  # the deferred work runs later than the response's end
    request.end(200, duration_s=0.25)
    (span,) = finish(tracing, exporter)
    assert span.end_time - span.start_time == 250_000_000


def test_each_attribute_key_the_gateway_sets_has_one_type() -> None:
    """otlp._OwnPairCache caches the gateway's attributes by (key, value): under a key that took both
    True and 1 (equal, as Python compares them), one would be exported with the other's type."""
    tracing, exporter = memory_tracing(capture_content=True)
    run_request(tracing)
    request = start(tracing)
    request.set_route("embed", None, "/v1/embeddings")
    request.set_request_model("e5")
    hedge = request.attempt("v3", "POST", "http://127.0.0.1:9003/v1/embeddings", 3, hedge=True)
    hedge.end(503, extra={"gateway.hedge.won": False})
    request.end(None, attempts=3, cost_usd=0.0, tenant="team-a", cache="miss", error_type="stream_interrupted")
    tracing.decision("rollback", "chat", {"gateway.canary.weight": 0.0, "gateway.reason": "p99"})
    spans = finish(tracing, exporter)
    types: dict[str, set[type]] = {}
    for span in spans:
        for attributes in (span.attributes, *(event.attributes for event in span.events)):
            for key, value in (attributes or {}).items():
                types.setdefault(key, set()).add(type(value))
    assert len(spans) == 6 and "gateway.hedge" in types and "gateway.content.truncated" in types
    assert {key: kinds for key, kinds in types.items() if len(kinds) > 1} == {}
