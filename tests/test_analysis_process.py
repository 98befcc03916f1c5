"""Automated canary analysis and model monitoring with real backends and the real gateway.

A bad canary (errors, slow, contract-breaking, shifted predictions, lower accuracy) is rolled back
with zero errors seen by clients; a good canary is promoted step by step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.procs import DemoServer, Gateway, wait_until

GatewayFactory = Callable[..., Gateway]
Demos = tuple[DemoServer, DemoServer]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello canary"}]}
ROWS = [31.0, -45.0, 22.0, -60.0]
KSERVE = {"inputs": [{"name": "age", "shape": [4], "datatype": "FP32", "data": ROWS}]}
ANALYSIS = {"interval_s": 0.3, "min_requests": 15, "steps": [25, 50, 100]}


def chat_route(v1: DemoServer, v2: DemoServer, analysis: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "chat",
        "owner": "ml@example.com",
        "match": {"path": "/v1/chat/completions"},
        "backends": [
            {"name": "v1", "url": v1.url, "stable": True, "weight": 90},
            {"name": "v2", "url": v2.url, "weight": 10},
        ],
        "fallback": {"retry_budget": 1.0},
        "circuit_breaker": {"min_requests": 1000},  # let the analysis, not the breaker, act
        "canary_analysis": {**ANALYSIS, **analysis},
        **extra,
    }


def kserve_route(v1: DemoServer, v2: DemoServer, analysis: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "credit",
        "match": {"path": "/v2/models/credit"},
        "backends": [
            {"name": "v1", "url": v1.url, "stable": True, "weight": 50},
            {"name": "v2", "url": v2.url, "weight": 50},
        ],
        "canary_analysis": {**ANALYSIS, "steps": [60, 100], **analysis},
        "monitor": {
            "features": [{"name": "age", "pointer": "/inputs/0/data/*", "kind": "numeric"}],
            "prediction": {"pointer": "/outputs/0/data/*", "kind": "categorical"},
            "confidence": {"pointer": "/outputs/1/data/*"},
        },
        **extra,
    }


def drive(gateway: Gateway, path: str, body: dict[str, Any], until: Callable[[], bool], limit: int = 600) -> list[int]:
    statuses = []
    with httpx.Client(timeout=10) as client:
        for _ in range(limit):
            statuses.append(client.post(f"{gateway.url}{path}", json=body).status_code)
            if until():
                break
    return statuses


def events(gateway: Gateway, kind: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{gateway.admin_url}/admin/events").json()["events"]
    return [e for e in reversed(found) if kind is None or e["kind"] == kind]


def weights(gateway: Gateway, route: str) -> dict[str, float]:
    routes = httpx.get(f"{gateway.admin_url}/admin/routes").json()["routes"]
    return {b["name"]: b["weight"] for b in next(r for r in routes if r["name"] == route)["backends"]}


def rolled_back(gateway: Gateway) -> Callable[[], bool]:
    return lambda: bool(events(gateway, "rollback"))


def test_erroring_canary_is_rolled_back_and_clients_see_no_errors(
    demos: Demos, gateway_factory: GatewayFactory
) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=500, probability=0.5)
    gateway = gateway_factory({"routes": [chat_route(v1, v2, {})]})
    statuses = drive(gateway, "/v1/chat/completions", CHAT, rolled_back(gateway))
    assert set(statuses) == {200}
    rollback = events(gateway, "rollback")[0]
    assert rollback["actor"] == "canary-analysis"
    assert rollback["details"]["breaches"][0]["check"] == "error_rate_delta"
    assert rollback["details"]["after"] == {"v1": 100.0, "v2": 0.0}
    assert weights(gateway, "chat") == {"v1": 100.0, "v2": 0.0}
    time.sleep(0.7)
    assert len(events(gateway, "rollback")) == 1  # idempotent: no traffic, no new verdict
    metrics = httpx.get(f"{gateway.admin_url}/metrics").text
    assert 'gateway_canary_decisions_total{decision="rollback",route="chat"} 1.0' in metrics


def test_slow_canary_is_rolled_back(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="delay", delay_ms=60)
    gateway = gateway_factory({"routes": [chat_route(v1, v2, {"max_p99_ratio": 2.0})]})
    statuses = drive(gateway, "/v1/chat/completions", CHAT, rolled_back(gateway))
    assert set(statuses) == {200}
    checks = {b["check"] for b in events(gateway, "rollback")[0]["details"]["breaches"]}
    assert "p99_ratio" in checks


def test_contract_breaking_canary_is_rolled_back(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="bad_contract", probability=0.5)
    route = chat_route(v1, v2, {}, contract={"request": "openai.chat", "response": "openai.chat"})
    gateway = gateway_factory({"routes": [route]})
    statuses = drive(gateway, "/v1/chat/completions", CHAT, rolled_back(gateway))
    assert set(statuses) == {200}
    checks = {b["check"] for b in events(gateway, "rollback")[0]["details"]["breaches"]}
    assert "contract_violation_rate" in checks


def shifted_outputs(label: str) -> dict[str, Any]:
    return {
        "model_name": "credit",
        "outputs": [
            {"name": "label", "shape": [4], "datatype": "BYTES", "data": [label] * 4},
            {"name": "score", "shape": [4], "datatype": "FP32", "data": [0.9] * 4},
        ],
    }


def test_canary_with_shifted_predictions_is_rolled_back(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=200, body=shifted_outputs("negative"), path_prefix="/v2/models")
    gateway = gateway_factory({"routes": [kserve_route(v1, v2, {"max_prediction_divergence": 0.2})]})
    statuses = drive(gateway, "/v2/models/credit/infer", KSERVE, rolled_back(gateway))
    assert set(statuses) == {200}
    checks = {b["check"] for b in events(gateway, "rollback")[0]["details"]["breaches"]}
    assert "prediction_divergence" in checks


def test_less_accurate_canary_is_rolled_back(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="status", status=200, body=shifted_outputs("negative"), path_prefix="/v2/models")
    analysis = {"max_prediction_divergence": 1000.0, "min_accuracy_delta": -0.1, "max_p99_ratio": 1000.0}
    gateway = gateway_factory({"routes": [kserve_route(v1, v2, analysis)]})
    truth = ["positive", "negative", "positive", "negative"]  # what stable predicts for ROWS
    statuses = []
    with httpx.Client(timeout=10) as client:
        for _ in range(300):
            response = client.post(f"{gateway.url}/v2/models/credit/infer", json=KSERVE)
            statuses.append(response.status_code)
            joined = client.post(
                f"{gateway.url}/v1/feedback", json={"request_id": response.headers["x-request-id"], "label": truth}
            )
            assert joined.status_code == 200, joined.text
            if events(gateway, "rollback"):
                break
    assert set(statuses) == {200}
    checks = {b["check"] for b in events(gateway, "rollback")[0]["details"]["breaches"]}
    assert checks == {"accuracy_delta"}
    stats = httpx.get(f"{gateway.admin_url}/admin/stats").json()["routes"]["credit"]["feedback"]
    assert stats is not None


def test_healthy_canary_is_promoted_step_by_step(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    webhook = f"{v1.url}/echo/webhook"
    gateway = gateway_factory({"routes": [chat_route(v1, v2, {"webhook": webhook})]})
    statuses = drive(gateway, "/v1/chat/completions", CHAT, lambda: bool(events(gateway, "promote")), limit=2000)
    assert set(statuses) == {200}
    steps = [(e["kind"], e["details"]["after"]["v2"]) for e in events(gateway) if e["kind"] in ("step", "promote")]
    assert steps == [("step", 25.0), ("step", 50.0), ("promote", 100.0)]
    assert weights(gateway, "chat") == {"v1": 0.0, "v2": 100.0}
    routes = httpx.get(f"{gateway.admin_url}/admin/routes").json()["routes"]
    assert routes[0]["canary_analysis"]["last_verdict"] == "healthy"
    assert wait_until(lambda: any(r["path"] == "/echo/webhook" for r in v1.stats()["requests"]))
    posted = next(r for r in v1.stats()["requests"] if r["path"] == "/echo/webhook")
    assert orjson.loads(posted["body"])["kind"] == "promote"


def test_feedback_for_an_unknown_request_is_a_404(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory({"routes": [kserve_route(v1, v2, {})]})
    unknown = httpx.post(f"{gateway.url}/v1/feedback", json={"request_id": "nope", "label": "x"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    incomplete = httpx.post(f"{gateway.url}/v1/feedback", json={"label": "x"})
    assert incomplete.status_code == 422
    assert incomplete.json()["errors"][0]["pointer"] == "/request_id"


def test_shadow_traffic_is_compared_and_never_delays_or_bills(demos: Demos, gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    v2.control(mode="delay", delay_ms=300)
    route = {
        "name": "chat",
        "match": {"path": "/v1/chat/completions"},
        "backends": [
            {"name": "v1", "url": v1.url, "stable": True, "price": {"per_request": 1.0}},
            {"name": "v3", "url": v2.url, "weight": 0, "price": {"per_request": 2.0}},
        ],
        "shadow": {"backend": "v3", "ratio": 1.0},
    }
    gateway = gateway_factory({"routes": [route]})
    started = time.monotonic()
    for _ in range(3):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
        assert response.headers["x-gateway-backend"] == "v1"
        assert float(response.headers["x-gateway-cost-usd"]) == 1.0
    assert time.monotonic() - started < 0.6  # the 300 ms shadow never delayed a response
    assert wait_until(
        lambda: httpx.get(f"{gateway.admin_url}/admin/stats").json()["routes"]["chat"]["shadow"]["mirrored"] == 3
    )
    time.sleep(0.5)
    stats = httpx.get(f"{gateway.admin_url}/admin/stats").json()["routes"]["chat"]
    shadow = stats["shadow"]
    assert shadow["status_match_rate"] == 1.0
    assert shadow["cost_usd"] == 6.0
    assert stats["backends"]["v3"]["cost"] is None  # never billed as traffic
    assert v2.stats()["total"] == 3


def test_baseline_command_and_drift_alert(demos: Demos, gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    v1, v2 = demos
    logged = tmp_path / "requests.jsonl"
    logged.write_text(
        "\n".join(
            json.dumps({"inputs": [{"name": "age", "shape": [4], "datatype": "FP32", "data": [20.0 + i % 30] * 4}]})
            for i in range(300)
        )
    )
    route = kserve_route(v1, v2, {})
    del route["canary_analysis"]
    route["monitor"]["drift"] = {"metric": "psi", "warn": 0.1, "alert": 0.25, "baseline": "credit.json"}
    config_path = tmp_path / "for-baseline.yaml"
    config_path.write_text(json.dumps({"routes": [{**route, "monitor": {**route["monitor"], "drift": None}}]}))
    built = subprocess.run(
        [sys.executable, "-m", "gateway", "baseline", "--config", str(config_path), "--route", "credit",
         "--input", str(logged), "--output", str(tmp_path / "credit.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    gateway = gateway_factory({"routes": [route]})
    shifted = {"inputs": [{"name": "age", "shape": [4], "datatype": "FP32", "data": [95.0, 99.0, 97.0, 91.0]}]}
    with httpx.Client() as client:
        for _ in range(60):
            assert client.post(f"{gateway.url}/v2/models/credit/infer", json=shifted).status_code == 200
    assert wait_until(lambda: bool(events(gateway, "drift_alert")), timeout_s=8)
    alert = events(gateway, "drift_alert")[0]
    assert alert["details"]["name"] == "age"
    assert alert["details"]["score"] > 0.25
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        json.dumps({"routes": [{**route, "monitor": {**route["monitor"], "drift": {"baseline": "missing.json"}}}]})
    )
    check = subprocess.run([sys.executable, "-m", "gateway", "check", str(bad)], capture_output=True, text=True)
    assert check.returncode == 1
    assert "routes[0].monitor.drift.baseline" in check.stderr


def test_baseline_from_live_traffic(demos: Demos, gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    v1, v2 = demos
    route = kserve_route(v1, v2, {})
    del route["canary_analysis"]
    route["monitor"]["drift"] = {"metric": "psi"}
    gateway = gateway_factory({"routes": [route]})
    admin = gateway.admin_url
    empty = httpx.post(f"{admin}/admin/routes/credit/baseline")
    assert empty.status_code == 400
    with httpx.Client() as client:
        for i in range(40):
            body = {"inputs": [{"name": "age", "shape": [4], "datatype": "FP32", "data": [20.0 + i, 30.0, 40.0, 50.0]}]}
            assert client.post(f"{gateway.url}/v2/models/credit/infer", json=body).status_code == 200
    built = httpx.post(f"{admin}/admin/routes/credit/baseline").json()
    assert built["documents"] == 40
    assert built["written_to"] is None  # no `drift.baseline` path configured: returned, not written
    assert built["baseline"]["features"]["age"]["kind"] == "numeric"
    assert built["baseline"]["prediction"] is not None
