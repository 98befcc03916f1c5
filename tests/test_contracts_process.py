"""Contracts through the real gateway: 422 going in, contract failures coming out (JSON and SSE)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.procs import DemoServer, Gateway

GatewayFactory = Callable[..., Gateway]
Demos = tuple[DemoServer, DemoServer]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
FAST = {"connect_s": 0.3, "first_byte_s": 0.5, "idle_s": 0.5, "attempt_s": 0.6, "request_s": 2.0}


def chat_route(v1: DemoServer, v2: DemoServer, **extra: Any) -> dict[str, Any]:
    return {
        "name": "chat",
        "match": {"path": "/v1/chat/completions"},
        "contract": {"request": "openai.chat", "response": "openai.chat"},
        "backends": [
            {"name": "v1", "url": v1.url, "stable": True, "weight": 0},
            {"name": "v2", "url": v2.url, "weight": 100},
        ],
        "timeouts": FAST,
        **extra,
    }


def test_violating_request_gets_422_with_every_field(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory({"routes": [chat_route(v1, v2)]})
    bad = {"model": "m", "messages": [{"role": "robot", "content": "x"}], "temperature": 3, "n": 0}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=bad)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    pointers = {e["pointer"] for e in response.json()["errors"]}
    assert pointers == {"/messages/0/role", "/temperature", "/n"}
    assert v2.stats()["total"] == 0  # never forwarded
    missing = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "m"})
    assert missing.json()["errors"] == [{"pointer": "/messages", "message": '"messages" is a required property'}]
    not_json = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"x=1", headers={"content-type": "text/plain"})
    assert not_json.status_code == 422


def test_openai_error_format_for_contract_violations(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory({"routes": [chat_route(v1, v2, error_format="openai")]})
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "top_p": 2})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "contract_violation"
    assert error["param"] == "/top_p"
    assert "/top_p" in error["message"]


def test_apply_defaults_fills_missing_fields(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory(
        {"routes": [chat_route(v1, v2, contract={"request": "openai.chat", "apply_defaults": True})]}
    )
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code == 200
    forwarded = orjson.loads(v2.stats()["requests"][-1]["body"])
    assert forwarded["temperature"] == 1
    assert forwarded["messages"] == CHAT["messages"]


def test_response_violation_falls_back_to_stable(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="bad_contract")
    gateway = gateway_factory({"routes": [chat_route(v1, v2)]})
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-gateway-fallback"] == "contract"
    assert response.headers["x-gateway-backend"] == "v1"
    metrics = httpx.get(f"{gateway.admin_url}/metrics").text
    assert 'gateway_contract_violations_total{direction="response"' in metrics


def test_response_violation_without_fallback_is_a_502_naming_it(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="bad_contract", body={"id": "x", "object": "chat.completion", "choices": "nope"})
    route = chat_route(v1, v2, fallback={"when": ["status_5xx"]})
    gateway = gateway_factory({"routes": [route]})
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    problem = response.json()
    assert "breaks the openai.chat contract" in problem["detail"]
    assert any(e["pointer"] == "/choices" for e in problem["errors"])
    assert response.headers["content-type"] == "application/problem+json"  # the bad body is never passed on
    assert '"object"' not in response.text


def test_malformed_stream_event_is_dropped_and_counted(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="malformed_event", after_events=2)
    gateway = gateway_factory({"routes": [chat_route(v1, v2)]})
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        orjson.loads(line.removeprefix("data: "))  # garbage never reaches the client


def test_custom_schema_file_and_bad_schema_key_path(
    demos: Demos, gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    v1, v2 = demos
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["instances"],
        "properties": {"instances": {"type": "array", "items": {"type": "object", "required": ["age"]}}},
    }
    (tmp_path / "credit.json").write_text(json.dumps(schema))
    route = {
        "name": "credit",
        "match": {"path": "/echo"},
        "contract": {"request": "credit.json"},
        "backends": [{"name": "v1", "url": v1.url}],
    }
    gateway = gateway_factory({"routes": [route]})
    response = httpx.post(f"{gateway.url}/echo", json={"instances": [{"age": 3}, {}]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "/instances/1/age"
    assert httpx.post(f"{gateway.url}/echo", json={"instances": [{"age": 3}]}).status_code == 200
    (tmp_path / "broken.json").write_text(json.dumps({"type": "object", "minimum": "x"}))
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "routes:\n  - name: r\n    match: {path: /r}\n    contract: {response: broken.json, request: nope.json}\n"
        "    backends: [{name: b, url: 'http://127.0.0.1:1'}]\n"
    )
    check = subprocess.run([sys.executable, "-m", "gateway", "check", str(broken)], capture_output=True, text=True)
    assert check.returncode == 1
    paths = [line.split(":")[0] for line in check.stderr.splitlines()[1:]]
    assert paths == ["routes[0].contract.request", "routes[0].contract.response"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)))
def test_fuzzed_bodies_never_produce_a_500(demo_v1: DemoServer, contract_gateway: Gateway, body: bytes) -> None:
    response = httpx.post(
        f"{contract_gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 400, 422), response.text
    assert response.headers["x-request-id"]
