"""The demo model server (`python -m gateway.demo`) as a real process: every endpoint and every control mode."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import re
import signal
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway.demo import DemoSettings, start
from gateway.demo.answers import answer, chat_answer, classify
from gateway.demo.behaviour import Behaviour, Controller
from gateway.demo.cli import parse_args
from gateway.demo.stats import Recorder
from tests.procs import DemoServer, start_demo

pytestmark = pytest.mark.anyio

CONTEXT_WINDOW = 50
CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three four five six"}]}
ANSWER = "You said: one two three four five six"


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoServer]:
    server = start_demo("t1", "--model", "demo-model-t1", "--context-window", str(CONTEXT_WINDOW))
    yield server
    server.proc.signal(signal.SIGTERM)
    assert server.proc.wait(5) == 0
    assert "Traceback" not in server.proc.output()


@pytest.fixture
async def client(demo: DemoServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=demo.url, timeout=5) as client:
        (await client.post("/control/reset")).raise_for_status()
        yield client


async def control(client: httpx.AsyncClient, **behaviour: Any) -> dict[str, Any]:
    response = await client.post("/control", json=behaviour)
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


async def stream_events(
    client: httpx.AsyncClient,
    payload: dict[str, Any],
    seen: list[str] | None = None,
    path: str = "/v1/chat/completions",
) -> list[str]:
    """The `data:` payloads of a stream, appended to `seen` as they arrive (so a test sees them if it breaks)."""
    events = seen if seen is not None else []
    async with client.stream("POST", path, json={**payload, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    return events


def content_of(events: list[str]) -> str:
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


# --- process -------------------------------------------------------------------------------------------------------


async def test_port_zero_background_errors_and_sigterm() -> None:
    server = start_demo("bg", "--error-rate", "1.0", "--latency-ms", "5")
    try:
        assert re.fullmatch(r"demo server bg listening on http://127\.0\.0\.1:\d+", server.proc.lines[0])
        assert not server.url.endswith(":0")
        async with httpx.AsyncClient(base_url=server.url) as client:
            failed = await client.post("/v1/chat/completions", json=CHAT)
            assert failed.status_code == 500
            assert failed.json()["error"]["type"] == "server_error"
            assert (await client.get("/healthz")).status_code == 200  # probes never fail in the background
    finally:
        server.proc.signal(signal.SIGTERM)
        assert server.proc.wait(5) == 0


async def test_background_latency() -> None:
    server = start_demo("slow", "--latency-ms", "80", "--jitter-ms", "10", "--seed", "7")
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            delayed = []
            for _ in range(3):
                started = time.monotonic()
                assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
                delayed.append(time.monotonic() - started)
            assert min(delayed) >= 0.069
            started = time.monotonic()
            assert (await client.get("/v2/health/ready")).status_code == 200
            # Not delayed: faster than any delayed answer (relative: a slow host's requests take longer).
            assert time.monotonic() - started < min(delayed) - 0.05
    finally:
        server.proc.stop()


# --- endpoints -----------------------------------------------------------------------------------------------------


async def test_health_and_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "server": "t1"}
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2/models/credit/ready")).json() == {"name": "credit", "ready": True}
    server = (await client.get("/v2")).json()
    assert server["name"] == "demo-t1"
    assert server["extensions"] == []
    metadata = (await client.get("/v2/models/credit")).json()
    assert metadata["name"] == "credit"
    assert [o["name"] for o in metadata["outputs"]] == ["label", "score"]
    assert (await client.get("/v2/models/credit/versions/3")).json()["versions"] == ["3"]
    models = (await client.get("/v1/models")).json()
    assert models["data"][0]["id"] == "demo-model-t1"


async def test_chat_completion(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-t1-")
    assert isinstance(body["created"], int)
    assert body["model"] == "m"
    assert body["system_fingerprint"] == "demo-t1"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}
    unnamed = await client.post("/v1/chat/completions", json={"messages": CHAT["messages"]})
    assert unnamed.json()["model"] == "demo-model-t1"


async def test_chat_max_tokens_and_content_parts(client: httpx.AsyncClient) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "alpha beta"}]}]
    body = (await client.post("/v1/chat/completions", json={"messages": parts, "max_tokens": 3})).json()
    assert body["choices"][0]["message"]["content"] == "You said: alpha"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    newer = {"messages": parts, "max_completion_tokens": 1}
    assert (await client.post("/v1/chat/completions", json=newer)).json()["choices"][0]["message"]["content"] == "You"


async def test_chat_stream_with_and_without_usage(client: httpx.AsyncClient) -> None:
    events = await stream_events(client, {**CHAT, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert words == ["You", " said:", " one", " two", " three", " four", " five", " six"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}
    assert all(c["usage"] is None for c in chunks[:-1])
    plain = await stream_events(client, CHAT)
    assert len(plain) == len(events) - 1
    assert all("usage" not in json.loads(e) for e in plain[:-1])
    assert content_of(plain) == ANSWER


async def test_prefill_is_continued(client: httpx.AsyncClient) -> None:
    for cut in (0, 5, 13, len(ANSWER)):
        prefill = ANSWER[:cut]
        messages = [*CHAT["messages"], {"role": "assistant", "content": prefill}]
        body = (await client.post("/v1/chat/completions", json={"messages": messages})).json()
        assert prefill + body["choices"][0]["message"]["content"] == ANSWER
        assert prefill + content_of(await stream_events(client, {"messages": messages})) == ANSWER
    # A prefill another model wrote: continued after as many words.
    foreign = [*CHAT["messages"], {"role": "assistant", "content": "Well, you said one"}]
    body = (await client.post("/v1/chat/completions", json={"messages": foreign})).json()
    assert body["choices"][0]["message"]["content"] == " three four five six"  # after its 4 words


async def test_openai_errors(client: httpx.AsyncClient) -> None:
    invalid = await client.post("/v1/chat/completions", content=b"{nope")
    assert invalid.status_code == 400
    assert invalid.json()["error"]["type"] == "invalid_request_error"
    missing = await client.post("/v1/chat/completions", json={"model": "m"})
    assert missing.json()["error"]["param"] == "messages"
    negative = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": -1})
    assert negative.json()["error"]["param"] == "max_tokens"
    long = {"messages": [{"role": "user", "content": "word " * (CONTEXT_WINDOW + 1)}]}
    too_long = await client.post("/v1/chat/completions", json=long)
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"


async def test_legacy_completions(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/completions", json={"model": "x", "prompt": "hello there"})).json()
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"text": "You said: hello there", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    two = (await client.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 1})).json()
    assert [c["text"] for c in two["choices"]] == ["You", "You"]
    options = {"prompt": "hi", "stream_options": {"include_usage": True}}
    events = await stream_events(client, options, path="/v1/completions")
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "You said: hi"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert (await client.post("/v1/completions", json={"prompt": 3})).status_code == 400
    assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": "9"})).status_code == 400
    long = await client.post("/v1/completions", json={"prompt": "w " * CONTEXT_WINDOW, "max_tokens": 1})
    assert long.json()["error"]["code"] == "context_length_exceeded"
    assert (await client.post("/v1/completions", content=b"")).status_code == 400


async def test_embeddings(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/embeddings", json={"model": "e", "input": ["a b", "c"]})).json()
    assert body["object"] == "list"
    assert body["model"] == "e"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    first, second = body["data"]
    assert (first["object"], first["index"], second["index"]) == ("embedding", 0, 1)
    assert len(first["embedding"]) == 8
    assert math.isclose(math.fsum(v * v for v in first["embedding"]), 1.0, abs_tol=1e-4)
    assert first["embedding"] != second["embedding"]
    again = (await client.post("/v1/embeddings", json={"input": "a b", "encoding_format": "base64"})).json()
    decoded = struct.unpack("<8f", base64.b64decode(again["data"][0]["embedding"]))
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(decoded, first["embedding"], strict=True))
    wide = (await client.post("/v1/embeddings", json={"input": [[1, 2], [3]], "dimensions": 4})).json()
    assert [len(d["embedding"]) for d in wide["data"]] == [4, 4]
    tokens = (await client.post("/v1/embeddings", json={"input": [5, 6, 7]})).json()
    assert tokens["usage"]["prompt_tokens"] == 3
    bad: dict[str, Any]
    for bad in (
        {"input": []},
        {"input": [1, "a"]},
        {"input": "a", "dimensions": 0},
        {"input": "a", "dimensions": True},
    ):
        assert (await client.post("/v1/embeddings", json=bad)).status_code == 400
    assert (await client.post("/v1/embeddings", content=b"[1]")).status_code == 400


async def test_kserve_v2_infer(client: httpx.AsyncClient) -> None:
    request = {
        "id": "r-1",
        "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [[1, 2], [3, 4], [5, 6]]}],
    }
    body = (await client.post("/v2/models/credit/infer", json=request)).json()
    assert body["model_name"] == "credit"
    assert body["id"] == "r-1"
    label, score = body["outputs"]
    assert (label["name"], label["shape"], label["datatype"]) == ("label", [3], "BYTES")
    assert (score["name"], score["shape"], score["datatype"]) == ("score", [3], "FP32")
    assert set(label["data"]) <= {"positive", "negative"}
    assert all(0 < s < 1 for s in score["data"])
    again = (await client.post("/v2/models/credit/versions/2/infer", json=request)).json()
    assert again["model_version"] == "2"
    assert again["outputs"] == body["outputs"]  # deterministic
    only = (await client.post("/v2/models/credit/infer", json={**request, "outputs": [{"name": "score"}]})).json()
    assert [o["name"] for o in only["outputs"]] == ["score"]
    wrong = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}
    error = await client.post("/v2/models/credit/infer", json=wrong)
    assert error.status_code == 400
    assert "needs 4 elements" in error.json()["error"]
    bad: dict[str, Any]
    for bad in ({"inputs": []}, {"inputs": [{"name": "x", "shape": [-1], "data": []}]}):
        assert (await client.post("/v2/models/credit/infer", json=bad)).status_code == 400
    assert (await client.post("/v2/models/credit/infer", content=b"[")).json() == {
        "error": "request body is not valid JSON"
    }


async def test_kserve_v1_predict(client: httpx.AsyncClient) -> None:
    predict = {"instances": [{"age": 30, "country": "DE"}, [[1.5, 2]], 7, "text", [True, None]]}
    predictions = (await client.post("/v1/models/credit:predict", json=predict)).json()["predictions"]
    assert len(predictions) == 5
    assert {"label", "score"} == set(predictions[0])
    assert (
        predictions[3]
        == (await client.post("/v1/models/other:predict", json={"instances": ["text"]})).json()["predictions"][0]
    )
    assert (await client.post("/v1/models/credit:predict", json={"instances": 1})).status_code == 400
    assert (await client.post("/v1/models/credit:predict", content=b"x")).status_code == 400


async def test_echo(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/echo/a/b%20c?x=1&y=%20", content=b"payload", headers={"X-First": "1", "X-Second": "2"}
    )
    echoed = response.json()
    assert echoed["server"] == "t1"
    assert echoed["method"] == "PUT"
    assert echoed["path"] == "/echo/a/b%20c"
    assert echoed["query"] == "x=1&y=%20"
    assert echoed["body"] == "payload"
    names = [name for name, _ in echoed["headers"]]
    assert names.index("x-first") < names.index("x-second")
    assert ["x-second", "2"] in echoed["headers"]
    assert (await client.get("/echo")).json()["path"] == "/echo"


# --- control plane -------------------------------------------------------------------------------------------------


async def test_status_for_count_requests_then_ok(client: httpx.AsyncClient) -> None:
    state = await control(client, mode="status", status=429, headers={"Retry-After": "1"}, count=2)
    assert state["remaining"] == 2
    for _ in range(2):
        limited = await client.post("/v1/chat/completions", json=CHAT)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    now = (await client.get("/control")).json()
    assert (now["behaviour"]["mode"], now["remaining"]) == ("ok", None)


async def test_status_with_an_openai_error_body(client: httpx.AsyncClient) -> None:
    error = {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    await control(client, mode="status", status=400, body=error)
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert response.json() == error


async def test_path_prefix_and_probes(client: httpx.AsyncClient) -> None:
    await control(client, mode="status", status=503, path_prefix="/v1/embeddings")
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 503
    await control(client, mode="status", status=503)
    assert (await client.get("/healthz")).status_code == 200  # a rule without path_prefix spares the probes
    await control(client, mode="status", status=503, path_prefix="/healthz")
    assert (await client.get("/healthz")).status_code == 503


async def test_control_validation(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/control", json={"mode": "explode"})
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["loc"] == ["mode"]
    extra = await client.post("/control", json={"mode": "ok", "sttaus": 500})
    assert extra.status_code == 400
    assert (await client.post("/control", content=b"[]")).status_code == 400
    assert (await client.post("/control", json={"mode": "delay", "delay_ms": -1})).status_code == 400


async def test_reset_is_a_transport_error(client: httpx.AsyncClient) -> None:
    await control(client, mode="reset", count=1)
    with pytest.raises(httpx.TransportError):
        await client.post("/v1/chat/completions", json=CHAT)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_silent_never_answers(client: httpx.AsyncClient) -> None:
    await control(client, mode="silent", count=1)
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json=CHAT, timeout=0.3)
    await control(client, mode="silent", delay_ms=100, count=1)
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):  # closed without a response
        await client.post("/v1/chat/completions", json=CHAT)
    assert time.monotonic() - started >= 0.09
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_delay(client: httpx.AsyncClient) -> None:
    await control(client, mode="delay", delay_ms=200, count=1)
    started = time.monotonic()
    assert (await client.post("/v1/chat/completions", json=CHAT)).json()["choices"][0]["message"]["content"] == ANSWER
    assert time.monotonic() - started >= 0.19


async def test_stall_pauses_a_stream_then_finishes_it(client: httpx.AsyncClient) -> None:
    await control(client, mode="stall", after_events=2, delay_ms=300)
    arrivals: list[float] = []
    started = time.monotonic()
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 11
    stall = arrivals[2] - arrivals[1]
    assert stall >= 0.25
    # The pause comes after the second event, not before: the first two came sooner than it lasted
    # (relative, not a fixed bound: a slow host took 0.21 s for them on 2026-11-27).
    assert arrivals[1] < stall
    assert max(b - a for a, b in itertools.pairwise(arrivals[2:])) < stall
    await control(client, mode="stall", after_events=1)  # forever: the client's read timeout ends it
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=client.base_url, timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await stream_events(impatient, CHAT, seen)
    assert len(seen) == 1


async def test_cut_stream_ends_without_the_terminating_chunk(client: httpx.AsyncClient) -> None:
    await control(client, mode="cut", after_events=3, count=1)
    seen: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):  # incomplete chunked read
        await stream_events(client, CHAT, seen)
    assert len(seen) == 3
    assert "[DONE]" not in seen
    await control(client, mode="cut", after_events=2, rst=True, count=1)
    seen = []
    with pytest.raises(httpx.TransportError):
        await stream_events(client, CHAT, seen)
    assert len(seen) <= 2


async def test_cut_and_stall_plain_bodies(client: httpx.AsyncClient) -> None:
    await control(client, mode="cut", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/v1/chat/completions", json=CHAT)
    await control(client, mode="stall", delay_ms=150, count=1)
    started = time.monotonic()
    stalled = await client.post("/v1/embeddings", json={"input": "x"})
    assert time.monotonic() - started >= 0.14
    assert len(stalled.json()["data"][0]["embedding"]) == 8


async def test_malformed_event(client: httpx.AsyncClient) -> None:
    await control(client, mode="malformed_event", after_events=2)
    events = await stream_events(client, CHAT)
    assert events[2] == "{not json"
    assert events[-1] == "[DONE]"
    assert content_of(events[:2] + events[3:]) == ANSWER
    plain = await client.post("/v1/chat/completions", json=CHAT)
    with pytest.raises(json.JSONDecodeError):
        plain.json()


async def test_no_done(client: httpx.AsyncClient) -> None:
    await control(client, mode="no_done")
    events = await stream_events(client, {**CHAT, "stream_options": {"include_usage": True}})
    assert "[DONE]" not in events
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"
    assert json.loads(events[-1])["usage"]["total_tokens"] == 14


async def test_bad_contract(client: httpx.AsyncClient) -> None:
    await control(client, mode="bad_contract")
    chat = await client.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200
    assert not isinstance(chat.json()["choices"], list)
    infer = await client.post("/v2/models/m/infer", json={"inputs": []})
    assert infer.status_code == 200
    assert not isinstance(infer.json()["outputs"], list)
    await control(client, mode="bad_contract", body={"choices": None})
    assert (await client.post("/v1/chat/completions", json=CHAT)).json() == {"choices": None}


async def test_refuse_prefill(client: httpx.AsyncClient) -> None:
    await control(client, mode="refuse_prefill")
    prefilled = {"messages": [*CHAT["messages"], {"role": "assistant", "content": "You said:"}]}
    refused = await client.post("/v1/chat/completions", json=prefilled)
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_interval_spaces_events(client: httpx.AsyncClient) -> None:
    await control(client, interval_ms=40)
    arrivals: list[float] = []
    started = time.monotonic()
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 11
    assert arrivals[-1] - arrivals[0] >= 0.38  # 10 gaps of 40 ms
    # The first event was sent before the others were made to wait: sooner than the ten gaps took.
    assert arrivals[0] < arrivals[-1] - arrivals[0]
    # A client that leaves mid-stream: the server's next write fails, quietly (the module fixture checks the log).
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break
    await asyncio.sleep(0.1)
    assert (await client.get("/healthz")).status_code == 200


async def test_probability_is_seeded(client: httpx.AsyncClient) -> None:
    await control(client, mode="status", status=500, probability=0.5)
    statuses = [(await client.post("/v1/embeddings", json={"input": "x"})).status_code for _ in range(40)]
    assert 5 < statuses.count(500) < 35
    assert set(statuses) == {200, 500}


async def test_stats(client: httpx.AsyncClient) -> None:
    before = time.monotonic()
    await client.post("/v1/chat/completions", json=CHAT, headers={"X-Attempt": "1"})
    await control(client, mode="status", status=503, count=1)
    await client.post("/v1/chat/completions", json=CHAT, headers={"X-Attempt": "2"})
    await client.get("/healthz")
    stats = (await client.get("/control/stats")).json()
    assert stats["server"] == "t1"
    assert stats["total"] == 2
    assert stats["probes"] == 1
    assert stats["paths"] == {"/v1/chat/completions": 2, "/healthz": 1}
    first, second = stats["requests"]
    assert (first["seq"], second["seq"]) == (1, 2)
    assert (first["mode"], second["mode"]) == ("ok", "status")
    assert ["x-attempt", "2"] in second["headers"]
    assert json.loads(second["body"]) == CHAT
    assert before <= first["monotonic"] <= second["monotonic"] <= stats["monotonic"]  # one clock for the host
    assert abs(first["time"] - time.time()) < 5
    await client.post("/control/reset")
    cleared = (await client.get("/control/stats")).json()
    assert (cleared["total"], cleared["paths"], cleared["requests"]) == (0, {}, [])
    for _ in range(60):
        await client.post("/echo", content=b"x")
    assert len((await client.get("/control/stats")).json()["requests"]) == 50


# --- in-process pieces ---------------------------------------------------------------------------------------------


def test_settings_and_flags() -> None:
    settings = parse_args(["--port", "0", "--name", "x", "--seed", "3", "--stream-interval-ms", "5"])
    assert (settings.port, settings.name, settings.seed, settings.stream_interval_ms) == (0, "x", 3, 5.0)
    with pytest.raises(SystemExit):
        parse_args(["--error-rate", "2"])
    bad: dict[str, Any]
    for bad in ({"latency_ms": -1.0}, {"context_window": -1}, {"port": 70000}):
        with pytest.raises(ValueError):
            DemoSettings(**bad)


def test_answers_edge_cases() -> None:
    assert answer("").text == "You said nothing."
    spaced, prefilled = chat_answer([{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "x y "}])
    assert prefilled
    assert spaced.text == "a b c"  # a foreign prefill ending in a space: no extra space
    done, _ = chat_answer([{"role": "user", "content": "a"}, {"role": "assistant", "content": "p q r s t"}])
    assert (done.text, done.finish_reason) == ("", "stop")
    assert classify([]) == ("positive", 0.5)
    assert classify(["DE", True, None, 3.5])[0] in {"positive", "negative"}


def test_reprs() -> None:
    controller = Controller(DemoSettings())
    assert repr(controller) == "<Controller ok>"
    controller.set(Behaviour(mode="reset", count=2))
    assert repr(controller) == "<Controller reset remaining=2>"
    recorder = Recorder()
    recorder.record("GET", "/healthz", "", (), b"", "ok", True)
    assert repr(recorder) == "<Recorder requests=0 probes=1>"


async def test_in_process_server(demo: DemoServer) -> None:
    server = await start(DemoSettings(name="inproc", port=0))
    try:
        assert repr(server) == f"<RunningServer 'inproc' {server.url}>"
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/healthz")).json()["server"] == "inproc"
    finally:
        await server.aclose()
    taken = int(demo.url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        await start(DemoSettings(port=taken))
