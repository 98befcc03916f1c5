"""One way a document breaks its contract: where (an RFC 6901 JSON pointer) and why."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# A violation's message can quote the offending value (a whole message list, a 100-row tensor):
# keep its head and its tail, which says what was expected.
_MAX_MESSAGE = 240
_HEAD = 96


@dataclass(frozen=True, slots=True, order=True)
class Violation:
    """A failing field: `pointer` into the document ("" is the root), a human-readable `message`,
    and the JSON Schema keyword (or gateway check) that failed, e.g. "required", "maximum", "shape"."""

    pointer: str
    message: str
    keyword: str = ""


def _pointer(path: Iterable[str | int]) -> str:
    """RFC 6901: each reference token is prefixed with "/", with "~" escaped as "~0" and "/" as "~1"."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in path)


def _clip(message: str) -> str:
    if len(message) <= _MAX_MESSAGE:
        return message
    tail = _MAX_MESSAGE - _HEAD - 5
    return f"{message[:_HEAD]} ... {message[-tail:]}"


def _normalize(violations: Iterable[Violation]) -> list[Violation]:
    """Deduplicated, sorted by pointer then message: the same document always gives the same list."""
    return sorted(set(violations))
