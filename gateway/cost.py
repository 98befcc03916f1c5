"""What a request costs: token usage from the response (or an estimate), prices, and the ledger.

A backend's `price` adds up four parts: input and output tokens per 1,000 (from the response's
`usage`, or a stream's final usage chunk), upstream seconds (`per_second`, a GPU-second rate) and a
flat `per_request`. Only the attempt that answered is billed as a completion; a failed attempt still
used the backend, so its time and request price are recorded apart, as waste. Cached answers cost 0.

Usage shapes read (OpenAI API reference; vLLM sends the same):
- chat completions and completions: ``usage: {prompt_tokens, completion_tokens, total_tokens}``;
- embeddings: ``usage: {prompt_tokens, total_tokens}`` (no output tokens);
- a stream with ``stream_options.include_usage``: every chunk carries ``"usage": null`` except an
  extra last chunk (``choices: []``) with the totals;
- the Responses API's ``usage: {input_tokens, output_tokens}`` is read too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

from gateway.config import Price

__all__ = [
    "CHARS_PER_TOKEN",
    "CostLedger",
    "Rates",
    "Usage",
    "cost_usd",
    "estimate_input_tokens",
    "estimate_usage",
    "usage_from_chunk",
    "usage_from_response",
    "usage_from_sse_data",
    "waste_usd",
]

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text; only used when the backend reports no usage
_CONTENT = itemgetter("content")


@dataclass(slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _count(value: object) -> int | None:
    # bool is an int subclass; a JSON true is not a token count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def usage_from_response(doc: object) -> Usage | None:
    """Usage reported in a whole JSON response, or None when it has none (or a malformed one)."""
    if not isinstance(doc, dict):
        return None
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return None
    input_tokens = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    if input_tokens is None:
        return None
    output = usage.get("completion_tokens", usage.get("output_tokens"))
    output_tokens = 0 if output is None else _count(output)  # embeddings report no output tokens
    if output_tokens is None:
        return None
    return Usage(input_tokens, output_tokens)


def usage_from_chunk(doc: object) -> Usage | None:
    """Usage in one parsed stream chunk (the final usage chunk), or None for the ordinary ones.

    vLLM's `continuous_usage_stats` puts cumulative usage on every chunk: keep the last one seen.
    """
    return usage_from_response(doc)


def usage_from_sse_data(data: bytes) -> Usage | None:
    """Usage in a raw SSE `data:` payload; parses JSON only when the payload can hold usage at all."""
    if b'"usage"' not in data or b'_tokens"' not in data:  # ordinary chunks: "usage": null or absent
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return usage_from_chunk(doc)


def _text_chars(value: object, depth: int = 0) -> int:
    """Characters of prompt text: strings, lists of them, message parts' "content"/"text"."""
    if isinstance(value, str):
        return len(value)
    if depth > 8:
        return 0
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, dict):  # a message or a content part: the common case, without a call
                total += _part_chars(item, depth + 1)
            elif isinstance(item, int) and not isinstance(item, bool):
                total += CHARS_PER_TOKEN  # a pre-tokenised prompt: one token per integer
            else:
                total += _text_chars(item, depth + 1)
        return total
    return _part_chars(value, depth) if isinstance(value, dict) else 0


def _part_chars(part: dict[str, object], depth: int) -> int:
    """A message's or a content part's text: its "content" and "text"."""
    total = 0
    content = part.get("content")
    if content is not None:
        total += len(content) if isinstance(content, str) else _text_chars(content, depth + 1)
    text = part.get("text")
    if text is not None:
        total += len(text) if isinstance(text, str) else _text_chars(text, depth + 1)
    return total


def estimate_usage(request_doc: object, output_text_chars: int) -> Usage:
    """Usage estimated at ~4 characters a token, from the request's prompt text and the output length."""
    return Usage(
        input_tokens=estimate_input_tokens(request_doc),
        output_tokens=math.ceil(max(0, output_text_chars) / CHARS_PER_TOKEN),
        estimated=True,
    )


def estimate_input_tokens(request_doc: object) -> int:
    """Prompt tokens at ~4 characters a token. Prompt text is chat `messages[*].content` (strings or
    text parts), completions `prompt` and embeddings / Responses `input`; other JSON bodies count as none."""
    if not isinstance(request_doc, dict):
        return 0
    messages = request_doc.get("messages")
    if messages is not None:  # a chat request, which has neither "prompt" nor "input"
        try:  # the usual one, every message's content a string: summed without a Python loop
            input_chars = sum(map(str.__len__, map(_CONTENT, messages)))
        except (KeyError, TypeError):  # content parts, a missing or null content, not a list of messages
            input_chars = _text_chars(messages)
    else:
        input_chars = _text_chars(request_doc.get("prompt")) + _text_chars(request_doc.get("input"))
    return -(-input_chars // CHARS_PER_TOKEN)  # ceil


@dataclass(frozen=True, slots=True)
class Rates:
    """A backend's `price` as each answer is priced with it: plain slots, per token rather than per 1,000
    (a pydantic model's attributes, and the divisions, cost a third of the arithmetic on every request)."""

    per_request: float
    per_second: float
    per_input_token: float
    per_output_token: float

    @classmethod
    def of(cls, price: Price | None) -> Rates | None:
        if price is None:
            return None
        return cls(
            price.per_request,
            price.per_second,
            price.input_per_1k_tokens / 1000.0,
            price.output_per_1k_tokens / 1000.0,
        )


def cost_usd(rates: Rates | None, usage: Usage | None, upstream_s: float) -> float:
    """The price of an answered attempt: tokens, upstream seconds and the per-request part."""
    if rates is None:
        return 0.0
    cost = rates.per_request
    if upstream_s > 0.0:
        cost += rates.per_second * upstream_s
    if usage is not None:
        cost += usage.input_tokens * rates.per_input_token + usage.output_tokens * rates.per_output_token
    return cost


def waste_usd(rates: Rates | None, upstream_s: float) -> float:
    """What a failed attempt still cost: its upstream seconds and its per-request price, never tokens."""
    if rates is None:
        return 0.0
    return rates.per_request + rates.per_second * max(0.0, upstream_s)


@dataclass(slots=True)
class _Totals:
    requests: int = 0
    cached: int = 0
    estimated: int = 0
    failed_attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    wasted_usd: float = 0.0

    def add(self, other: _Totals) -> None:
        self.requests += other.requests
        self.cached += other.cached
        self.estimated += other.estimated
        self.failed_attempts += other.failed_attempts
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.wasted_usd += other.wasted_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cached": self.cached,
            "estimated": self.estimated,
            "failed_attempts": self.failed_attempts,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "wasted_usd": self.wasted_usd,
        }


class CostLedger:
    """Running totals per (route, backend, tenant); tenant "" when tenants are not configured.

    In-process, no I/O: the per-tenant daily budget lives in `gateway.tenants` on the state store.
    """

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str, str], _Totals] = {}

    def _row(self, route: str, backend: str, tenant: str | None) -> _Totals:
        key = (route, backend, tenant or "")
        row = self._totals.get(key)
        if row is None:
            row = self._totals[key] = _Totals()
        return row

    def record(
        self,
        route: str,
        backend: str,
        tenant: str | None,
        *,
        cost_usd: float,
        usage: Usage | None,
        cached: bool = False,
    ) -> None:
        """One answered request (the attempt that answered). A cached answer is counted, at no cost."""
        row = self._row(route, backend, tenant)
        row.requests += 1
        if cached:
            row.cached += 1
            return
        row.cost_usd += cost_usd
        if usage is not None:
            row.input_tokens += usage.input_tokens
            row.output_tokens += usage.output_tokens
            if usage.estimated:
                row.estimated += 1

    def record_waste(self, route: str, backend: str, tenant: str | None, wasted_usd: float) -> None:
        """One failed attempt on `backend`, and what it cost anyway (`waste_usd`)."""
        row = self._row(route, backend, tenant)
        row.failed_attempts += 1
        row.wasted_usd += wasted_usd

    def totals(self, route: str | None = None, backend: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        """Totals over every row matching the given names (None matches all; tenant "" is no tenant)."""
        out = _Totals()
        for (r, b, t), row in self._totals.items():
            if (route is None or r == route) and (backend is None or b == backend) and (tenant is None or t == tenant):
                out.add(row)
        return out.as_dict()

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """For /admin/stats: route -> backend -> totals, with a per-tenant split under "tenants"."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (route, backend, tenant), row in sorted(self._totals.items()):
            backends = out.setdefault(route, {})
            entry = backends.get(backend)
            if entry is None:
                entry = backends[backend] = {**_Totals().as_dict(), "tenants": {}}
            for name, value in row.as_dict().items():
                entry[name] += value
            entry["tenants"][tenant] = row.as_dict()
        return out

    def __repr__(self) -> str:
        total = self.totals()
        cost, wasted = total["cost_usd"], total["wasted_usd"]
        return f"<CostLedger rows={len(self._totals)} cost_usd={cost:.6f} wasted_usd={wasted:.6f}>"
