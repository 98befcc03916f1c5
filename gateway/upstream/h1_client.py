"""The upstream client on asyncio protocols and httptools: HTTP/1.1 with keep-alive and nothing else.

A gateway speaks to model servers over a handful of pooled keep-alive connections, with requests
it already validated and headers it already filtered. A general client does far more per request
(cookies, redirects, proxies, multidicts, URL objects, tracing hooks): aiohttp's share was the
largest single item in the gateway's profile. This one writes the request head in one join, parses
the answer with the same llhttp parser that uvicorn uses for the client side, and hands the body
over as the bytes arrive. Measured against aiohttp in loadtests/README.md.

What it does not do: HTTP/2, `Expect: 100-continue`, upgrades (101 answers fail the attempt),
proxies from the environment, redirects, decompression, cookies.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools

from gateway.config import Upstream
from gateway.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from gateway.types import Headers
from gateway.upstream.base import AttemptTimeouts, UpstreamRequest

# Above this much unread body the socket stops being read until the consumer catches up.
HIGH_WATER = 256 * 1024
# Bodies up to this size go out in the same write (and TCP segment) as the head.
_JOIN_BODY = 64 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_NO_BODY_STATUS = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where to connect and what to say in Host, parsed once per distinct origin."""

    host: str
    port: int
    tls: bool
    authority: bytes  # the Host header: host[:port] exactly as the URL wrote it


def split_url(url: str) -> tuple[str, str]:
    """`scheme://authority/target` into the origin part and the request target."""
    slash = url.find("/", url.find("://") + 3)
    return (url, "/") if slash < 0 else (url[:slash], url[slash:])


def parse_origin(origin: str) -> Origin:
    scheme, sep, authority = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not authority:
        raise ValueError(f"not an http(s) origin: {origin!r}")
    tls = scheme == "https"
    host, port = authority, 443 if tls else 80
    if authority.startswith("["):  # IPv6 literal
        end = authority.index("]")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest.startswith(":"):
            port = int(rest[1:])
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
        port = int(port_text)
    return Origin(host, port, tls, authority.encode("idna"))


class H1Response:
    """One answer as it arrives: the parser fills it, the proxy drains it."""

    __slots__ = (
        "status",
        "headers",
        "_conn",
        "_backend",
        "_idle_s",
        "_body",
        "_buffered",
        "_complete",
        "_error",
        "_waiter",
    )

    def __init__(self, conn: _Connection, backend: str, idle_s: float) -> None:
        self.status = 0
        self.headers: Headers = []
        self._conn = conn
        self._backend = backend
        self._idle_s = idle_s
        self._body: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- fed by the connection -------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._body.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self._complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- read by the proxy -----------------------------------------------------------------

    async def _more(self) -> None:
        """Wait for body bytes, the end, or an error; at most idle_s of silence."""
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._idle_s, self._idle_timeout)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _idle_timeout(self) -> None:
        self._fail(UpstreamTimeout(f"no bytes for {self._idle_s:g}s (idle_s) mid-body", backend=self._backend))

    def _take(self) -> bytes:
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        self._conn.resume()  # a no-op unless _feed paused it
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._body:
                yield self._take()
            elif self._complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._more()

    async def read(self) -> bytes:
        while not self._complete:
            if self._error is not None:
                raise self._error
            await self._more()
        return self._take() if self._body else b""

    async def aclose(self) -> None:
        conn = self._conn
        if conn.response is self:  # not released yet
            conn.release(reusable=self._complete and self._error is None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    __slots__ = (
        "pool",
        "loop",
        "transport",
        "parser",
        "response",
        "headers_done",
        "keep_alive",
        "until_eof",
        "head_request",
        "closed",
        "idle_since",
        "paused",
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: H1Response | None = None
        self.headers_done: asyncio.Future[None] | None = None
        self.keep_alive = True
        self.until_eof = False  # a body without length or chunking ends when the connection does
        self.head_request = False
        self.closed = False
        self.idle_since = 0.0
        self.paused = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass it

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken("the upstream switched protocols (101), which the gateway does not proxy")
        except httptools.HttpParserError as exc:
            self._broken(f"malformed HTTP response: {exc}")

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        response = self.response
        if response is not None:
            if response.status and self.until_eof and exc is None:
                response._finish()
            elif response.status:
                response._fail(UpstreamConnectError("connection broke mid-body", backend=response._backend))
            else:
                self._headers_failed(
                    UpstreamConnectError("connection closed before the response headers", backend=response._backend)
                )
        self._closed()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if status < 200:  # a 1xx interim answer (103 Early Hints): the real one follows
            response.headers = []
            return
        response.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_request:  # llhttp would wait for the body that a HEAD answer never sends
            self.keep_alive = False
            response._complete = True
        elif status not in _NO_BODY_STATUS:
            self.until_eof = not any(
                key.lower() in (b"content-length", b"transfer-encoding") for key, _ in response.headers
            )
            if self.until_eof:
                self.keep_alive = False
        waiter = self.headers_done
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and not response._complete:
            response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None and response.status:
            response._finish()

    # --- used by the client and the response -------------------------------------------------

    def start(self, head: bytes, body: bytes, response: H1Response, head_request: bool) -> asyncio.Future[None]:
        """Send the request; the future resolves when the final response headers arrived."""
        assert self.transport is not None
        self.response = response
        self.head_request = head_request
        self.until_eof = False
        waiter = self.headers_done = self.loop.create_future()
        if len(body) <= _JOIN_BODY:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        return waiter

    def release(self, reusable: bool) -> None:
        """The exchange is over: back to the pool if it ended cleanly, else closed."""
        self.response = None
        self.headers_done = None
        if self.paused:
            self.resume()
        if reusable and self.keep_alive and not self.closed:
            self.pool.put(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        waiter = self.headers_done
        if waiter is not None and not waiter.done():
            waiter.cancel()  # its awaiter is gone (cancelled or failed): nobody reads an error
        if self.transport is not None:
            self.transport.close()
        self._closed()

    def _closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.slot_freed()

    def _broken(self, reason: str) -> None:
        response = self.response
        assert response is not None
        error = UpstreamConnectError(reason, backend=response._backend)
        if response.status:
            response._fail(error)
        else:
            self._headers_failed(error)
        self.close()

    def _headers_failed(self, error: UpstreamError) -> None:
        waiter = self.headers_done
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class _Pool:
    """The connections to one origin: idle ones reused most-recent first, at most `per_origin` open.

    Whoever waits for a connection holds a future: a released connection is handed to it directly,
    a closed one wakes it with None to open its own.
    """

    def __init__(self, client: H1Client, origin: Origin) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.origin = origin
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()

    async def acquire(self, connect_s: float, backend: str) -> tuple[_Connection, bool]:
        """A connection and whether it was reused; opens one when under the limits, else waits."""
        deadline = self.loop.time() + connect_s
        while True:
            conn = self._idle_connection()
            if conn is not None:
                return conn, True
            client = self.client
            if self.open < client.per_origin and (client.open < client.total or client.evict_idle()):
                return await self._connect(deadline, connect_s, backend), False
            conn = await self._wait(deadline, backend)
            if conn is not None:
                return conn, True

    def _idle_connection(self) -> _Connection | None:
        idle = self.idle
        expire_before = time.monotonic() - self.client.keepalive_s
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < expire_before:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, deadline: float, connect_s: float, backend: str) -> _Connection:
        conn = _Connection(self)
        self.open += 1
        self.client.open += 1
        origin = self.origin
        try:
            async with asyncio.timeout_at(deadline):
                await self.loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=self.client.tls_context() if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
        except BaseException as exc:
            conn.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"connect timed out after {connect_s:g}s", backend=backend) from None
            if isinstance(exc, OSError):
                raise UpstreamConnectError(f"cannot connect: {exc.strerror or exc}", backend=backend) from None
            raise
        return conn

    async def _wait(self, deadline: float, backend: str) -> _Connection | None:
        """Until a connection is handed over (returned) or a slot frees up (None)."""
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self.waiters.append(waiter)
        if self.open < self.client.per_origin:  # held back by the total: any pool's closing helps
            self.client.waiting.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as exc:
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():  # woken, then cancelled before it ran: pass the turn on
                handed = waiter.result()
                if handed is not None:
                    self.put(handed)
                else:
                    self.slot_freed(closed=False)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    "no free upstream connection in time (upstream.max_connections)", backend=backend
                ) from None
            raise

    def put(self, conn: _Connection) -> None:
        if _wake(self.waiters, conn):
            return
        now = time.monotonic()
        conn.idle_since = now
        idle = self.idle
        idle.append(conn)
        # Idle connections past keep-alive go on the next release, so a trickle of traffic does not
        # keep a burst's connections open.
        while idle and (idle[0].closed or idle[0].idle_since < now - self.client.keepalive_s):
            idle.popleft().close()

    def slot_freed(self, closed: bool = True) -> None:
        """A connection closed (or a woken waiter gave up its turn): let one waiter open its own."""
        if closed:
            self.open -= 1
            self.client.open -= 1
        if not _wake(self.waiters, None):
            _wake(self.client.waiting, None)


def _wake(waiters: collections.deque[asyncio.Future[_Connection | None]], value: _Connection | None) -> bool:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(value)
            return True
    return False


def _expire(waiter: asyncio.Future[None], first_byte_s: float, backend: str) -> None:
    if not waiter.done():
        waiter.set_exception(
            UpstreamTimeout(f"no response headers within {first_byte_s:g}s (first_byte_s)", backend=backend)
        )


def _head(request: UpstreamRequest, target: str, authority: bytes) -> bytes:
    parts = [f"{request.method} {target} HTTP/1.1\r\nhost: ".encode("latin-1"), authority]
    for name, value in request.headers:
        parts += (b"\r\n", name, b": ", value)
    body = request.body
    if body or request.method in _BODY_METHODS:
        parts.append(b"\r\ncontent-length: %d" % len(body))
    parts.append(b"\r\n\r\n")
    return b"".join(parts)


class H1Client:
    """One pool per origin; limits and keep-alive from `upstream:`, timeouts from the route."""

    def __init__(self, settings: Upstream) -> None:
        self.total = settings.max_connections
        self.per_origin = settings.max_connections_per_backend
        self.keepalive_s = settings.keepalive_s
        self.open = 0
        self.waiting: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._pools: dict[str, _Pool] = {}
        self._tls: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def evict_idle(self) -> bool:
        """Close one idle connection of any origin to make room under the total limit."""
        for pool in self._pools.values():
            while pool.idle:
                conn = pool.idle.popleft()
                if not conn.closed:
                    conn.close()
                    return True
        return False

    async def send(self, request: UpstreamRequest, timeouts: AttemptTimeouts) -> H1Response:
        origin_text, target = split_url(request.url)
        pool = self._pools.get(origin_text)
        if pool is None:
            pool = self._pools[origin_text] = _Pool(self, parse_origin(origin_text))
        head = _head(request, target, pool.origin.authority)
        head_request = request.method == "HEAD"
        retried = False
        while True:
            conn, reused = await pool.acquire(timeouts.connect_s, request.backend)
            response = H1Response(conn, request.backend, timeouts.idle_s)
            headers_done = conn.start(head, request.body, response, head_request)
            try:
                if not headers_done.done():
                    timer = pool.loop.call_later(
                        timeouts.first_byte_s, _expire, headers_done, timeouts.first_byte_s, request.backend
                    )
                    try:
                        await headers_done
                    finally:
                        timer.cancel()
                else:
                    headers_done.result()
            except UpstreamConnectError:
                conn.close()
                # A kept-alive connection that the upstream closed while it sat idle: no byte of an
                # answer came back, so the request goes once more, on a fresh connection.
                if reused and not retried and not response.headers:
                    retried = False
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return response

    async def aclose(self) -> None:
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().close()
