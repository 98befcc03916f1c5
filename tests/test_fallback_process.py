"""Canary routing, fallback and stream resilience: the real gateway in front of real demo servers.

Each test asserts what the client saw and what every upstream saw (attempts and timing).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.procs import DemoServer, Gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "alpha beta gamma delta epsilon zeta"}]}
STREAM = {**CHAT, "stream": True}
FAST = {"connect_s": 0.3, "first_byte_s": 0.4, "idle_s": 0.4, "attempt_s": 0.6, "request_s": 2.0}
GatewayFactory = Callable[..., Gateway]
Demos = tuple[DemoServer, DemoServer]


def canary(v1: DemoServer, v2: DemoServer, weights: tuple[float, float] = (0, 100), **extra: Any) -> dict[str, Any]:
    """A chat route with stable v1 and canary v2; by default every request picks the canary first."""
    route: dict[str, Any] = {
        "name": "chat",
        "match": {"path": "/v1/chat/completions"},
        "backends": [
            {"name": "v1", "url": v1.url, "stable": True, "weight": weights[0], "model": "model-v1"},
            {"name": "v2", "url": v2.url, "weight": weights[1], "model": "model-v2"},
        ],
        "timeouts": FAST,
        "fallback": {"when": ["status_5xx", "timeout", "connect", "contract", "circuit_open"], "max_attempts": 2},
    }
    for key, value in extra.items():
        route[key] = {**route[key], **value} if isinstance(value, dict) and key in route else value
    return {"routes": [route]}


def seen(server: DemoServer) -> int:
    return int(server.stats()["paths"].get("/v1/chat/completions", 0))


def events(response: httpx.Response) -> list[str]:
    return [line for line in response.iter_lines() if line]


def stream(gateway: Gateway, body: dict[str, Any] = STREAM) -> tuple[httpx.Response, list[str]]:
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=10) as response:
        return response, events(response)


def content(lines: list[str]) -> str:
    text = []
    for line in lines:
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def test_5xx_falls_back_to_stable(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=503)
    gateway = gateway_factory(canary(v1, v2))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == "v1"
    assert response.headers["x-gateway-attempts"] == "2"
    assert response.headers["x-gateway-fallback"] == "status_5xx"
    assert response.json()["model"] == "model-v1"  # the answering backend's model
    assert (seen(v1), seen(v2)) == (1, 1)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [({"mode": "reset"}, "connect"), ({"mode": "silent"}, "timeout")],
    ids=["reset-before-headers", "silent-before-first-byte"],
)
def test_transport_failures_fall_back(
    demos: Demos, gateway_factory: GatewayFactory, behaviour: dict[str, Any], reason: str
) -> None:
    v1, v2 = demos
    v2.control(**behaviour)
    gateway = gateway_factory(canary(v1, v2))
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["x-gateway-fallback"] == reason
    assert (seen(v1), seen(v2)) == (1, 1)
    if reason == "timeout":
        assert 0.35 < elapsed < 1.5  # first_byte_s is 0.4


def test_connection_refused_falls_back(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    config = canary(v1, v2)
    config["routes"][0]["backends"][1]["url"] = "http://127.0.0.1:9"
    gateway = gateway_factory(config)
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-gateway-fallback"] == "connect"
    assert seen(v1) == 1


def test_stream_failure_before_first_event_is_invisible(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="silent")
    gateway = gateway_factory(canary(v1, v2))
    response, lines = stream(gateway)
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == "v1"
    assert lines[-1] == "data: [DONE]"
    assert "event: error" not in lines
    assert content(lines).startswith("You said:")


def test_stall_mid_stream_ends_with_an_error_event(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="stall", after_events=2)
    gateway = gateway_factory(canary(v1, v2))
    started = time.monotonic()
    response, lines = stream(gateway)
    assert response.status_code == 200
    assert time.monotonic() - started < 2.0  # idle_s is 0.4: the stall is cut, not waited out
    assert lines[-2] == "event: error"
    error = orjson.loads(lines[-1].removeprefix("data: "))["error"]
    assert "no bytes for 0.4s" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "data: [DONE]" not in lines
    assert seen(v1) == 0  # bytes had reached the client: no fallback without resume_streams


def test_cut_stream_without_terminating_chunk(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="cut", after_events=3)
    gateway = gateway_factory(canary(v1, v2))
    response, lines = stream(gateway)
    assert lines[-2] == "event: error"
    assert "data: [DONE]" not in lines


def test_malformed_event_is_dropped_and_the_stream_goes_on(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="malformed_event", after_events=2)
    gateway = gateway_factory(canary(v1, v2))
    response, lines = stream(gateway)
    assert all(line.startswith(("data: {", "data: [DONE]")) for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert content(lines) == "You said: alpha beta gamma delta epsilon zeta"


def test_missing_done_is_added_after_a_clean_final_chunk(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="no_done")
    gateway = gateway_factory(canary(v1, v2))
    response, lines = stream(gateway)
    assert lines[-1] == "data: [DONE]"
    assert "event: error" not in lines


def test_usage_chunk_is_requested_and_hidden_from_a_client_that_did_not_ask(
    demos: Demos, gateway_factory: GatewayFactory
) -> None:
    v1, v2 = demos
    gateway = gateway_factory(canary(v1, v2))
    _, lines = stream(gateway)
    upstream_body = orjson.loads(v2.stats()["requests"][-1]["body"])
    assert upstream_body["stream_options"] == {"include_usage": True}
    assert not any('"choices":[]' in line for line in lines)
    _, asked = stream(gateway, {**STREAM, "stream_options": {"include_usage": True}})
    assert any('"choices":[]' in line and '"usage"' in line for line in asked)


def test_429_with_retry_after_retries_the_same_backend(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=429, headers={"Retry-After": "1"}, count=1)
    config = canary(v1, v2, fallback={"when": ["status_429"]}, timeouts={**FAST, "request_s": 3.0})
    gateway = gateway_factory(config)
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == "v2"
    arrivals = [r["monotonic"] for r in v2.stats()["requests"]]
    assert len(arrivals) == 2
    assert 0.95 < arrivals[1] - arrivals[0] < 1.6  # waited out Retry-After, not hammered
    assert seen(v1) == 0


def test_429_retry_after_past_the_deadline_goes_to_the_next_backend(
    demos: Demos, gateway_factory: GatewayFactory
) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=429, headers={"Retry-After": "30"})
    gateway = gateway_factory(canary(v1, v2, fallback={"when": ["status_429"]}))
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert time.monotonic() - started < 1.0
    assert response.headers["x-gateway-backend"] == "v1"
    assert response.headers["x-gateway-fallback"] == "status_429"
    assert (seen(v1), seen(v2)) == (1, 1)


def test_429_without_retry_after_on_a_single_backend_backs_off(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, _ = demos
    v1.control(mode="status", status=429)
    route = {
        "name": "solo",
        "match": {"path": "/v1/chat/completions"},
        "backends": [{"name": "v1", "url": v1.url}],
        "timeouts": {**FAST, "request_s": 5.0},
        "fallback": {"when": ["status_429"], "max_attempts": 3},
    }
    gateway = gateway_factory({"routes": [route]})
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    arrivals = [r["monotonic"] for r in v1.stats()["requests"]]
    assert len(arrivals) == 3
    assert arrivals[1] > arrivals[0]  # backed off, then the third waited for the 1.5 s window
    assert arrivals[2] - arrivals[0] >= 1.45  # (arrival clocks differ from send clocks by a few ms)


def test_429_not_in_fallback_passes_through(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=429, headers={"Retry-After": "7"}, body={"error": {"message": "slow down"}})
    gateway = gateway_factory(canary(v1, v2))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"error": {"message": "slow down"}}
    assert seen(v1) == 0


CONTEXT = {
    "error": {
        "message": "maximum context length exceeded",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


def test_context_length_falls_back_when_configured(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=400, body=CONTEXT)
    gateway = gateway_factory(canary(v1, v2, fallback={"when": ["context_length"]}))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-gateway-fallback"] == "context_length"
    plain = gateway_factory(canary(v1, v2))
    passed = httpx.post(f"{plain.url}/v1/chat/completions", json=CHAT)
    assert passed.status_code == 400
    assert passed.json() == CONTEXT


def test_every_backend_failing_is_a_502_problem(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v1.control(mode="status", status=500)
    v2.control(mode="status", status=502)
    gateway = gateway_factory(canary(v1, v2))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"] == "all 2 attempts failed (v2: upstream answered 502; v1: upstream answered 500)"
    assert response.headers["x-gateway-attempts"] == "2"


def test_request_deadline_is_a_504(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v1.control(mode="silent")
    v2.control(mode="silent")
    timeouts = {"connect_s": 0.3, "first_byte_s": 5, "idle_s": 5, "attempt_s": 5, "request_s": 0.7}
    gateway = gateway_factory(canary(v1, v2, timeouts=timeouts))
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert 0.6 < time.monotonic() - started < 1.5
    assert response.status_code == 504
    assert "deadline" in response.json()["detail"]
    forwarded = int(dict(v2.stats()["requests"][0]["headers"])["x-gateway-timeout-ms"])
    assert 500 < forwarded <= 700  # the time left travels upstream


def test_circuit_opens_half_opens_and_closes(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=500)
    breaker = {"failure_ratio": 0.5, "min_requests": 4, "open_s": 1.0}
    gateway = gateway_factory(canary(v1, v2, circuit_breaker=breaker, fallback={"retry_budget": 1.0}))
    url = f"{gateway.url}/v1/chat/completions"
    for _ in range(4):
        assert httpx.post(url, json=CHAT).headers["x-gateway-backend"] == "v1"
    assert seen(v2) == 4
    # Open: v2 is skipped without being called.
    skipped = httpx.post(url, json=CHAT)
    assert skipped.headers["x-gateway-fallback"] == "circuit_open"
    assert skipped.headers["x-gateway-attempts"] == "1"
    assert seen(v2) == 4
    # After open_s one probe goes through; it succeeds and the breaker closes.
    v2.reset()
    time.sleep(1.05)
    probe = httpx.post(url, json=CHAT)
    assert probe.headers["x-gateway-backend"] == "v2"
    assert httpx.post(url, json=CHAT).headers["x-gateway-backend"] == "v2"
    transitions = [
        (e["details"]["from"], e["details"]["to"])
        for e in reversed(httpx.get(f"{gateway.admin_url}/admin/events").json()["events"])
        if e["kind"] == "circuit"
    ]
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_all_circuits_open_is_a_503_with_retry_after(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v1.control(mode="status", status=500)
    v2.control(mode="status", status=500)
    breaker = {"failure_ratio": 0.5, "min_requests": 2, "open_s": 5.0}
    gateway = gateway_factory(canary(v1, v2, circuit_breaker=breaker))
    url = f"{gateway.url}/v1/chat/completions"
    for _ in range(2):
        httpx.post(url, json=CHAT)
    response = httpx.post(url, json=CHAT)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert 1 <= int(response.headers["retry-after"]) <= 5
    assert (seen(v1), seen(v2)) == (2, 2)


def test_retry_budget_exhausted_answers_the_failure(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=500)
    config = canary(v1, v2, fallback={"retry_budget": 0.0, "min_retries": 2})
    gateway = gateway_factory(config)
    statuses = [httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code for _ in range(4)]
    assert statuses == [200, 200, 500, 500]  # two retries from the floor, then failures are answered
    assert (seen(v1), seen(v2)) == (2, 4)


def test_weighted_split_within_statistical_bounds(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory(canary(v1, v2, weights=(80, 20)))
    with httpx.Client() as client:
        picks = Counter(
            client.post(f"{gateway.url}/v1/chat/completions", json=CHAT).headers["x-gateway-backend"]
            for _ in range(400)
        )
    # 400 draws at p = 0.2: mean 80, sd 8; +-4 sd
    assert 48 <= picks["v2"] <= 112
    assert picks["v1"] + picks["v2"] == 400


def test_sticky_keys_hold_and_move_minimally_on_a_weight_change(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory(canary(v1, v2, weights=(90, 10), sticky={"header": "x-user-id"}))
    url = f"{gateway.url}/v1/chat/completions"
    users = [f"user-{i}" for i in range(200)]

    def assignment() -> dict[str, str]:
        with httpx.Client() as client:
            return {
                u: client.post(url, json=CHAT, headers={"x-user-id": u}).headers["x-gateway-backend"] for u in users
            }

    first = assignment()
    assert assignment() == first  # stable while weights hold
    changed = httpx.put(f"{gateway.admin_url}/admin/routes/chat/weights", json={"v1": 80, "v2": 20})
    assert changed.status_code == 200
    second = assignment()
    moved = [u for u in users if first[u] != second[u]]
    assert all(first[u] == "v1" and second[u] == "v2" for u in moved)  # keys only move to the grown canary
    assert 5 <= len(moved) <= 40  # about 10% of 200


def test_override_header_pins_a_backend(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory(canary(v1, v2, allow_override=True))
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(url, json=CHAT, headers={"x-gateway-backend": "v1"}).headers["x-gateway-backend"] == "v1"
    unknown = httpx.post(url, json=CHAT, headers={"x-gateway-backend": "v9"})
    assert unknown.status_code == 400
    assert unknown.json()["errors"] == [{"pointer": "x-gateway-backend", "message": "must be one of: v1, v2"}]
    closed = gateway_factory(canary(v1, v2))
    ignored = httpx.post(f"{closed.url}/v1/chat/completions", json=CHAT, headers={"x-gateway-backend": "v1"})
    assert ignored.headers["x-gateway-backend"] == "v2"


def test_resume_a_broken_stream_on_the_next_backend(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="cut", after_events=3)
    gateway = gateway_factory(canary(v1, v2, fallback={"resume_streams": True}))
    response, lines = stream(gateway)
    assert "event: error" not in lines
    assert lines[-1] == "data: [DONE]"
    ids = {orjson.loads(line[6:])["id"] for line in lines if line.startswith("data: {")}
    assert len(ids) == 1  # one answer, one id
    prefill = orjson.loads(v1.stats()["requests"][-1]["body"])["messages"][-1]
    assert prefill["role"] == "assistant"
    assert content(lines).startswith(prefill["content"])
    assert len(content(lines)) > len(prefill["content"])


def test_resume_refused_reports_the_original_failure(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="cut", after_events=3)
    v1.control(mode="refuse_prefill")
    gateway = gateway_factory(canary(v1, v2, fallback={"resume_streams": True}))
    response, lines = stream(gateway)
    assert lines[-2] == "event: error"
    message = orjson.loads(lines[-1][6:])["error"]["message"]
    assert "prefill" not in message
    assert "connection broke" in message or "ended" in message
    assert seen(v1) == 1


def test_promote_rollback_and_weights_survive_reload(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    config = canary(v1, v2, weights=(90, 10))
    gateway = gateway_factory(config)
    admin = gateway.admin_url
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(f"{admin}/admin/routes/chat/promote").json()["weights"] == {"v1": 0.0, "v2": 100.0}
    assert {httpx.post(url, json=CHAT).headers["x-gateway-backend"] for _ in range(10)} == {"v2"}
    assert httpx.post(f"{admin}/admin/routes/chat/rollback").json()["weights"] == {"v1": 100.0, "v2": 0.0}
    assert {httpx.post(url, json=CHAT).headers["x-gateway-backend"] for _ in range(10)} == {"v1"}
    # A reload that does not touch this route's weights keeps the run-time ones.
    config["routes"][0]["owner"] = "someone@example.com"
    gateway.write_config({**config, "listen": {"port": 0}, "admin": {"port": 0}})
    assert httpx.post(f"{admin}/admin/reload").json()["reloaded"] is True
    assert {httpx.post(url, json=CHAT).headers["x-gateway-backend"] for _ in range(10)} == {"v1"}
    # A reload that changes them takes the file's.
    config["routes"][0]["backends"][0]["weight"] = 0
    config["routes"][0]["backends"][1]["weight"] = 100
    gateway.write_config({**config, "listen": {"port": 0}, "admin": {"port": 0}})
    assert httpx.post(f"{admin}/admin/reload").json()["reloaded"] is True
    assert {httpx.post(url, json=CHAT).headers["x-gateway-backend"] for _ in range(10)} == {"v2"}
    bad = httpx.put(f"{admin}/admin/routes/chat/weights", json={"v1": -1, "v9": 1})
    assert bad.status_code == 422
    assert {e["pointer"] for e in bad.json()["errors"]} == {"/v1", "/v9"}
    assert httpx.post(f"{admin}/admin/routes/nope/promote").status_code == 404
    kinds = [e["kind"] for e in httpx.get(f"{admin}/admin/events").json()["events"]]
    assert {"promote", "rollback", "reload", "weights"} <= set(kinds)


def test_audit_log_records_admin_changes(demos: Demos, gateway_factory: GatewayFactory, tmp_path: Any) -> None:
    v1, v2 = demos
    audit = tmp_path / "audit.jsonl"
    gateway = gateway_factory({**canary(v1, v2), "admin": {"audit_log": str(audit)}})
    httpx.put(
        f"{gateway.admin_url}/admin/routes/chat/weights", json={"v1": 50, "v2": 50}, headers={"x-admin-actor": "alice"}
    )
    httpx.post(f"{gateway.admin_url}/admin/routes/chat/rollback")
    entries = [orjson.loads(line) for line in audit.read_text().splitlines()]
    assert [e["action"] for e in entries] == ["weights", "rollback"]
    assert entries[0]["actor"] == "alice"
    assert entries[0]["before"]["weights"] == {"v1": 0.0, "v2": 100.0}
    assert entries[0]["after"]["weights"] == {"v1": 50.0, "v2": 50.0}
    assert {"time", "actor", "action", "before", "after"} <= set(entries[1])
