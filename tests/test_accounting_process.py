"""Cost, tenants, stats, metrics and hedging through the real gateway."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.accesslog import FIELDS
from tests.procs import DemoServer, Gateway

GatewayFactory = Callable[..., Gateway]
Demos = tuple[DemoServer, DemoServer]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three four"}]}
FAST = {"connect_s": 0.3, "first_byte_s": 1.0, "idle_s": 1.0, "attempt_s": 1.5, "request_s": 3.0}
TOKEN_PRICE = {"input_per_1k_tokens": 1.0, "output_per_1k_tokens": 2.0}


def chat(v1: DemoServer, v2: DemoServer, **extra: Any) -> dict[str, Any]:
    return {
        "name": "chat",
        "match": {"path": "/v1/chat/completions"},
        "backends": [
            {"name": "v1", "url": v1.url, "stable": True, "weight": 0, "price": TOKEN_PRICE},
            {"name": "v2", "url": v2.url, "weight": 100, "price": {"per_second": 10.0, "per_request": 0.5}},
        ],
        "timeouts": FAST,
        **extra,
    }


def samples(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{gateway.admin_url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_token_priced_cost_header_and_only_the_answer_is_billed(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=500)
    gateway = gateway_factory({"routes": [chat(v1, v2)]})
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.headers["x-gateway-backend"] == "v1"
    usage = response.json()["usage"]
    expected = usage["prompt_tokens"] / 1000 * 1.0 + usage["completion_tokens"] / 1000 * 2.0
    assert float(response.headers["x-gateway-cost-usd"]) == round(expected, 8)
    stats = httpx.get(f"{gateway.admin_url}/admin/stats").json()
    backends = stats["routes"]["chat"]["backends"]
    assert backends["v1"]["cost"]["cost_usd"] == expected
    assert backends["v1"]["cost"]["input_tokens"] == usage["prompt_tokens"]
    assert backends["v2"]["cost"]["cost_usd"] == 0  # the failed attempt is not billed as a completion ...
    assert backends["v2"]["cost"]["wasted_usd"] >= 0.5  # ... but its per-request price is waste
    assert stats["routes"]["chat"]["fallbacks"] == {"status_5xx": 1}


def test_time_priced_cost(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="delay", delay_ms=200)
    gateway = gateway_factory({"routes": [chat(v1, v2)]})
    cost = float(httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).headers["x-gateway-cost-usd"])
    assert 0.5 + 10 * 0.2 <= cost <= 0.5 + 10 * 0.4  # per_request + per_second x upstream time


def test_streamed_cost_reaches_metrics(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory(
        {"routes": [chat(v1, v2, backends=[{**chat(v1, v2)["backends"][1], "price": TOKEN_PRICE}])]}
    )
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        response.read()
    assert "x-gateway-cost-usd" not in response.headers  # headers left before the cost was known
    time.sleep(0.1)
    values = samples(gateway)
    tokens = {k[1]: v for k, v in values.items() if k[0] == "gateway_tokens_total"}
    assert any(v > 0 for k, v in tokens.items() if ("type", "output") in k)
    cost = [v for k, v in values.items() if k[0] == "gateway_cost_usd_total"]
    assert cost and cost[0] > 0
    ttft = [v for k, v in values.items() if k[0] == "gateway_time_to_first_token_seconds_count"]
    assert ttft == [1.0]


def test_stats_report_requests_percentiles_and_contract_violations(
    demos: Demos, gateway_factory: GatewayFactory
) -> None:
    v1, v2 = demos
    gateway = gateway_factory({"routes": [chat(v1, v2, contract={"request": "openai.chat"})]})
    with httpx.Client() as client:
        for _ in range(20):
            assert client.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code == 200
        assert client.post(f"{gateway.url}/v1/chat/completions", json={"model": "m"}).status_code == 422
    route = httpx.get(f"{gateway.admin_url}/admin/stats").json()["routes"]["chat"]
    v2_stats = route["backends"]["v2"]
    assert v2_stats["traffic"]["1m"]["requests"] == 20
    assert v2_stats["traffic"]["1m"]["error_rate"] == 0
    total = v2_stats["latency_ms"]["1m"]["total"]
    assert total["count"] == 20
    assert 0 < total["p50"] <= total["p90"] <= total["p99"] <= total["p99.9"]
    assert route["contracts"]["violations"] == {"request:/messages": 1}
    requests = samples(gateway)
    ok = [v for k, v in requests.items() if k[0] == "gateway_requests_total" and ("backend", "v2") in k[1]]
    assert ok == [20.0]


def test_tenants_keys_rate_limits_and_budgets(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    tenants = [
        {"name": "team-a", "api_keys": ["${KEY_A}"], "rate_limit": {"requests_per_minute": 3}},
        {"name": "team-b", "api_keys": ["key-b"], "budget": {"usd_per_day": 0.001}},
    ]
    gateway = gateway_factory({"tenants": tenants, "routes": [chat(v1, v2)]}, env={"KEY_A": "key-a"})
    url = f"{gateway.url}/v1/chat/completions"
    missing = httpx.post(url, json=CHAT)
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert httpx.post(url, json=CHAT, headers={"authorization": "Bearer nope"}).status_code == 401
    team_a = {"authorization": "Bearer key-a"}
    assert [httpx.post(url, json=CHAT, headers=team_a).status_code for _ in range(4)] == [200, 200, 200, 429]
    limited = httpx.post(url, json=CHAT, headers=team_a)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 20
    # team-b: the first request (per_request 0.5 USD) spends the whole day's budget.
    team_b = {"x-api-key": "key-b"}
    assert httpx.post(url, json=CHAT, headers=team_b).status_code == 200
    time.sleep(0.1)  # settlement runs after the response
    over = httpx.post(url, json=CHAT, headers=team_b)
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) > 0
    # the upstream never saw the client's key
    assert all("key-" not in str(r["headers"]) for r in v2.stats()["requests"])
    stats = httpx.get(f"{gateway.admin_url}/admin/stats").json()["tenants"]
    assert stats["team-b"]["spent_today_usd"] >= 0.5


def test_the_access_log_has_one_line_per_request(demos: Demos, gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    v1, _ = demos
    path = tmp_path / "logs" / "access.jsonl"
    route = {"name": "chat", "match": {"path": "/v1/chat/completions"}, "backends": [
        {"name": "v1", "url": v1.url, "price": TOKEN_PRICE}
    ]}  # fmt: skip
    tenants = [{"name": "team-a", "api_keys": ["key-secret-a"]}]
    config = {"telemetry": {"access_log": {"path": str(path)}}, "tenants": tenants, "routes": [route]}
    gateway = gateway_factory(config)
    url = f"{gateway.url}/v1/chat/completions"
    answered = [httpx.post(url, json=CHAT, headers={"authorization": "Bearer key-secret-a"}) for _ in range(3)]
    refused = httpx.post(url, json=CHAT)
    assert [r.status_code for r in answered] == [200, 200, 200] and refused.status_code == 401
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 4):
        time.sleep(0.05)  # written in the background, every 0.2 s
    lines = path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["request_id"] for e in entries] == [r.headers["x-request-id"] for r in [*answered, refused]]
    first = entries[0]
    assert all(list(e) == list(FIELDS) for e in entries)  # exactly FIELDS, in order (written unchecked)
    assert (first["route"], first["backend"], first["status"], first["tenant"]) == ("chat", "v1", 200, "team-a")
    assert first["canary"] is False  # the route's only backend serves as its stable one
    assert first["cost_usd"] == pytest.approx(float(answered[0].headers["x-gateway-cost-usd"]), abs=1e-8)
    assert first["cost_usd"] > 0
    assert first["input_tokens"] > 0 and first["duration_ms"] >= first["upstream_ms"] > 0
    assert (entries[3]["status"], entries[3]["backend"], entries[3]["tenant"]) == (401, None, None)
    assert "key-secret" not in path.read_text()


def test_hedge_wins_and_the_loser_is_cancelled(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    route = chat(v1, v2, hedge={"after_percentile": 95, "max_ratio": 0.5, "min_delay_ms": 20})
    gateway = gateway_factory({"routes": [route]})
    url = f"{gateway.url}/v1/chat/completions"
    with httpx.Client() as client:
        for _ in range(25):  # the live p95 needs samples
            client.post(url, json=CHAT)
    time.sleep(1.1)  # the percentile is cached for a second
    v2.control(mode="delay", delay_ms=1500, count=1)
    started = time.monotonic()
    response = httpx.post(url, json=CHAT)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == "v1"
    assert response.headers["x-gateway-attempts"] == "2"
    assert elapsed < 1.0  # did not wait out the slow canary's 1.5 s (a margin for slow hosts)
    assert v1.stats()["total"] == 1


def test_replicas_share_rate_limits_through_redis(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    name = f"team-{uuid.uuid4().hex[:8]}"  # fresh Redis keys for every run
    config = {
        "state": {"backend": "redis", "url": "redis://127.0.0.1:6379/0"},
        "tenants": [{"name": name, "api_keys": ["shared-key"], "rate_limit": {"requests_per_minute": 4}}],
        "routes": [chat(v1, v2)],
    }
    first, second = gateway_factory(config), gateway_factory(config)
    key = {"authorization": "Bearer shared-key"}
    statuses = [
        httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=key).status_code
        for gateway in (first, second, first, second, first)
    ]
    assert statuses == [200, 200, 200, 200, 429]
    assert httpx.get(f"{first.url}/readyz").json()["state"] == {"backend": "redis", "degraded": False, "error": None}


def test_a_replica_that_loses_redis_keeps_serving(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    config = {
        "state": {"backend": "redis", "url": "redis://127.0.0.1:9/0"},
        "tenants": [{"name": "team", "api_keys": ["k"], "rate_limit": {"requests_per_minute": 100}}],
        "routes": [chat(v1, v2)],
    }
    gateway = gateway_factory(config)
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers={"x-api-key": "k"})
    assert response.status_code == 200
    state = httpx.get(f"{gateway.url}/readyz").json()["state"]
    assert state["degraded"] is True
    kinds = [e["kind"] for e in httpx.get(f"{gateway.admin_url}/admin/events").json()["events"]]
    assert "state_degraded" in kinds
