from __future__ import annotations

import orjson
import pytest

from gateway.config import Price
from gateway.cost import (
    CostLedger,
    Rates,
    Usage,
    cost_usd,
    estimate_usage,
    usage_from_chunk,
    usage_from_response,
    usage_from_sse_data,
    waste_usd,
)

CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "llama-3-8b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500},
}
EMBEDDINGS_RESPONSE = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "model": "e5",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}
ORDINARY_CHUNK = {
    "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
    "usage": None,
}
USAGE_CHUNK = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
}


def test_usage_from_responses() -> None:
    assert usage_from_response(CHAT_RESPONSE) == Usage(1200, 300, estimated=False)
    assert usage_from_response(EMBEDDINGS_RESPONSE) == Usage(8, 0)
    assert usage_from_response({"usage": {"input_tokens": 5, "output_tokens": 7}}) == Usage(5, 7)
    malformed: list[object] = [
        None,
        [],
        "text",
        {"choices": []},
        {"usage": None},
        {"usage": {"prompt_tokens": -1, "completion_tokens": 2}},
        {"usage": {"prompt_tokens": True, "completion_tokens": 2}},
        {"usage": {"prompt_tokens": 3, "completion_tokens": "2"}},
        {"usage": {"completion_tokens": 2}},
    ]
    for doc in malformed:
        assert usage_from_response(doc) is None, doc


def test_usage_from_stream_chunks() -> None:
    assert usage_from_chunk(ORDINARY_CHUNK) is None
    assert usage_from_chunk(USAGE_CHUNK) == Usage(12, 40)
    assert usage_from_sse_data(orjson.dumps(ORDINARY_CHUNK)) is None
    assert usage_from_sse_data(orjson.dumps(USAGE_CHUNK)) == Usage(12, 40)
    assert usage_from_sse_data(b"[DONE]") is None
    assert usage_from_sse_data(b'{"usage": {"prompt_tokens": 1, ') is None  # truncated JSON


def test_estimates_are_marked_and_about_four_chars_a_token() -> None:
    chat = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 21}, {"type": "image_url", "image_url": {}}]},
        ],
    }
    assert estimate_usage(chat, output_text_chars=399) == Usage(input_tokens=16, output_tokens=100, estimated=True)
    assert estimate_usage({"prompt": ["abcd", "efgh"]}, 0) == Usage(2, 0, estimated=True)
    assert estimate_usage({"input": [[1, 2, 3], [4]]}, 0) == Usage(4, 0, estimated=True)  # token arrays
    assert estimate_usage({"inputs": [{"data": [1, 2]}]}, 8) == Usage(0, 2, estimated=True)  # not an LLM body
    assert estimate_usage(None, -5) == Usage(0, 0, estimated=True)


@pytest.mark.parametrize(
    ("price", "usage", "upstream_s", "expected"),
    [
        (Price(input_per_1k_tokens=0.0005, output_per_1k_tokens=0.0015), Usage(1200, 300, False), 2.0, 0.00105),
        (Price(per_second=0.0011), Usage(1200, 300, False), 2.5, 0.00275),
        (Price(per_request=0.002), None, 9.0, 0.002),
        (
            Price(input_per_1k_tokens=0.001, output_per_1k_tokens=0.002, per_second=0.01, per_request=0.0001),
            Usage(1000, 500, True),
            0.5,
            0.001 + 0.001 + 0.005 + 0.0001,
        ),
        (Price(input_per_1k_tokens=0.001), None, 1.0, 0.0),  # token price, no usage known
        (None, Usage(1000, 1000, False), 1.0, 0.0),  # no price configured
        (Price(per_second=1.0), None, -0.5, 0.0),  # a negative duration never refunds
    ],
)
def test_cost_for_each_price_kind(price: Price | None, usage: Usage | None, upstream_s: float, expected: float) -> None:
    assert cost_usd(Rates.of(price), usage, upstream_s) == pytest.approx(expected)


def test_waste_is_time_and_request_price_only() -> None:
    price = Price(input_per_1k_tokens=1.0, output_per_1k_tokens=1.0, per_second=0.01, per_request=0.003)
    assert waste_usd(Rates.of(price), 2.0) == pytest.approx(0.023)
    assert waste_usd(Rates.of(Price(input_per_1k_tokens=1.0)), 2.0) == 0.0
    assert waste_usd(None, 2.0) == 0.0


def test_stream_billed_from_final_usage_chunk() -> None:
    price = Price(input_per_1k_tokens=0.5, output_per_1k_tokens=1.5)
    usage = None
    for chunk in (ORDINARY_CHUNK, ORDINARY_CHUNK, USAGE_CHUNK):
        usage = usage_from_sse_data(orjson.dumps(chunk)) or usage
    assert usage == Usage(12, 40)
    assert cost_usd(Rates.of(price), usage, 3.0) == pytest.approx(12 * 0.0005 + 40 * 0.0015)


def test_ledger_bills_only_the_answering_attempt_and_records_waste() -> None:
    ledger = CostLedger()
    v1 = Rates.of(Price(per_second=0.01, per_request=0.001))
    v2 = Rates.of(Price(input_per_1k_tokens=0.5, output_per_1k_tokens=1.5))
    # Attempt 1 on v1 times out after 2 s; attempt 2 on v2 answers.
    ledger.record_waste("chat", "v1", "team-a", waste_usd(v1, 2.0))
    usage = usage_from_response(CHAT_RESPONSE)
    ledger.record("chat", "v2", "team-a", cost_usd=cost_usd(v2, usage, 1.2), usage=usage)

    snap = ledger.snapshot()
    assert snap["chat"]["v1"]["requests"] == 0
    assert snap["chat"]["v1"]["failed_attempts"] == 1
    assert snap["chat"]["v1"]["wasted_usd"] == pytest.approx(0.021)
    assert snap["chat"]["v1"]["cost_usd"] == 0.0
    assert snap["chat"]["v2"]["requests"] == 1
    assert snap["chat"]["v2"]["cost_usd"] == pytest.approx(0.6 + 0.45)
    assert snap["chat"]["v2"]["input_tokens"] == 1200
    assert snap["chat"]["v2"]["tenants"]["team-a"]["output_tokens"] == 300
    assert ledger.totals(tenant="team-a")["cost_usd"] == pytest.approx(1.05)
    assert ledger.totals()["wasted_usd"] == pytest.approx(0.021)
    assert repr(ledger) == "<CostLedger rows=2 cost_usd=1.050000 wasted_usd=0.021000>"


def test_ledger_cached_free_and_estimates_counted() -> None:
    ledger = CostLedger()
    ledger.record("chat", "v1", None, cost_usd=0.5, usage=Usage(10, 10), cached=True)
    ledger.record("chat", "v1", None, cost_usd=0.25, usage=Usage(100, 40, estimated=True))
    ledger.record("chat", "v1", "team-b", cost_usd=0.25, usage=None)
    row = ledger.snapshot()["chat"]["v1"]
    assert row["requests"] == 3
    assert row["cached"] == 1
    assert row["estimated"] == 1
    assert row["cost_usd"] == pytest.approx(0.5)
    assert row["input_tokens"] == 100
    assert set(row["tenants"]) == {"", "team-b"}
    assert ledger.totals(route="chat", backend="v1", tenant="")["cost_usd"] == pytest.approx(0.25)
    assert ledger.totals(route="nope")["requests"] == 0
