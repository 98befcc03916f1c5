from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import DURATION_BUCKETS, Metrics, normalize_pointer


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_requests_durations_cost_and_tokens() -> None:
    metrics = Metrics()
    metrics.observe_request(
        "chat", "v1", "team-a", 200, "ok", 0.120, upstream_s=0.100, ttft_s=0.030,
        cost_usd=0.002, input_tokens=100, output_tokens=20,
    )  # fmt: skip
    metrics.observe_request("chat", "v1", "team-a", 200, "ok", 0.300, upstream_s=0.250)
    metrics.observe_request("chat", None, None, 401, "rejected", 0.001)
    s = samples(metrics)

    assert s[("gateway_requests_total", labels(route="chat", backend="v1", status="200", outcome="ok"))] == 2
    assert s[("gateway_requests_total", labels(route="chat", backend="", status="401", outcome="rejected"))] == 1
    rb = labels(route="chat", backend="v1")
    assert s[("gateway_request_duration_seconds_count", rb)] == 2
    assert s[("gateway_request_duration_seconds_sum", rb)] == pytest.approx(0.42)
    assert s[("gateway_request_duration_seconds_bucket", labels(route="chat", backend="v1", le="0.25"))] == 1
    assert s[("gateway_request_duration_seconds_bucket", labels(route="chat", backend="v1", le="+Inf"))] == 2
    assert s[("gateway_upstream_duration_seconds_count", rb)] == 2
    assert s[("gateway_time_to_first_token_seconds_count", rb)] == 1
    assert s[("gateway_time_to_first_token_seconds_sum", rb)] == pytest.approx(0.03)
    rbt = labels(route="chat", backend="v1", tenant="team-a")
    assert s[("gateway_cost_usd_total", rbt)] == pytest.approx(0.002)
    assert s[("gateway_tokens_total", labels(route="chat", backend="v1", tenant="team-a", type="input"))] == 100
    assert s[("gateway_tokens_total", labels(route="chat", backend="v1", tenant="team-a", type="output"))] == 20
    buckets = {
        float(dict(key[1])["le"])
        for key in s
        if key[0] == "gateway_request_duration_seconds_bucket" and dict(key[1])["backend"] == "v1"
    }
    assert buckets == {*DURATION_BUCKETS, float("inf")}


def test_fallbacks_waste_and_gauges() -> None:
    metrics = Metrics()
    metrics.fallback("chat", "timeout")
    metrics.fallback("chat", "timeout")
    metrics.fallback("chat", "status_5xx")
    metrics.waste("chat", "v1", None, 0.01)
    metrics.set_weight("chat", "v1", 95)
    metrics.set_weight("chat", "v2", 5)
    metrics.set_circuit("chat", "v1", "open")
    metrics.set_circuit("chat", "v2", "half_open")
    metrics.set_circuit("chat", "v3", 0)
    metrics.set_budget_remaining("team-a", 12.5)
    metrics.set_drift("credit", "age", 0.18)
    s = samples(metrics)
    assert s[("gateway_fallbacks_total", labels(route="chat", reason="timeout"))] == 2
    assert s[("gateway_fallbacks_total", labels(route="chat", reason="status_5xx"))] == 1
    assert s[("gateway_wasted_usd_total", labels(route="chat", backend="v1", tenant=""))] == pytest.approx(0.01)
    assert s[("gateway_backend_weight", labels(route="chat", backend="v2"))] == 5
    assert s[("gateway_circuit_state", labels(route="chat", backend="v1"))] == 2
    assert s[("gateway_circuit_state", labels(route="chat", backend="v2"))] == 1
    assert s[("gateway_circuit_state", labels(route="chat", backend="v3"))] == 0
    assert s[("gateway_budget_remaining_usd", labels(tenant="team-a"))] == 12.5
    assert s[("gateway_drift_score", labels(route="credit", feature="age"))] == pytest.approx(0.18)
    with pytest.raises(ValueError):
        metrics.set_circuit("chat", "v1", "ajar")

    metrics.forget_backend("chat", "v2")
    metrics.forget_backend("chat", "never-seen")
    s = samples(metrics)
    assert ("gateway_backend_weight", labels(route="chat", backend="v2")) not in s
    assert ("gateway_circuit_state", labels(route="chat", backend="v2")) not in s
    assert ("gateway_backend_weight", labels(route="chat", backend="v1")) in s


@pytest.mark.parametrize(
    ("pointer", "field"),
    [
        ("/messages/3/content", "/messages/*/content"),
        ("/instances/0/features/12", "/instances/*/features/*"),
        ("/model", "/model"),
        ("", ""),
        ("/a~1b/0", "/a~1b/*"),
    ],
)
def test_pointer_normalisation(pointer: str, field: str) -> None:
    assert normalize_pointer(pointer) == field


def test_contract_violation_fields_are_bounded_per_route() -> None:
    metrics = Metrics(max_fields_per_route=3)
    for i in range(10):
        metrics.contract_violation("chat", "request", f"/messages/{i}/content")  # one field
    for name in ("a", "b", "c", "d", "e"):
        metrics.contract_violation("chat", "request", f"/{name}")
    metrics.contract_violation("chat", "response", "/choices/0/message")  # over the cap too
    metrics.contract_violation("chat", "request", "/x" * 200)
    metrics.contract_violation("kserve", "request", "/inputs/0/shape")  # another route has its own cap
    s = samples(metrics)
    got = {
        (dict(k[1])["route"], dict(k[1])["direction"], dict(k[1])["field"]): v
        for k, v in s.items()
        if k[0] == "gateway_contract_violations_total"
    }
    assert got == {
        ("chat", "request", "/messages/*/content"): 10,
        ("chat", "request", "/a"): 1,
        ("chat", "request", "/b"): 1,
        ("chat", "request", "other"): 4,
        ("chat", "response", "other"): 1,
        ("kserve", "request", "/inputs/*/shape"): 1,
    }
    assert repr(metrics) == "<Metrics request_series=0 contract_fields=4>"


def test_registries_are_separate_and_render_is_text_format() -> None:
    one, two = Metrics(), Metrics()
    one.fallback("chat", "timeout")
    assert ("gateway_fallbacks_total", labels(route="chat", reason="timeout")) not in samples(two)
    body = one.render()
    assert body.startswith(b"# HELP ")
    assert b'gateway_fallbacks_total{reason="timeout",route="chat"} 1.0' in body
    assert Metrics.content_type.startswith("text/plain; version=0.0.4")


def test_label_values_stay_bounded() -> None:
    metrics = Metrics()
    for status in (200, 200, 503, 1000, -1):
        metrics.observe_request("r", "b", None, status, "ok", 0.01)
    statuses = {dict(k[1])["status"]: v for k, v in samples(metrics).items() if k[0] == "gateway_requests_total"}
    assert statuses == {"200": 2, "503": 1, "other": 2}
