"""JSON pointers (RFC 6901) with `*` for every element of an array, compiled once per config.

`compile_pointer("/instances/*/age")` returns a getter; `getter(document)` returns a list with one
entry per path the pointer reaches: the value found there, or `MISSING` where the path ends early
(a key absent, an index out of range, a step into a scalar). JSON null is returned as `None`, so
callers count "missing" and "null" apart. An empty array under `*` yields no entries at all.

`*` applies to arrays; on an object it is the member literally named "*" (plain RFC 6901), so a
pointer can still reach such a key. `~1` decodes to `/` and `~0` to `~`, in that order (RFC 6901
section 4). An array index is "0" or digits without a leading zero; "-" (the element after the
last) and anything else never match an array.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

__all__ = ["MISSING", "Getter", "PointerError", "compile_pointer", "parse_pointer"]

Getter = Callable[[object], list[object]]

_ESCAPES = re.compile(r"(?:[^~]|~[01])*")
_INDEX = re.compile(r"0|[1-9][0-9]*")


class _Missing:
    """The value at a path that does not exist (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


class PointerError(ValueError):
    """A pointer that is not valid RFC 6901 (with `*`)."""


def parse_pointer(pointer: str) -> tuple[str | None, ...]:
    """The reference tokens of `pointer`, unescaped; `None` stands for `*`."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise PointerError(f"{pointer!r}: a JSON pointer is empty or starts with '/'")
    tokens: list[str | None] = []
    for raw in pointer[1:].split("/"):
        if raw == "*":
            tokens.append(None)
            continue
        if "~" in raw:
            if not _ESCAPES.fullmatch(raw):
                raise PointerError(f"{pointer!r}: '~' must be followed by 0 or 1 (RFC 6901)")
            raw = raw.replace("~1", "/").replace("~0", "~")
        tokens.append(raw)
    return tuple(tokens)


def compile_pointer(pointer: str) -> Getter:
    """A getter for `pointer`; raises `PointerError` for a malformed one. See the module docstring."""
    tokens = parse_pointer(pointer)
    # Each step: (object key, array index or None, wildcard).
    steps = tuple(
        ("*", None, True) if token is None else (token, int(token) if _INDEX.fullmatch(token) else None, False)
        for token in tokens
    )
    if not any(wildcard for _, _, wildcard in steps):
        plain = tuple((key, index) for key, index, _ in steps)

        def get_one(document: object) -> list[object]:
            node = document
            for key, index in plain:
                if isinstance(node, dict):
                    node = node.get(key, MISSING)
                    if node is MISSING:
                        return [MISSING]
                elif isinstance(node, list) and index is not None and index < len(node):
                    node = node[index]
                else:
                    return [MISSING]
            return [node]

        return get_one

    def get_all(document: object) -> list[object]:
        nodes: list[object] = [document]
        for key, index, wildcard in steps:
            found: list[object] = []
            for node in nodes:
                if isinstance(node, dict):
                    found.append(node.get(key, MISSING))
                elif isinstance(node, list):
                    if wildcard:
                        found.extend(node)
                    elif index is not None and index < len(node):
                        found.append(node[index])
                    else:
                        found.append(MISSING)
                else:  # a scalar, null, or MISSING itself: the path ends here
                    found.append(MISSING)
            nodes = found
        return nodes

    return get_all
