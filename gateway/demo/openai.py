"""The OpenAI-compatible endpoints: chat completions, legacy completions, embeddings and the model list.

Field names follow the OpenAI API reference (`chat.completion`, `chat.completion.chunk`, `text_completion`,
`list` of `embedding`); `system_fingerprint` is `demo-<server name>`, so a test can tell which backend answered.
"""

from __future__ import annotations

import base64
import itertools
import struct
import time
from typing import Any

from aiohttp import web

from gateway.demo.answers import Answer, answer, chat_answer, count_tokens, embed
from gateway.demo.behaviour import Behaviour
from gateway.demo.faults import send_json
from gateway.demo.responses import json_response, openai_error, read_json_object
from gateway.demo.settings import DemoSettings
from gateway.demo.sse import event, send_events

__all__ = ["EMBEDDING_DIMENSIONS", "OpenAIEndpoints"]

EMBEDDING_DIMENSIONS = 8
_MAX_DIMENSIONS = 4096


async def _read(request: web.Request) -> dict[str, Any] | web.Response:
    payload = await read_json_object(request)
    return openai_error(400, payload) if isinstance(payload, str) else payload


def _max_tokens(payload: dict[str, Any]) -> int | None | web.Response:
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return openai_error(400, f"'{key}' must be a non-negative integer", param=key)
        return value
    return None


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class OpenAIEndpoints:
    """Handlers of `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `/v1/models`."""

    __slots__ = ("_context_window", "_created", "_fingerprint", "_ids", "_interval_s", "_model", "_name")

    def __init__(self, settings: DemoSettings) -> None:
        self._name = settings.name
        self._model = settings.model
        self._fingerprint = f"demo-{settings.name}"
        self._interval_s = settings.stream_interval_ms / 1000
        self._context_window = settings.context_window
        self._ids = itertools.count(1)
        self._created = int(time.time())

    def __repr__(self) -> str:
        return f"<OpenAIEndpoints {self._name!r} model={self._model!r}>"

    def _interval(self, behaviour: Behaviour) -> float:
        return self._interval_s if behaviour.interval_ms is None else behaviour.interval_ms / 1000

    def _model_of(self, payload: dict[str, Any]) -> str:
        model = payload.get("model")
        return model if isinstance(model, str) and model else self._model

    def _too_long(self, prompt_tokens: int, max_tokens: int | None) -> web.Response | None:
        window = self._context_window
        if window and prompt_tokens + (max_tokens or 0) > window:
            message = (
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens or 0} in the completion). Please reduce the length of the messages or completion."
            )
            return openai_error(400, message, param="messages", code="context_length_exceeded")
        return None

    async def chat(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        payload = await _read(request)
        if isinstance(payload, web.Response):
            return payload
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return openai_error(400, "'messages' must be a non-empty array", param="messages")
        max_tokens = _max_tokens(payload)
        if isinstance(max_tokens, web.Response):
            return max_tokens
        reply, prefilled = chat_answer(messages, max_tokens)
        if prefilled and behaviour.mode == "refuse_prefill":
            message = "This model does not support continuing a final assistant message (prefill)."
            return openai_error(400, message, param="messages", code="prefill_not_supported")
        too_long = self._too_long(reply.prompt_tokens, max_tokens)
        if too_long is not None:
            return too_long
        stream = payload.get("stream") is True
        head = {
            "id": f"chatcmpl-{self._name}-{next(self._ids)}",
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": int(time.time()),
            "model": self._model_of(payload),
            "system_fingerprint": self._fingerprint,
        }
        if stream:
            events = self._chat_events(head, reply, _include_usage(payload))
            return await send_events(request, events, behaviour, self._interval(behaviour))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": reply.text},
            "logprobs": None,
            "finish_reason": reply.finish_reason,
        }
        data = {
            **head,
            "choices": [choice],
            "usage": _usage(reply.prompt_tokens, reply.completion_tokens),
        }
        return await send_json(request, data, behaviour)

    @staticmethod
    def _chat_events(head: dict[str, Any], reply: Answer, include_usage: bool) -> list[bytes]:
        base = head
        if include_usage:
            base = {**head, "usage": None}  # as OpenAI does: null on every chunk but the last

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return event({**base, "choices": [choice]})

        events = [chunk({"role": "assistant", "content": ""})]
        events.extend(chunk({"content": token}) for token in reply.tokens)
        events.append(chunk({}, reply.finish_reason))
        if include_usage:
            usage = _usage(reply.prompt_tokens, reply.completion_tokens)
            events.append(event({**base, "choices": [], "usage": usage}))
        return events

    async def completions(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        payload = await _read(request)
        if isinstance(payload, web.Response):
            return payload
        prompt = payload.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        else:
            return openai_error(400, "'prompt' must be a string or a non-empty array of strings", param="prompt")
        max_tokens = _max_tokens(payload)
        if isinstance(max_tokens, web.Response):
            return max_tokens
        replies = [answer(p, max_tokens) for p in prompts]
        prompt_tokens = sum(r.prompt_tokens for r in replies)
        completion_tokens = sum(r.completion_tokens for r in replies)
        too_long = self._too_long(max(r.prompt_tokens for r in replies), max_tokens)
        if too_long is not None:
            return too_long
        head = {
            "id": f"cmpl-{self._name}-{next(self._ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self._model_of(payload),
            "system_fingerprint": self._fingerprint,
        }
        if payload.get("stream") is True:
            include_usage = _include_usage(payload)
            events: list[bytes] = []
            for i, reply in enumerate(replies):
                for text, finish in [*((t, None) for t in reply.tokens), ("", reply.finish_reason)]:
                    choice = {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
                    events.append(event({**head, "choices": [choice]}))
            if include_usage:
                events.append(event({**head, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}))
            return await send_events(request, events, behaviour, self._interval(behaviour))
        choices = [
            {"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason}
            for i, r in enumerate(replies)
        ]
        data = {**head, "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}
        return await send_json(request, data, behaviour)

    async def embeddings(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        payload = await _read(request)
        if isinstance(payload, web.Response):
            return payload
        texts = _embedding_inputs(payload.get("input"))
        if texts is None:
            message = "'input' must be a string, an array of strings, or token arrays (non-empty)"
            return openai_error(400, message, param="input")
        dimensions = payload.get("dimensions", EMBEDDING_DIMENSIONS)
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= _MAX_DIMENSIONS:
            return openai_error(400, f"'dimensions' must be an integer in [1, {_MAX_DIMENSIONS}]", param="dimensions")
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vector = embed(text, dimensions)
            encoded: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        prompt_tokens = sum(count_tokens(t) for t in texts)
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        body = {"object": "list", "data": data, "model": self._model_of(payload), "usage": usage}
        return await send_json(request, body, behaviour)

    async def models(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse:
        model = {"id": self._model, "object": "model", "created": self._created, "owned_by": self._fingerprint}
        return json_response({"object": "list", "data": [model]})


def _embedding_inputs(value: object) -> list[str] | None:
    """Texts to embed; token-id arrays become their ids joined by spaces (one token each)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [" ".join(map(str, value))]
    if all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value):
        return [" ".join(map(str, v)) for v in value]
    return None
