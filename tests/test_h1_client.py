"""The HTTP/1.1 upstream client against scripted loopback servers that write raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.config import Upstream
from gateway.errors import UpstreamConnectError, UpstreamTimeout
from gateway.upstream import make_client
from gateway.upstream.base import AttemptTimeouts, UpstreamRequest
from gateway.upstream.h1_client import HIGH_WATER, H1Client, Origin, parse_origin, split_url

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """The gateway runs on uvloop, whose transports differ from asyncio's in small ways: test both."""
    return "asyncio", {"use_uvloop": request.param == "uvloop"}


FAST = AttemptTimeouts(connect_s=2.0, first_byte_s=2.0, idle_s=2.0)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Script"], Awaitable[None]]  # one per connection


@dataclass
class Script:
    """A loopback server that runs `handler` per connection and keeps what it saw."""

    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


async def read_request(reader: asyncio.StreamReader, script: Script) -> bytes:
    """One request: head, then as many body bytes as Content-Length says."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    request = head + (await reader.readexactly(length) if length else b"")
    script.requests.append(request)
    return request


@contextlib.asynccontextmanager
async def scripted(
    handler: Handler,
) -> AsyncIterator[Script]:
    script = Script(url="")

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        try:
            await handler(reader, writer, script)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            script.disconnected.set()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    script.url = f"http://127.0.0.1:{port}"
    async with server:
        yield script


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
    """Keep-alive server: answer every request with OK."""
    while True:
        await read_request(reader, script)
        writer.write(OK)
        await writer.drain()


def answer_once(raw: bytes) -> Handler:
    """A server that reads one request, writes `raw` (b"": nothing) and holds the connection open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        await read_request(reader, script)
        if raw:
            writer.write(raw)
            await writer.drain()
        await reader.read()

    return handler


@pytest.fixture
async def client() -> AsyncIterator[H1Client]:
    client = H1Client(Upstream())
    yield client
    await client.aclose()


def post(url: str, body: bytes = b'{"a": 1}', method: str = "POST") -> UpstreamRequest:
    return UpstreamRequest(
        backend="b1", method=method, url=url, headers=[(b"content-type", b"application/json")], body=body
    )


async def exchange(client: H1Client, request: UpstreamRequest, timeouts: AttemptTimeouts = FAST) -> tuple[int, bytes]:
    response = await client.send(request, timeouts)
    try:
        return response.status, await response.read()
    finally:
        await response.aclose()


def test_urls_split_into_origin_and_target() -> None:
    assert split_url("http://h:1/v1/x?q=1") == ("http://h:1", "/v1/x?q=1")
    assert split_url("http://h:1") == ("http://h:1", "/")
    assert parse_origin("http://models.internal") == Origin("models.internal", 80, False, b"models.internal")
    assert parse_origin("https://models.internal") == Origin("models.internal", 443, True, b"models.internal")
    assert parse_origin("http://10.0.0.1:8000") == Origin("10.0.0.1", 8000, False, b"10.0.0.1:8000")
    assert parse_origin("http://[::1]:9000") == Origin("::1", 9000, False, b"[::1]:9000")
    with pytest.raises(ValueError, match="not an http"):
        parse_origin("ftp://x")


def test_the_configured_client_is_built() -> None:
    assert isinstance(make_client(Upstream(client="h1")), H1Client)


async def test_request_head_carries_host_length_and_the_given_headers_only(client: H1Client) -> None:
    async with scripted(answer_each) as server:
        status, body = await exchange(client, post(server.url + "/v1/chat?x=1"))
    assert (status, body) == (200, b"{}")
    head, _, sent_body = server.requests[0].partition(b"\r\n\r\n")
    port = server.url.rsplit(":", 1)[1]
    assert head.split(b"\r\n") == [
        b"POST /v1/chat?x=1 HTTP/1.1",
        b"host: 127.0.0.1:" + port.encode(),
        b"content-type: application/json",
        b"content-length: 8",
    ]
    assert sent_body == b'{"a": 1}'


async def test_a_get_without_body_sends_no_length(client: H1Client) -> None:
    async with scripted(answer_each) as server:
        await exchange(client, post(server.url + "/models", body=b"", method="GET"))
    assert b"content-length" not in server.requests[0]


async def test_large_bodies_arrive_whole(client: H1Client) -> None:
    big = b"x" * (3 * HIGH_WATER)

    async def echo_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        request = await read_request(reader, script)
        body = request.partition(b"\r\n\r\n")[2]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await reader.read()

    async with scripted(echo_big) as server:
        response = await client.send(post(server.url + "/", body=big), FAST)
        received = 0
        async for chunk in response.chunks():
            received += len(chunk)
            await asyncio.sleep(0)  # a slow reader: the socket is paused above the high-water mark
        await response.aclose()
    assert received == len(big)


async def test_keep_alive_reuses_one_connection(client: H1Client) -> None:
    async with scripted(answer_each) as server:
        for _ in range(5):
            assert await exchange(client, post(server.url + "/")) == (200, b"{}")
    assert server.connections == 1
    assert len(server.requests) == 5


async def test_connection_close_is_honoured(client: H1Client) -> None:
    async def close_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        await read_request(reader, script)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with scripted(close_each) as server:
        for _ in range(3):
            assert await exchange(client, post(server.url + "/")) == (200, b"ok")
    assert server.connections == 3


async def test_a_body_without_length_ends_with_the_connection(client: H1Client) -> None:
    async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        await read_request(reader, script)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"second")
        await writer.drain()

    async with scripted(until_eof) as server:
        assert await exchange(client, post(server.url + "/")) == (200, b"first second")


async def test_chunked_bodies_stream_as_they_arrive(client: H1Client) -> None:
    release = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        await read_request(reader, script)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader, script)
        writer.write(OK)
        await writer.drain()

    async with scripted(chunked) as server:
        response = await client.send(post(server.url + "/"), FAST)
        assert (b"Transfer-Encoding", b"chunked") in response.headers
        chunks = response.chunks()
        assert await anext(chunks) == b"hello"  # before the upstream finished
        release.set()
        assert [c async for c in chunks] == [b" world"]
        await response.aclose()
        assert await exchange(client, post(server.url + "/")) == (200, b"{}")
    assert server.connections == 1  # the chunked answer ended cleanly and kept the connection


async def test_head_answers_end_at_their_headers(client: H1Client) -> None:
    async with scripted(answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")) as server:
        assert await exchange(client, post(server.url + "/", body=b"", method="HEAD")) == (200, b"")
        assert await exchange(client, post(server.url + "/", body=b"", method="HEAD")) == (200, b"")
    assert server.connections == 2  # never reused: the parser would wait for those 1000 bytes


async def test_interim_answers_are_skipped(client: H1Client) -> None:
    async with scripted(answer_once(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK)) as server:
        response = await client.send(post(server.url + "/"), FAST)
        assert response.status == 200
        assert [k for k, _ in response.headers] == [b"Content-Type", b"Content-Length"]
        assert await response.read() == b"{}"
        await response.aclose()


async def test_no_content_answers_keep_the_connection(client: H1Client) -> None:
    async def no_content(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        while True:
            await read_request(reader, script)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    async with scripted(no_content) as server:
        assert await exchange(client, post(server.url + "/")) == (204, b"")
        assert await exchange(client, post(server.url + "/")) == (204, b"")
    assert server.connections == 1


async def test_a_connection_closed_while_idle_is_replaced_transparently(client: H1Client) -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        await read_request(reader, script)
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request arrives: close without answering it

    async with scripted(one_then_close) as server:
        assert await exchange(client, post(server.url + "/")) == (200, b"{}")
        assert await exchange(client, post(server.url + "/")) == (200, b"{}")
    assert server.connections == 2


async def test_refused_connections_fail_the_attempt(client: H1Client) -> None:
    async with scripted(answer_each) as server:
        url = server.url
    with pytest.raises(UpstreamConnectError, match="cannot connect") as caught:
        await client.send(post(url + "/"), FAST)
    assert caught.value.backend == "b1"
    assert client.open == 0


async def test_no_headers_within_first_byte_s_times_out(client: H1Client) -> None:
    async with scripted(answer_once(b"")) as server:
        timeouts = AttemptTimeouts(connect_s=1.0, first_byte_s=0.1, idle_s=1.0)
        with pytest.raises(UpstreamTimeout, match=r"no response headers within 0.1s"):
            await client.send(post(server.url + "/"), timeouts)
        await asyncio.wait_for(server.disconnected.wait(), 2)  # the connection was dropped
    assert client.open == 0


async def test_silence_mid_body_times_out_and_a_break_is_reported(client: H1Client) -> None:
    async def stall_then_break(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        request = await read_request(reader, script)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await writer.drain()
        if b"/stall" in request:
            await reader.read()

    timeouts = AttemptTimeouts(connect_s=1.0, first_byte_s=1.0, idle_s=0.1)
    async with scripted(stall_then_break) as server:
        response = await client.send(post(server.url + "/stall"), timeouts)
        chunks = response.chunks()
        assert await anext(chunks) == b"part"
        with pytest.raises(UpstreamTimeout, match=r"no bytes for 0.1s \(idle_s\) mid-body"):
            await anext(chunks)
        await response.aclose()

        response = await client.send(post(server.url + "/break"), timeouts)
        with pytest.raises(UpstreamConnectError, match="connection broke mid-body"):
            await response.read()
        await response.aclose()
    assert client.open == 0


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed HTTP response"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", r"\(101\)"),
    ],
)
async def test_malformed_answers_and_upgrades_fail_the_attempt(client: H1Client, answer: bytes, error: str) -> None:
    async with scripted(answer_once(answer)) as server:
        with pytest.raises(UpstreamConnectError, match=error):
            await client.send(post(server.url + "/"), FAST)
    assert client.open == 0


async def test_cancelling_an_attempt_drops_its_connection(client: H1Client) -> None:
    async with scripted(answer_once(b"")) as server, asyncio.TaskGroup() as tasks:
        task = tasks.create_task(client.send(post(server.url + "/"), FAST))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), 2)
    assert client.open == 0


async def test_closing_a_response_early_drops_its_connection(client: H1Client) -> None:
    async with scripted(answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")) as server:
        response = await client.send(post(server.url + "/"), FAST)
        await response.aclose()
        await response.aclose()  # idempotent
        await asyncio.wait_for(server.disconnected.wait(), 2)
    assert client.open == 0


async def test_waiters_get_released_connections_within_the_limits() -> None:
    client = H1Client(Upstream(max_connections_per_backend=1))
    gate = asyncio.Event()

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        while True:
            await read_request(reader, script)
            await gate.wait()
            writer.write(OK)
            await writer.drain()

    try:
        async with scripted(slow_first) as server, asyncio.TaskGroup() as tasks:
            first = tasks.create_task(exchange(client, post(server.url + "/")))
            second = tasks.create_task(exchange(client, post(server.url + "/")))
            await asyncio.sleep(0.05)
            assert server.connections == 1 and len(server.requests) == 1  # the second waits its turn
            gate.set()
            assert await first == (200, b"{}")
            assert await second == (200, b"{}")
            assert server.connections == 1

            gate.clear()
            holder = tasks.create_task(exchange(client, post(server.url + "/")))
            await asyncio.sleep(0.05)
            short = AttemptTimeouts(connect_s=0.1, first_byte_s=1.0, idle_s=1.0)
            with pytest.raises(UpstreamTimeout, match="no free upstream connection"):
                await client.send(post(server.url + "/"), short)
            gate.set()
            assert await holder == (200, b"{}")
    finally:
        await client.aclose()


async def test_the_total_limit_evicts_another_origins_idle_connection() -> None:
    client = H1Client(Upstream(max_connections=1))
    try:
        async with scripted(answer_each) as one, scripted(answer_each) as two:
            assert await exchange(client, post(one.url + "/")) == (200, b"{}")
            assert await exchange(client, post(two.url + "/")) == (200, b"{}")
            await asyncio.wait_for(one.disconnected.wait(), 2)
            assert client.open == 1
    finally:
        await client.aclose()


async def test_connections_idle_past_keepalive_are_not_reused() -> None:
    client = H1Client(Upstream(keepalive_s=0.05))
    try:
        async with scripted(answer_each) as server:
            await exchange(client, post(server.url + "/"))
            await asyncio.sleep(0.1)
            await exchange(client, post(server.url + "/"))
        assert server.connections == 2
    finally:
        await client.aclose()
