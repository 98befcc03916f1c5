"""Traces from the real gateway, decoded from real OTLP protobuf by a receiver process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.otlp_receiver import fetch_requests, start_receiver, wait_for_spans
from tests.procs import DemoServer, Gateway

GatewayFactory = Callable[..., Gateway]
CHAT = {"model": "small", "messages": [{"role": "user", "content": "a very secret prompt"}]}
PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"


@pytest.fixture
def receiver() -> Iterator[str]:
    proc, url = start_receiver()
    yield url
    proc.stop()


def test_spans_links_attributes_and_no_secrets(
    demo_v1: DemoServer, demo_v2: DemoServer, gateway_factory: GatewayFactory, receiver: str
) -> None:
    demo_v1.reset()
    demo_v2.reset()
    demo_v2.control(mode="status", status=500, count=1)
    config: dict[str, Any] = {
        "telemetry": {"traces": {"exporter": "otlp", "endpoint": receiver, "sample_ratio": 1.0}},
        "routes": [
            {
                "name": "chat",
                "owner": "ml@example.com",
                "match": {"path": "/v1/chat/completions"},
                "backends": [
                    {"name": "v1", "url": demo_v1.url, "stable": True, "weight": 0, "model": "m1"},
                    {"name": "v2", "url": demo_v2.url, "weight": 100, "model": "m2"},
                ],
            }
        ],
    }
    gateway = gateway_factory(config, env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={
            "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
            "authorization": "Bearer sk-client-secret",
            "cookie": "session=cookie-secret",
        },
    )
    assert response.status_code == 200
    returned = response.headers["traceparent"].split("-")
    assert returned[1] == PARENT_TRACE
    spans = wait_for_spans(receiver, 3, timeout_s=5)
    server = next(s for s in spans if s["kind"] == "SERVER")
    clients = sorted((s for s in spans if s["kind"] == "CLIENT"), key=lambda s: s["attributes"]["gateway.attempt"])
    assert server["trace_id"] == PARENT_TRACE
    assert server["parent_span_id"] == PARENT_SPAN
    assert server["span_id"] == returned[2]
    assert [c["parent_span_id"] for c in clients] == [server["span_id"], server["span_id"]]
    attributes = server["attributes"]
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == "/v1/chat/completions"
    assert attributes["gateway.route"] == "chat"
    assert attributes["gateway.backend"] == "v1"
    assert attributes["gateway.fallback.reason"] == "status_5xx"
    assert attributes["gen_ai.request.model"] == "small"
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert "gateway.cost_usd" in attributes
    assert [c["attributes"]["gateway.backend"] for c in clients] == ["v2", "v1"]
    assert clients[0]["attributes"]["http.response.status_code"] == 500
    assert any(e["name"] == "gateway.fallback" for e in server["events"])
    # The upstream saw a traceparent naming the attempt's span, not the client's.
    upstream = dict(demo_v1.stats()["requests"][-1]["headers"])
    assert upstream["traceparent"].split("-")[2] == clients[1]["span_id"]
    # Nothing sensitive was exported.
    exported = "".join(r["raw"] + str(r["headers"]) for r in fetch_requests(receiver)).encode("latin-1")
    for secret in (b"sk-client-secret", b"cookie-secret", b"very secret prompt"):
        assert secret not in exported
