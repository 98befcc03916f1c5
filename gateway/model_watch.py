"""After each response: what the model saw and said (feature and prediction histograms, feedback
joins), each attempt's outcome for the SLO and the canary analysis.

Attempts are recorded one by one, not just the answer: a canary failure hidden from the client
by a fallback to stable still counts against the canary.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from gateway.context import Reply, RequestContext
from gateway.feedback import FeedbackStore
from gateway.monitoring.book import MonitorBook
from gateway.slo import SloBook
from gateway.types import Clock

if TYPE_CHECKING:
    from gateway.analysis import CanaryAnalyzer

FAILURES = frozenset({"status_5xx", "timeout", "connect", "contract"})


class LiveSamples:
    """The last request and response bodies of each monitored route, for `POST /admin/routes/{route}/baseline`
    (a drift baseline built from live traffic). Keeps references to already parsed bodies: no copies."""

    def __init__(self, capacity: int = 5000) -> None:
        self._capacity = capacity
        self._pairs: dict[str, deque[tuple[object, object]]] = {}

    def add(self, route: str, request: object, response: object) -> None:
        ring = self._pairs.get(route)
        if ring is None:
            ring = self._pairs[route] = deque(maxlen=self._capacity)
        ring.append((request, response))

    def pairs(self, route: str) -> list[tuple[object, object]]:
        return list(self._pairs.get(route, ()))


class ModelWatch:
    def __init__(
        self,
        monitor: MonitorBook,
        feedback: FeedbackStore,
        slo: SloBook,
        analyzer: CanaryAnalyzer,
        samples: LiveSamples,
        clock: Clock = time.perf_counter,
    ) -> None:
        self._samples = samples
        self._monitor = monitor
        self._feedback = feedback
        self._slo = slo
        self._analyzer = analyzer
        self._clock = clock

    def record(self, ctx: RequestContext, reply: Reply | None, status: int, now: float) -> None:
        route = ctx.route.name
        for attempt in ctx.attempts:
            if attempt.error is None:
                continue
            failed = attempt.error.reason in FAILURES
            latency_ms = ((attempt.headers_at or now) - attempt.started_at) * 1000
            self._analyzer.observe(route, attempt.backend, failed, latency_ms, attempt.error.reason == "contract")
            if failed:
                self._slo.record(route, attempt.backend, status=502, latency_ms=latency_ms, stream_failed=False)
        if reply is None or reply.backend is None:
            return
        backend = reply.backend.name
        total_ms = (now - ctx.received_at) * 1000
        stream_failed = ctx.stream is not None and ctx.stream.error is not None
        self._analyzer.observe(route, backend, status >= 500 or stream_failed, total_ms, False)
        self._slo.record(route, backend, status=status, latency_ms=total_ms, stream_failed=stream_failed)
        if reply.stream is not None or status >= 400:
            return  # streams and errors carry no predictions to monitor
        if self._monitor.wants_request(route) and ctx.document is not None:
            self._monitor.observe_request(route, backend, ctx.document)
        document = None
        if self._monitor.wants_response(route):
            document = reply.document if reply.document is not None else _parse(reply.body)
            observed = self._monitor.observe_response(route, backend, document)
            if observed is not None:
                self._feedback.remember(ctx.request_id, route, backend, observed.predictions, observed.confidences)
        if ctx.document is not None and self._monitor.wants_request(route):
            self._samples.add(route, ctx.document, document)


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
