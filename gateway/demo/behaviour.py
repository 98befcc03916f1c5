"""Failure injection: the `Behaviour` a test sets through `POST /control`, and the `Controller` that applies it.

A behaviour replaces the previous one and applies to every later request whose path starts with `path_prefix`
(default: every model request, never the health probes unless `path_prefix` names them), at `probability`,
for the next `count` matching requests (then the server reverts to `ok`). Without a control behaviour the
server's background settings (`--latency-ms`, `--jitter-ms`, `--error-rate`) apply.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.demo.settings import DemoSettings

__all__ = ["OK", "Behaviour", "Controller", "Mode"]

Mode = Literal[
    "ok",
    "status",
    "reset",
    "silent",
    "delay",
    "stall",
    "cut",
    "malformed_event",
    "no_done",
    "bad_contract",
    "refuse_prefill",
]


class Behaviour(BaseModel):
    """How the server answers the requests a control rule matches (the body of `POST /control`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "ok"
    status: int = Field(default=500, ge=100, le=599)  # mode=status
    headers: dict[str, str] = Field(default_factory=dict)  # mode=status: extra response headers
    body: Any = None  # mode=status / bad_contract: the JSON body to answer with instead of the default
    delay_ms: float | None = Field(default=None, ge=0)  # delay / silent / stall; None: silent and stall never end
    after_events: int = Field(default=0, ge=0)  # stall / cut / malformed_event: events sent before the fault
    rst: bool | None = None  # reset / cut: close with a TCP RST (default: reset yes, cut no: FIN mid-body)
    interval_ms: float | None = Field(default=None, ge=0)  # pause between stream events (overrides the flag)
    count: int | None = Field(default=None, ge=1)  # only the next `count` matching requests
    path_prefix: str = ""  # only requests whose path starts with this
    probability: float = Field(default=1.0, ge=0.0, le=1.0)  # only this share of matching requests


OK = Behaviour()


class Controller:
    """Picks the behaviour of each request: the control rule if it matches, else the background settings.

    Holds per-server state only (the current rule and how many more requests it applies to).
    """

    __slots__ = ("_error", "_error_rate", "_jitter_ms", "_latency_ms", "_quiet", "_remaining", "_rng", "_rule")

    def __init__(self, settings: DemoSettings, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random(settings.seed)
        self._latency_ms = settings.latency_ms
        self._jitter_ms = settings.jitter_ms
        self._error_rate = settings.error_rate
        self._quiet = settings.latency_ms == 0 and settings.jitter_ms == 0 and settings.error_rate == 0
        self._error = Behaviour(mode="status", status=500)
        self._rule: Behaviour | None = None
        self._remaining: int | None = None

    def __repr__(self) -> str:
        mode = self._rule.mode if self._rule is not None else "ok"
        remaining = "" if self._remaining is None else f" remaining={self._remaining}"
        return f"<Controller {mode}{remaining}>"

    @property
    def rule(self) -> Behaviour | None:
        return self._rule

    @property
    def remaining(self) -> int | None:
        return self._remaining

    def set(self, rule: Behaviour) -> None:
        self._rule = rule
        self._remaining = rule.count

    def reset(self) -> None:
        self._rule = None
        self._remaining = None

    def pick(self, path: str, probe: bool) -> Behaviour:
        rule = self._rule
        if rule is not None:
            matches = path.startswith(rule.path_prefix) if rule.path_prefix else not probe
            if matches and (rule.probability >= 1.0 or self._rng.random() < rule.probability):
                if self._remaining is not None:
                    self._remaining -= 1
                    if self._remaining <= 0:
                        self.reset()
                return rule
        if probe or self._quiet:
            return OK
        return self._background()

    def _background(self) -> Behaviour:
        rng = self._rng
        if self._error_rate and rng.random() < self._error_rate:
            return self._error
        delay = self._latency_ms
        if self._jitter_ms:
            delay = max(0.0, delay + rng.uniform(-self._jitter_ms, self._jitter_ms))
        if delay <= 0:
            return OK
        # model_construct: no validation on the request path; the values were validated with the settings.
        return Behaviour.model_construct(mode="delay", delay_ms=delay)
