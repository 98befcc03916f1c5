"""The terminal stage: the attempt loop (fallback, retries, 429, circuit breakers, hedging, deadline).

Order of attempts: the chosen backend, then the stable one, then the others, up to
`fallback.max_attempts`; a route with one backend retries it with jittered backoff. One deadline
(`timeouts.request_s`) bounds everything, as Envoy counts retries inside the route timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from gateway.canary import BackendChooser
from gateway.context import Attempt, Reply, RequestContext
from gateway.contract_check import field_errors
from gateway.errors import CircuitOpen, UpstreamError, UpstreamsExhausted, UpstreamStatus, UpstreamTimeout
from gateway.forward import Forwarder, StreamStart, request_body
from gateway.resilience import ResilienceState
from gateway.routing import BackendTarget, CompiledRoute
from gateway.streaming import StreamGuard, StreamState
from gateway.tasks import TaskSet
from gateway.types import Clock

log = logging.getLogger("gateway")

SAME_BACKEND_WINDOW_S = 1.5  # never more than two attempts on one backend within this window
BACKOFF_BASE_S = 0.05
BREAKER_FAILURES = frozenset({"status_5xx", "timeout", "connect", "contract"})


class LatencySource(Protocol):
    def percentile(self, route: str, backend: str, q: float) -> float | None:
        """The live q-th percentile (0-100) of the backend's upstream latency in ms, if known."""
        ...


class Attempts:
    """Runs a request's attempts until one answers, the policy says stop, or the deadline passes."""

    def __init__(
        self,
        forwarder: Forwarder,
        choosers: dict[str, BackendChooser],
        resilience: ResilienceState,
        tasks: TaskSet,
        latency: LatencySource | None = None,
        rng: random.Random | None = None,
        clock: Clock = time.perf_counter,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._forwarder = forwarder
        self._choosers = choosers
        self._resilience = resilience
        self._tasks = tasks
        self._latency = latency
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep

    async def __call__(self, ctx: RequestContext) -> Reply:
        route = ctx.route
        policy = route.config.fallback
        deadline = ctx.received_at + route.timeouts.request_s
        budget = self._resilience.retry_budget(route.name, policy.retry_budget, policy.min_retries)
        budget.request()
        chosen = self._choosers[route.name].choose(ctx)
        extra = _stream_extras(ctx)
        failures: list[UpstreamError] = []
        order = _attempt_order(route, chosen, policy.max_attempts)
        sent = 0
        index = 0
        while index < len(order):
            backend = order[index]
            index += 1
            breaker = self._resilience.breaker(route.name, backend.name, route.config.circuit_breaker)
            if not breaker.allow():
                failure: UpstreamError = CircuitOpen(backend.name, breaker.retry_in_s())
                failures.append(failure)
                if "circuit_open" not in policy.when:
                    raise failure
                ctx.fallback_reason = ctx.fallback_reason or failure.reason
                continue
            if sent > 0:
                wait = self._spacing(ctx, backend, failures[-1])
                if self._clock() + wait >= deadline:
                    breaker.release()
                    break
                if not budget.try_spend():
                    breaker.release()
                    log.info(
                        "request %s: retry budget of route %s spent; answering the failure", ctx.request_id, route.name
                    )
                    return _answer_failure(failures[-1], ctx)
                if wait > 0:
                    await self._sleep(wait)
            sent += 1
            try:
                if sent == 1 and route.config.hedge is not None:
                    reply = await self._first_attempt_hedged(ctx, backend, order, extra, deadline)
                else:
                    reply = await self._attempt(ctx, backend, extra, deadline)
            except UpstreamError as exc:
                breaker.record(exc.reason in BREAKER_FAILURES)
                failures.append(exc)
                if exc.reason not in policy.when:
                    return _answer_failure(exc, ctx)
                if ctx.fallback_reason is None:
                    ctx.fallback_reason = exc.reason
                ctx.trace.fallback(exc.reason, exc.backend, sent)
                if self._clock() >= deadline:
                    break
                if index < len(order) and _retry_same(exc, deadline, self._clock()):
                    order[index] = backend  # honour Retry-After on the same backend: the wait fits the deadline
                continue
            breaker.record(False)
            if reply.sse is not None:
                reply.stream = self._guard(ctx, reply, extra, deadline, backend)
            return reply
        return self._exhausted(ctx, failures, deadline)

    def _exhausted(self, ctx: RequestContext, failures: list[UpstreamError], deadline: float) -> Reply:
        if not failures:
            raise UpstreamTimeout("no attempt fitted in the request deadline", backend=ctx.route.stable.name)
        if all(isinstance(f, CircuitOpen) for f in failures):
            retry_in = min(f.retry_in_s for f in failures if isinstance(f, CircuitOpen))
            error = failures[-1]
            error.headers = [(b"retry-after", str(max(1, round(retry_in))).encode())]
            raise error
        if self._clock() >= deadline:
            raise UpstreamTimeout(
                f"request deadline of {ctx.route.timeouts.request_s:g}s passed after {len(ctx.attempts)} attempt(s)",
                backend=failures[-1].backend,
            )
        raise failures[0] if len(failures) == 1 else UpstreamsExhausted(failures)

    def _spacing(self, ctx: RequestContext, backend: BackendTarget, last: UpstreamError) -> float:
        """Seconds to wait before another attempt on `backend`: Retry-After, backoff, or the spacing rule."""
        now = self._clock()
        mine = [a.started_at for a in ctx.attempts if a.backend == backend.name]
        wait = 0.0
        if isinstance(last, UpstreamStatus) and last.backend == backend.name and last.retry_after_s is not None:
            wait = last.retry_after_s
        elif mine:
            n = len(mine)
            wait = self._rng.uniform(0.5, 1.0) * BACKOFF_BASE_S * 2 ** (n - 1)  # jittered exponential backoff
        if len(mine) >= 2:
            wait = max(wait, mine[-2] + SAME_BACKEND_WINDOW_S - now)
        return wait

    async def _first_attempt_hedged(
        self,
        ctx: RequestContext,
        backend: BackendTarget,
        order: list[BackendTarget],
        extra: dict[str, Any] | None,
        deadline: float,
    ) -> Reply:
        route = ctx.route
        hedge = route.config.hedge
        if hedge is None or self._latency is None:
            return await self._attempt(ctx, backend, extra, deadline)
        hedge_budget = self._resilience.hedge_budget(route.name, hedge.max_ratio)
        hedge_budget.request()
        delay_ms = self._latency.percentile(route.name, backend.name, hedge.after_percentile)
        alternative = next((b for b in order if b.name != backend.name), None)
        if delay_ms is None or alternative is None:
            return await self._attempt(ctx, backend, extra, deadline)
        primary = self._tasks.spawn(self._attempt(ctx, backend, extra, deadline), name=f"attempt {ctx.request_id}")
        done, _ = await asyncio.wait({primary}, timeout=max(delay_ms, hedge.min_delay_ms) / 1000)
        if done or not hedge_budget.try_spend():
            return await primary
        log.debug("request %s: hedging to %s after %.1f ms", ctx.request_id, alternative.name, delay_ms)
        second = self._tasks.spawn(self._attempt(ctx, alternative, extra, deadline, hedge=True))
        return await _first_success([primary, second])

    async def _attempt(
        self,
        ctx: RequestContext,
        backend: BackendTarget,
        extra: dict[str, Any] | None,
        deadline: float,
        hedge: bool = False,
    ) -> Reply:
        attempt = Attempt(backend=backend.name, started_at=self._clock(), hedge=hedge)
        ctx.attempts.append(attempt)
        try:
            return await self._forwarder.attempt(ctx, backend, request_body(ctx, backend, extra), deadline, attempt)
        except UpstreamError as exc:
            attempt.error = exc
            raise

    def _guard(
        self, ctx: RequestContext, reply: Reply, extra: dict[str, Any] | None, deadline: float, answered: BackendTarget
    ) -> AsyncIterator[bytes]:
        assert reply.sse is not None
        state = StreamState(hide_usage=extra is not None)
        ctx.stream = state
        resume = None
        if ctx.route.config.fallback.resume_streams and _is_chat(ctx):
            tried = {answered.name}

            async def resume(delivered: str, failure: str) -> StreamStart | None:
                return await self._resume(ctx, delivered, failure, extra, deadline, tried)

        chunk_schema = ctx.contract.chunk if ctx.contract is not None else None
        check = (lambda chunk: field_errors(chunk_schema.violations(chunk))) if chunk_schema is not None else None
        return StreamGuard(ctx.request_id, state, check=check, resume=resume, clock=self._clock).run(reply.sse)

    async def _resume(
        self,
        ctx: RequestContext,
        delivered: str,
        failure: str,
        extra: dict[str, Any] | None,
        deadline: float,
        tried: set[str],
    ) -> StreamStart | None:
        """Continue a broken chat answer on the next backend with an assistant prefill of `delivered`."""
        route = ctx.route
        candidates = [b for b in _attempt_order(route, route.stable, len(route.backends)) if b.name not in tried]
        if not candidates:
            return None
        backend = candidates[0]
        tried.add(backend.name)
        messages = list(ctx.document.get("messages") or []) + [{"role": "assistant", "content": delivered}]
        # vLLM continues a final assistant message only when told to; other servers ignore or refuse the flags.
        prefill = {
            **(extra or {}),
            "messages": messages,
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
        try:
            reply = await self._attempt(ctx, backend, prefill, max(deadline, self._clock() + route.timeouts.attempt_s))
        except UpstreamError as exc:
            log.warning(
                "request %s: resume on %s failed (%s); the original failure stands",
                ctx.request_id,
                backend.name,
                exc.detail,
            )
            return None
        if reply.sse is None or reply.status != 200:
            if reply.upstream is not None:
                await reply.upstream.aclose()
            return None
        return reply.sse


async def _first_success(tasks: list[asyncio.Task[Reply]]) -> Reply:
    """The first attempt to succeed wins; the others are cancelled (their connections closed)."""
    pending = set(tasks)
    errors: list[BaseException] = []
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    return task.result()
                errors.append(exc)
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                reply = await task
            except BaseException:  # a cancelled loser's outcome does not matter
                continue
            if reply.upstream is not None:
                await reply.upstream.aclose()
    raise errors[-1]


def _attempt_order(route: CompiledRoute, chosen: BackendTarget, max_attempts: int) -> list[BackendTarget]:
    """Chosen, then stable, then the others in config order; cycled to `max_attempts`."""
    distinct = [chosen]
    if route.stable is not chosen:
        distinct.append(route.stable)
    distinct.extend(b for b in route.backends if b not in distinct)
    return [distinct[i % len(distinct)] for i in range(max_attempts)]


def _retry_same(failure: UpstreamError, deadline: float, now: float) -> bool:
    """A 429 whose Retry-After still fits the deadline is retried on the same backend."""
    if not isinstance(failure, UpstreamStatus) or failure.reason != "status_429":
        return False
    retry_after = failure.retry_after_s
    return retry_after is not None and now + retry_after < deadline


def _answer_failure(failure: UpstreamError, ctx: RequestContext) -> Reply:
    """A failure that does not fall back: the upstream's own answer passes through; ours are raised."""
    if isinstance(failure, UpstreamStatus):
        return Reply(
            failure.upstream_status,
            failure.upstream_headers,
            body=failure.body,
            backend=ctx.route.backend(failure.backend),
            attempt=next((a for a in ctx.attempts if a.error is failure), None),
        )
    raise failure


def _is_chat(ctx: RequestContext) -> bool:
    return isinstance(ctx.document, dict) and isinstance(ctx.document.get("messages"), list)


def _stream_extras(ctx: RequestContext) -> dict[str, Any] | None:
    """Ask an OpenAI-style streaming request for usage in its final chunk when the client did not."""
    document = ctx.document
    if not isinstance(document, dict) or document.get("stream") is not True:
        return None
    if "messages" not in document and "prompt" not in document:
        return None
    options = document.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return None
    return {"stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}
