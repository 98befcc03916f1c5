"""The real gateway (`python -m gateway serve`) in front of real demo model-server processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import ROOT, DemoServer, Gateway, route, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three four five six"}]}
FAST = {"connect_s": 0.5, "first_byte_s": 0.5, "idle_s": 0.5, "attempt_s": 0.5, "request_s": 2.0}
# These tests look at a single attempt; fallback has tests of its own.
ONE_TRY: dict[str, Any] = {"timeouts": FAST, "fallback": {"max_attempts": 1}}
GatewayFactory = Callable[..., Gateway]


def two_routes(v1: DemoServer, v2: DemoServer, **extra: Any) -> dict[str, Any]:
    return {
        "routes": [
            route("chat", "/v1/chat/completions", {"name": "v1", "url": v1.url, "model": "rewritten"}, **ONE_TRY),
            route("echo", "/echo", {"name": "e", "url": v2.url, "headers": {"Authorization": "Bearer up"}}, **ONE_TRY),
            route("dead", "/dead", {"name": "gone", "url": "http://127.0.0.1:9"}, **ONE_TRY),
        ],
        **extra,
    }


def raw_request(gateway: Gateway, payload: bytes) -> bytes:
    """Send bytes as they are (httpx would normalise what these tests need to send)."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


# The forwarding, streaming and failure tests run with both production clients (upstream.client).
CLIENTS = pytest.mark.parametrize("client", ["h1", "aiohttp"])


@CLIENTS
def test_forwarding_and_header_rules(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory, client: str
) -> None:
    v1, v2 = demos
    gateway = gateway_factory(two_routes(v1, v2, upstream={"client": client}))
    response = httpx.post(
        f"{gateway.url}/echo/some/path?q=1&r=%20",
        content=b'{"x": 1}',
        headers={
            "content-type": "application/json",
            "authorization": "Bearer client",
            "connection": "x-drop-me",
            "x-drop-me": "1",
            "x-request-id": "req-42",
            "x-forwarded-for": "6.6.6.6",
        },
    )
    assert response.status_code == 200
    echoed = response.json()
    seen = dict(echoed["headers"])
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/echo/some/path"
    assert echoed["query"] == "q=1&r=%20"
    assert echoed["body"] == '{"x": 1}'
    assert seen["authorization"] == "Bearer up"
    assert "x-drop-me" not in seen
    assert seen["x-request-id"] == "req-42"
    assert seen["x-forwarded-for"] == "127.0.0.1"  # no trusted proxies configured: the client's claim is replaced
    assert seen["x-forwarded-proto"] == "http"
    assert response.headers["x-request-id"] == "req-42"
    assert response.headers["x-gateway-route"] == "echo"
    assert response.headers["x-gateway-backend"] == "e"
    assert response.headers["x-gateway-attempts"] == "1"
    assert response.headers["server-timing"].startswith("gateway;dur=")


def test_model_is_rewritten_per_backend(demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory(two_routes(v1, v2))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json()["model"] == "rewritten"


@CLIENTS
def test_stream_is_passed_on_chunk_by_chunk(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory, client: str
) -> None:
    v1, v2 = demos
    v1.control(mode="ok", interval_ms=150)
    gateway = gateway_factory(two_routes(v1, v2, upstream={"client": client}))
    started = time.monotonic()
    arrivals: list[float] = []
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 8
    assert arrivals[-1] > 1.0  # the upstream spaced ~9 events 150 ms apart
    assert arrivals[0] < arrivals[-1] - 0.8  # the first event was not held back until the end


def test_upstream_4xx_passes_through(demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    error = {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    v1.control(mode="status", status=400, body=error)
    gateway = gateway_factory(two_routes(v1, v2))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert response.json() == error
    assert response.headers["x-gateway-attempts"] == "1"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["request_id"] == response.headers["x-request-id"]
    assert {"type", "title", "detail"} <= set(problem)
    return problem


@CLIENTS
def test_every_error_status_is_problem_json(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory, client: str
) -> None:
    v1, v2 = demos
    gateway = gateway_factory(two_routes(v1, v2, listen={"max_body_bytes": 4096}, upstream={"client": client}))
    url = gateway.url
    assert_problem(httpx.post(f"{url}/echo", content=b"{", headers={"content-type": "application/json"}), 400)
    assert_problem(httpx.get(f"{url}/nowhere"), 404)
    assert_problem(httpx.post(f"{url}/echo", content=b"x" * 5000), 413)
    assert_problem(httpx.get(f"{url}/echo", headers={f"x-h-{i}": "v" for i in range(150)}), 431)
    assert_problem(httpx.get(f"{url}/echo", headers={"x-big": "v" * 40_000}), 431)
    refused = assert_problem(httpx.get(f"{url}/dead"), 502)
    assert "cannot connect" in refused["detail"]
    v1.control(mode="silent", count=1)
    silent = assert_problem(httpx.post(f"{url}/v1/chat/completions", json=CHAT), 504)
    assert "first_byte_s" in silent["detail"]
    v1.control(mode="reset", count=1)
    reset = assert_problem(httpx.post(f"{url}/v1/chat/completions", json=CHAT), 502)
    assert reset["title"] == "Upstream unreachable"
    # The gateway keeps serving after all of that.
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200


def test_ambiguous_requests_are_rejected(demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory(two_routes(v1, v2))
    for path in (b"/echo/../admin", b"/echo/./x", b"/echo/%2e%2E/x"):
        answer = raw_request(gateway, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer
    answer = raw_request(gateway, b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"application/problem+json" in answer


@CLIENTS
def test_stream_cut_mid_body_ends_with_an_error_event(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory, client: str
) -> None:
    v1, v2 = demos
    v1.control(mode="cut", after_events=3, count=1)
    gateway = gateway_factory(two_routes(v1, v2, upstream={"client": client}))
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-2] == "event: error"
    assert response.headers["x-request-id"] in lines[-1]
    assert "data: [DONE]" not in lines
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code == 200


def test_admin_needs_the_token(demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory) -> None:
    v1, v2 = demos
    gateway = gateway_factory(
        two_routes(v1, v2, admin={"token": "${ADMIN_TOKEN}", "host": "127.0.0.1"}), env={"ADMIN_TOKEN": "t0k"}
    )
    admin = gateway.admin_url
    assert httpx.get(f"{admin}/healthz").status_code == 200
    assert httpx.get(f"{admin}/metrics").status_code == 200
    denied = httpx.get(f"{admin}/admin/routes")
    assert denied.status_code == 401
    assert denied.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{admin}/admin/routes", headers={"authorization": "Bearer wrong"}).status_code == 401
    routes = httpx.get(f"{admin}/admin/routes", headers={"authorization": "Bearer t0k"}).json()["routes"]
    assert [r["name"] for r in routes] == ["chat", "echo", "dead"]
    assert routes[0]["backends"][0]["name"] == "v1"
    # readiness: the probe finds every live backend, and reports the dead one per route
    assert wait_until(lambda: httpx.get(f"{gateway.url}/readyz").json()["routes"]["chat"]["v1"])
    ready = httpx.get(f"{admin}/readyz")
    assert ready.status_code == 503  # route "dead" has no reachable backend
    assert ready.json()["routes"]["dead"] == {"gone": False}


def test_admin_without_token_binds_to_loopback(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory
) -> None:
    v1, v2 = demos
    gateway = gateway_factory(two_routes(v1, v2, admin={"host": "0.0.0.0"}))
    assert gateway.admin_url.startswith("http://127.0.0.1:")
    assert "admin port binds to 127.0.0.1" in gateway.proc.output()


def test_reload_good_and_bad(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    v1, v2 = demos
    config = two_routes(v1, v2)
    gateway = gateway_factory(config)
    admin = gateway.admin_url
    # A bad file: the running config stays, and the response says why, with the key path.
    broken = {**config, "routes": [{**config["routes"][0], "backends": [{"name": "v1", "url": "nope"}]}]}
    gateway.write_config({**broken, "listen": {"port": 0}, "admin": {"port": 0}})
    bad = httpx.post(f"{admin}/admin/reload")
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["pointer"] == "routes[0].backends[0].url"
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code == 200
    # A good file through the admin API: the new route table is live at once.
    renamed = {**config, "routes": [{**r, "name": r["name"] + "-2"} for r in config["routes"]]}
    gateway.write_config({**renamed, "listen": {"port": 0}, "admin": {"port": 0}})
    good = httpx.post(f"{admin}/admin/reload")
    assert good.json()["reloaded"] is True
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).headers["x-gateway-route"] == "chat-2"
    # SIGHUP reloads too.
    gateway.write_config({**config, "listen": {"port": 0}, "admin": {"port": 0}})
    gateway.proc.signal(signal.SIGHUP)
    assert wait_until(lambda: httpx.get(f"{gateway.url}/echo").headers.get("x-gateway-route") == "echo")
    # And so does editing the file.
    gateway.write_config({**renamed, "listen": {"port": 0}, "admin": {"port": 0}})
    assert wait_until(lambda: httpx.get(f"{gateway.url}/echo").headers.get("x-gateway-route") == "echo-2", timeout_s=5)
    kinds = [e["kind"] for e in httpx.get(f"{admin}/admin/events").json()["events"]]
    assert kinds.count("reload") >= 3
    assert "reload_failed" in kinds


def slow_request(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory, delay_ms: int
) -> tuple[dict[str, Any], Gateway, threading.Thread, list[httpx.Response]]:
    """A gateway whose /echo backend answers one request `delay_ms` late, and that request under way."""
    v1, v2 = demos
    config = two_routes(v1, v2)
    config["routes"][1]["timeouts"] = {**FAST, "first_byte_s": 5.0, "attempt_s": 5.0, "request_s": 5.0}
    gateway = gateway_factory(config)
    v2.control(mode="delay", delay_ms=delay_ms, count=1)
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(httpx.get(f"{gateway.url}/echo/slow", timeout=5)))
    thread.start()
    time.sleep(0.3)
    return config, gateway, thread, result


def test_in_flight_requests_finish_on_their_config(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory
) -> None:
    v1, _ = demos
    config, gateway, thread, result = slow_request(demos, gateway_factory, 800)
    moved = {**config, "routes": [route("echo", "/echo", {"name": "moved", "url": v1.url})]}
    gateway.write_config({**moved, "listen": {"port": 0}, "admin": {"port": 0}})
    assert httpx.post(f"{gateway.admin_url}/admin/reload").json()["reloaded"] is True
    thread.join()
    assert result[0].status_code == 200
    assert result[0].headers["x-gateway-backend"] == "e"  # started before the reload
    assert httpx.get(f"{gateway.url}/echo").headers["x-gateway-backend"] == "moved"


def test_sigterm_drains_in_flight_requests(
    demos: tuple[DemoServer, DemoServer], gateway_factory: GatewayFactory
) -> None:
    _, gateway, thread, result = slow_request(demos, gateway_factory, 700)
    gateway.proc.signal(signal.SIGTERM)
    thread.join()
    assert result[0].status_code == 200
    assert gateway.proc.wait(10) == 0
    assert "draining in-flight requests" in gateway.proc.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gateway.url}/echo")


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(ROOT / "config" / "gateway.yaml")],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0
    assert "ok (3 routes" in good.stdout
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(
        "listen: {port: -1}\nroutes:\n  - name: x\n    match: {path: /x}\n"
        "    backends: [{name: b, url: u, wieght: 1}]\n"
    )
    bad = subprocess.run([sys.executable, "-m", "gateway", "check", str(bad_file)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    lines = bad.stderr.splitlines()
    assert "listen.port: Input should be greater than or equal to 0" in lines
    assert "routes[0].backends[0].url: must be an absolute http:// or https:// URL" in lines
    assert "routes[0].backends[0].wieght: Extra inputs are not permitted" in lines
    serve = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad_file)], capture_output=True, text=True
    )
    assert serve.returncode == 1
    assert "Traceback" not in serve.stderr
