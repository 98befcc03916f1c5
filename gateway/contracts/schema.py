"""A compiled contract for one direction: JSON Schema 2020-12 (jsonschema-rs) plus optional checks in code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jsonschema_rs
import orjson

from gateway.contracts.defaults import DefaultsPlan
from gateway.contracts.violation import Violation, _clip, _normalize, _pointer

Direction = Literal["request", "response", "chunk"]
# A rule JSON Schema cannot express (KServe's data length against its shape); must accept any document.
Check = Callable[[object], list[Violation]]

_Kind = jsonschema_rs.ValidationErrorKind


class Schema:
    """A compiled contract for one direction: the request, the response, or one stream chunk (an SSE event).

    Immutable after construction and shared by every request of a route, so it is safe to use concurrently.
    """

    __slots__ = ("_check", "_defaults", "_validator", "direction", "name")

    def __init__(
        self,
        name: str,
        direction: Direction,
        validator: jsonschema_rs.Validator,
        *,
        check: Check | None = None,
        defaults: DefaultsPlan | None = None,
    ) -> None:
        self.name = name
        self.direction = direction
        self._validator = validator
        self._check = check
        self._defaults = defaults

    def __repr__(self) -> str:
        return f"<Schema {self.name!r} {self.direction}>"

    def violations(self, doc: object) -> list[Violation]:
        """Every failing field of `doc` (a parsed JSON value), sorted by pointer; [] when it is valid.

        A missing required property is reported at its own pointer ("/messages"), so the list names
        the field to fix, as pydantic's `loc` does.
        """
        try:
            valid = self._validator.is_valid(doc)  # the fast path: no error objects are built
            found = [] if valid else [v for error in self._validator.iter_errors(doc) for v in _from_error(error, doc)]
        except ValueError as exc:  # not a JSON value (a non-string key, bytes), or nested past the limit
            return [Violation("", f"cannot validate the document: {exc}", "type")]
        if self._check is not None:
            found.extend(self._check(doc))
        return _normalize(found) if found else found

    def violations_json(self, raw: bytes | str) -> list[Violation]:
        """`violations` of a raw JSON text, such as one SSE event's `data`; unparseable JSON is a violation."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return [Violation("", f"invalid JSON: {exc}", "json")]
        return self.violations(doc)

    @property
    def has_defaults(self) -> bool:
        """Whether the schema declares any `default` that `apply_defaults` could fill."""
        return self._defaults is not None

    def apply_defaults(self, doc: dict[str, Any]) -> list[str]:
        """Fill the JSON Schema `default` of each missing optional field, in place: at the top level and in
        nested objects (and array elements) that are present. Return the JSON pointers filled."""
        return self._defaults.apply(doc) if self._defaults is not None else []


def _from_error(error: jsonschema_rs.ValidationError, doc: object) -> list[Violation]:
    kind = error.kind
    path = error.instance_path
    keyword = kind.name
    if isinstance(kind, _Kind.Required):
        return [Violation(_pointer((*path, kind.property)), _clip(error.message), keyword)]
    unexpected: list[str] = []
    if isinstance(kind, _Kind.AdditionalProperties | _Kind.UnevaluatedProperties):
        unexpected = kind.unexpected
    elif isinstance(kind, _Kind.FalseSchema) and error.schema_path[-1:] == ["additionalProperties"]:
        # jsonschema-rs reports a bare `additionalProperties: false` (no `properties` beside it) as one
        # "False schema does not allow <first value>" at the object: every key of the object is unexpected.
        parent = _at(doc, path)
        unexpected = list(parent) if isinstance(parent, dict) else []
        keyword = "additionalProperties"
    if unexpected:
        return [
            Violation(_pointer((*path, name)), f"{orjson.dumps(name).decode()} is not an allowed property", keyword)
            for name in unexpected
        ]
    return [Violation(_pointer(path), _clip(error.message), keyword)]


def _at(doc: object, path: list[str | int]) -> object:
    for token in path:
        if isinstance(doc, dict) and isinstance(token, str):
            doc = doc.get(token)
        elif isinstance(doc, list) and isinstance(token, int) and token < len(doc):
            doc = doc[token]
        else:
            return None
    return doc
