"""The toy models: deterministic answers, embeddings and classifications, with word counts as token counts.

A chat answer is `You said: <the last user message's words>`, so every demo backend gives the same answer to
the same conversation. An assistant prefill (the conversation ends with an assistant message) is continued:
the answer is the part of the full answer that follows the prefill, which is what a gateway splices into a
broken stream when it resumes it on another backend.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANSWER_WORDS",
    "Answer",
    "answer",
    "chat_answer",
    "classify",
    "count_tokens",
    "embed",
    "message_text",
]

ANSWER_WORDS = 32  # an answer echoes at most this many words of the prompt
_TOKEN = re.compile(r"\s*\S+")


def count_tokens(text: str) -> int:
    return len(text.split())


def message_text(content: object) -> str:
    """The text of a chat message's `content`: a string, or the `text` of its content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer split into tokens (each with its leading space), and why it ended."""

    tokens: list[str]
    finish_reason: str
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


def _reply(prompt: str) -> str:
    words = prompt.split()[:ANSWER_WORDS]
    return "You said: " + " ".join(words) if words else "You said nothing."


def _capped(tokens: list[str], max_tokens: int | None, prompt_tokens: int) -> Answer:
    if max_tokens is not None and len(tokens) > max_tokens:
        return Answer(tokens[:max_tokens], "length", prompt_tokens)
    return Answer(tokens, "stop", prompt_tokens)


def answer(prompt: str, max_tokens: int | None = None) -> Answer:
    """The answer to a plain prompt (legacy completions)."""
    return _capped(_TOKEN.findall(_reply(prompt)), max_tokens, count_tokens(prompt))


def _continuation(full: str, prefill: str) -> str:
    if full.startswith(prefill):
        return full[len(prefill) :]
    # The prefill is not ours (another model wrote it): go on after as many words as it has.
    rest = full.split()[len(prefill.split()) :]
    if not rest:
        return ""
    sep = "" if not prefill or prefill[-1].isspace() else " "
    return sep + " ".join(rest)


def chat_answer(messages: Sequence[Any], max_tokens: int | None = None) -> tuple[Answer, bool]:
    """The answer to a chat conversation, and whether it continues an assistant prefill."""
    prompt_tokens = 0
    last_user = ""
    for message in messages:
        if isinstance(message, dict):
            text = message_text(message.get("content"))
            prompt_tokens += count_tokens(text)
            if message.get("role") == "user":
                last_user = text
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        prefill = message_text(last.get("content"))
        continuation = _continuation(_reply(last_user), prefill)
        return _capped(_TOKEN.findall(continuation), max_tokens, prompt_tokens), True
    return _capped(_TOKEN.findall(_reply(last_user)), max_tokens, prompt_tokens), False


def embed(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector of `dimensions` floats derived from the text's hash."""
    raw = hashlib.shake_128(text.encode()).digest(2 * dimensions)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _feature(value: object) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return zlib.crc32(value.encode()) / 2**31 - 1.0  # in [-1, 1)
    return 0.0


def classify(row: Sequence[object]) -> tuple[str, float]:
    """A toy classifier: a label and a score in (0, 1) from a row of numbers or strings.

    Moves with the inputs (alternating-sign log-scaled sum), so drifting inputs drift predictions.
    """
    z = 0.0
    for i, value in enumerate(row):
        x = _feature(value)
        term = math.copysign(math.log1p(abs(x)), x)
        z += term if i % 2 == 0 else -term
    z /= math.sqrt(len(row)) if row else 1.0
    score = round(1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)))), 4)
    return ("positive" if score >= 0.5 else "negative"), score
