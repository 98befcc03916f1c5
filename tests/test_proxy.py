"""The data plane in-process: routing, header rules, body rules and error bodies (backends mocked)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from gateway.context import RequestContext
from gateway.loader import parse_config
from gateway.proxy import DataPlane
from gateway.runtime import RuntimeHolder, Shared
from gateway.upstream import make_client
from tests.inprocess import inprocess_gateway, seen

pytestmark = pytest.mark.anyio

CONFIG = """
listen: {max_body_bytes: 100000, max_header_count: 20, max_header_bytes: 2000, trusted_proxies: ["192.168.0.0/16"]}
routes:
  - name: chat
    match: {path: /v1/chat/completions, model: small}
    backends:
      - name: v1
        url: http://v1.internal:9001/base
        model: llama-v1
        headers: {Authorization: Bearer upstream-key}
  - name: chat-any
    match: {path: /v1/chat/completions}
    error_format: openai
    backends: [{name: any, url: "http://any.internal"}]
  - name: echo
    match: {path: /echo}
    backends: [{name: e, url: "http://echo.internal"}]
"""


def headers_of(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.json()["headers"]}


async def test_forwards_method_path_query_and_body_unchanged() -> None:
    requests: list[httpx.Request] = []
    async with inprocess_gateway(CONFIG, seen(requests)) as client:
        response = await client.put(
            "/echo/a%20b/c?x=1&y=%2F", content=b"raw \x00 bytes", headers={"content-type": "text/plain"}
        )
    assert response.status_code == 200
    assert requests[0].method == "PUT"
    assert requests[0].url.raw_path == b"/echo/a%20b/c?x=1&y=%2F"
    assert requests[0].content == b"raw \x00 bytes"
    assert response.headers["x-gateway-route"] == "echo"
    assert response.headers["x-gateway-backend"] == "e"
    assert response.headers["x-gateway-attempts"] == "1"
    assert response.headers["x-upstream"] == "echo.internal"
    assert response.headers["server-timing"].startswith("gateway;dur=")


async def test_routes_by_model_and_rewrites_it() -> None:
    requests: list[httpx.Request] = []
    async with inprocess_gateway(CONFIG, seen(requests)) as client:
        small = await client.post("/v1/chat/completions", json={"model": "small", "messages": []})
        other = await client.post("/v1/chat/completions", json={"model": "big", "messages": []})
    assert small.headers["x-gateway-route"] == "chat"
    assert str(requests[0].url) == "http://v1.internal:9001/base/v1/chat/completions"
    assert orjson.loads(requests[0].content) == {"model": "llama-v1", "messages": []}
    assert other.headers["x-gateway-route"] == "chat-any"
    assert orjson.loads(requests[1].content) == {"model": "big", "messages": []}


async def test_body_is_forwarded_byte_for_byte_when_not_rewritten() -> None:
    requests: list[httpx.Request] = []
    body = b'{ "model" : "big",\n "x": 1.0e2 }'
    async with inprocess_gateway(CONFIG, seen(requests)) as client:
        await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert requests[0].content == body


async def test_hop_by_hop_credentials_and_gateway_headers_are_not_forwarded() -> None:
    requests: list[httpx.Request] = []
    async with inprocess_gateway(CONFIG, seen(requests)) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "small"},
            headers={
                "connection": "keep-alive, x-secret-hop",
                "x-secret-hop": "1",
                "keep-alive": "timeout=5",
                "te": "trailers",
                "upgrade": "h2c",
                "proxy-authorization": "Basic abc",
                "authorization": "Bearer client-key",
                "cookie": "session=1",
                "x-api-key": "client-key",
                "x-gateway-backend": "v1",
                "x-custom": "kept",
            },
        )
    forwarded = headers_of(response)
    assert forwarded.get("connection") != "keep-alive, x-secret-hop"  # the upstream client's own, if any
    for name in (
        "x-secret-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "x-gateway-backend",
    ):
        assert name not in forwarded, name
    assert forwarded["authorization"] == "Bearer upstream-key"  # the backend's own, never the client's
    assert forwarded["x-custom"] == "kept"
    assert forwarded["content-length"] == str(len(requests[0].content))


async def test_request_id_is_echoed_or_created_and_forwarded() -> None:
    requests: list[httpx.Request] = []
    async with inprocess_gateway(CONFIG, seen(requests)) as client:
        given = await client.get("/echo", headers={"x-request-id": "abc-123"})
        created = await client.get("/echo")
        junk = await client.get("/echo", headers={"x-request-id": "has space"})
    assert given.headers["x-request-id"] == "abc-123"
    assert headers_of(given)["x-request-id"] == "abc-123"
    assert len(created.headers["x-request-id"]) == 32
    assert headers_of(created)["x-request-id"] == created.headers["x-request-id"]
    assert junk.headers["x-request-id"] != "has space"


async def test_forwarded_headers_from_an_untrusted_peer_are_replaced() -> None:
    requests: list[httpx.Request] = []
    async with inprocess_gateway(CONFIG, seen(requests), client_ip="10.1.2.3") as client:
        response = await client.get("/echo", headers={"x-forwarded-for": "6.6.6.6", "x-forwarded-proto": "https"})
    forwarded = headers_of(response)
    assert forwarded["x-forwarded-for"] == "10.1.2.3"
    assert forwarded["x-forwarded-proto"] == "http"


async def test_forwarded_headers_from_a_trusted_proxy_are_extended() -> None:
    requests: list[httpx.Request] = []
    async with inprocess_gateway(CONFIG, seen(requests), client_ip="192.168.1.1") as client:
        response = await client.get("/echo", headers={"x-forwarded-for": "1.2.3.4", "x-forwarded-proto": "https"})
    forwarded = headers_of(response)
    assert forwarded["x-forwarded-for"] == "1.2.3.4, 192.168.1.1"
    assert forwarded["x-forwarded-proto"] == "https"


async def test_upstream_hop_by_hop_headers_are_not_returned() -> None:
    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=b"ok",
            headers={
                "connection": "x-hop",
                "x-hop": "1",
                "keep-alive": "timeout=1",
                "x-gateway-route": "spoof",
                "x-kept": "1",
            },
        )

    async with inprocess_gateway(CONFIG, backend) as client:
        response = await client.get("/echo")
    assert "x-hop" not in response.headers
    assert "keep-alive" not in response.headers
    assert response.headers["x-gateway-route"] == "echo"
    assert response.headers["x-kept"] == "1"


async def test_upstream_4xx_is_passed_through_unchanged() -> None:
    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "no such model"}}, headers={"x-from": "upstream"})

    async with inprocess_gateway(CONFIG, backend) as client:
        response = await client.get("/echo")
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "no such model"}}
    assert response.headers["x-from"] == "upstream"
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[" * 5000 + b"]" * 5000,
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": ' + b"9" * 5000 + b"}",
        b'{"a": "\xff"}',
    ],
    ids=["syntax", "deep-nesting", "nan", "infinity", "5000-digits", "bad-utf8"],
)
async def test_unparseable_json_is_a_400_problem(body: bytes) -> None:
    async with inprocess_gateway(CONFIG, seen([])) as client:
        response = await client.post("/echo", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400
    assert problem["title"] == "Bad request"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert problem["errors"][0]["pointer"] == ""


async def test_non_json_bodies_are_not_parsed() -> None:
    requests: list[httpx.Request] = []
    async with inprocess_gateway(CONFIG, seen(requests)) as client:
        response = await client.post("/echo", content=b"{not json", headers={"content-type": "text/plain"})
    assert response.status_code == 200


async def test_no_route_is_a_404_problem() -> None:
    async with inprocess_gateway(CONFIG, seen([])) as client:
        response = await client.get("/nowhere")
        prefix_only = await client.get("/echoes")  # /echo matches on segment boundaries only
    assert response.status_code == 404
    assert response.json()["detail"] == "no route for GET /nowhere"
    assert prefix_only.status_code == 404


async def test_openai_error_format() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with inprocess_gateway(CONFIG, refused) as client:
        response = await client.post("/v1/chat/completions", json={"model": "big"})
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "upstream_error"


async def test_body_over_the_limit_is_a_413_before_reading() -> None:
    async with inprocess_gateway(CONFIG, seen([])) as client:
        declared = await client.post("/echo", content=b"x" * 100_001)

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted while reading
            for _ in range(20):
                yield b"x" * 10_000

        streamed = await client.post("/echo", content=chunks())
    assert declared.status_code == 413
    assert declared.json()["detail"] == "the body is 100001 bytes; the limit is 100000"
    assert streamed.status_code == 413


async def test_too_many_or_too_large_headers_are_a_431() -> None:
    async with inprocess_gateway(CONFIG, seen([])) as client:
        many = await client.get("/echo", headers={f"x-h{i}": "1" for i in range(30)})
        large = await client.get("/echo", headers={"x-big": "v" * 3000})
    assert many.status_code == 431
    assert large.status_code == 431
    assert many.headers["content-type"] == "application/problem+json"


async def test_duplicate_host_is_rejected() -> None:
    async with inprocess_gateway(CONFIG, seen([])) as client:
        request = client.build_request("GET", "/echo")
        request.headers = httpx.Headers([(b"host", b"a"), (b"host", b"b")])
        response = await client.send(request)
    assert response.status_code == 400
    assert response.json()["detail"] == "more than one Host header"


async def test_connect_failure_is_a_502_and_timeout_a_504() -> None:
    def backend(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/echo/refused":
            raise httpx.ConnectError("connection refused", request=request)
        raise httpx.ReadTimeout("too slow", request=request)

    async with inprocess_gateway(CONFIG, backend) as client:
        refused = await client.get("/echo/refused")
        slow = await client.get("/echo/slow")
    assert refused.status_code == 502
    assert refused.json()["detail"].startswith("all 2 attempts failed (e: ConnectError: connection refused")
    assert refused.headers["x-gateway-backend"] == "e"
    assert slow.status_code == 504
    assert slow.json()["type"].endswith("/timeout")


async def test_health_endpoints_answer_on_the_data_port() -> None:
    async with inprocess_gateway(CONFIG, seen([])) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 503  # nothing probed yet: no backend known reachable
    assert ready.json()["routes"]["echo"] == {"e": False}


async def test_load_past_max_in_flight_is_shed_with_a_503() -> None:
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json={})

    config = CONFIG.replace("listen: {", "listen: {max_in_flight: 1, ")
    async with inprocess_gateway(config, slow) as client:  # type: ignore[arg-type]
        first = asyncio.ensure_future(client.get("/echo"))
        await asyncio.sleep(0.05)
        shed = await client.get("/echo")
        release.set()
        assert (await first).status_code == 200
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["type"].endswith("/overloaded")


async def test_accounting_runs_after_the_response_but_measures_up_to_its_end() -> None:
    """The after-response work waits for the next event-loop turn; the latency it records does not."""
    config = parse_config(
        "routes: [{name: r, match: {path: /x}, backends: [{name: b, url: 'http://b.internal'}]}]", env={}
    )
    upstream = make_client(config.upstream, transport=httpx.MockTransport(lambda _: httpx.Response(200, json={})))
    shared = Shared(upstream)
    app = DataPlane(RuntimeHolder(config, shared, None), shared.tasks)
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            assert (await client.post("/x", json={})).status_code == 200
            time.sleep(0.2)  # noqa: ASYNC251  # on purpose: the loop is busy before the deferred work gets its turn
            for _ in range(5):
                await asyncio.sleep(0)
    finally:
        await upstream.aclose()
    total = shared.latency.window("r", "b", "total", "1m")
    assert total.count == 1
    assert (total.quantile(0.5) or 0.0) < 150.0  # milliseconds: without the 200 ms the loop was busy


async def test_a_request_leaves_no_cyclic_garbage() -> None:
    """Every request's objects are freed by refcounting once its after-response work ran: the cyclic GC,
    which the gateway runs rarely (server.GC_THRESHOLD), finds nothing of it."""

    def contexts() -> int:
        return sum(isinstance(o, RequestContext) for o in gc.get_objects())

    async with inprocess_gateway(CONFIG, seen([])) as client:
        await client.post("/echo", content=b"{}")  # warm up
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                response = await client.post("/v1/chat/completions", json={"model": "small", "messages": []})
                assert response.status_code == 200
                assert (await client.post("/nowhere", content=b"{")).status_code == 400
            await asyncio.sleep(0)  # the after-response work of the last ones
            assert contexts() == 0
        finally:
            gc.enable()
