"""JSON Schema `default`s: which missing optional fields to fill in, planned once per schema.

The plan follows `properties`, `items`, `allOf` and `$ref` (to the same document, by JSON pointer, or to a
sibling file). It does not guess through `anyOf`, `oneOf` or `if`/`then`: which branch applies depends on
the document. A recursive `$ref` is followed once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

from gateway.contracts.violation import _pointer

# Loads another schema document by its absolute URI (no fragment), for a `$ref` to a sibling file.
Load = Callable[[str], object]

_MISSING: Any = object()
_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class DefaultsPlan:
    """Where the defaults go: `fill` the missing keys of an object, descend into its present `props`,
    and into every element of an array with `items`."""

    fill: tuple[tuple[str, object], ...] = ()
    props: tuple[tuple[str, DefaultsPlan], ...] = ()
    items: DefaultsPlan | None = None

    def apply(self, doc: object) -> list[str]:
        """Fill `doc` in place; return the JSON pointers filled, in document order."""
        filled: list[str] = []
        _apply(self, doc, "", filled)
        return filled


def plan_defaults(root: object, *, base_uri: str, load: Load | None = None) -> DefaultsPlan | None:
    """The plan for a schema document, or None when it has no default to fill anywhere."""
    return _Planner(root, base_uri, load).plan([(root, base_uri)], frozenset(), 0)


def _apply(plan: DefaultsPlan, doc: object, pointer: str, filled: list[str]) -> None:
    if isinstance(doc, dict):
        for name, default in plan.fill:
            if name not in doc:
                doc[name] = copy.deepcopy(default) if isinstance(default, dict | list) else default
                filled.append(pointer + _pointer((name,)))
        for name, child in plan.props:
            if name in doc:
                _apply(child, doc[name], pointer + _pointer((name,)), filled)
    elif isinstance(doc, list) and plan.items is not None:
        for index, element in enumerate(doc):
            _apply(plan.items, element, f"{pointer}/{index}", filled)


class _Planner:
    def __init__(self, root: object, base_uri: str, load: Load | None) -> None:
        self._documents: dict[str, object] = {urldefrag(base_uri).url: root}
        self._load = load

    def plan(self, schemas: list[tuple[object, str]], seen: frozenset[str], depth: int) -> DefaultsPlan | None:
        if depth > _MAX_DEPTH:
            return None
        followed = set(seen)
        expanded: list[tuple[dict[str, Any], str]] = []
        for schema, base in schemas:
            self._expand(schema, base, followed, expanded)
        props: dict[str, list[tuple[object, str]]] = {}
        items: list[tuple[object, str]] = []
        for schema, base in expanded:
            properties = schema.get("properties")
            if isinstance(properties, dict):
                for name, sub in properties.items():
                    props.setdefault(name, []).append((sub, base))
            if isinstance(schema.get("items"), dict):
                items.append((schema["items"], base))
        path = frozenset(followed)
        fill: list[tuple[str, object]] = []
        children: list[tuple[str, DefaultsPlan]] = []
        for name, subs in props.items():
            default = self._default(subs, path)
            if default is not _MISSING:
                fill.append((name, default))
            child = self.plan(subs, path, depth + 1)
            if child is not None:
                children.append((name, child))
        item_plan = self.plan(items, path, depth + 1) if items else None
        if not (fill or children or item_plan):
            return None
        return DefaultsPlan(tuple(fill), tuple(children), item_plan)

    def _default(self, schemas: list[tuple[object, str]], seen: frozenset[str]) -> object:
        expanded: list[tuple[dict[str, Any], str]] = []
        followed = set(seen)
        for schema, base in schemas:
            self._expand(schema, base, followed, expanded)
        return next((schema["default"] for schema, _ in expanded if "default" in schema), _MISSING)

    def _expand(self, schema: object, base: str, followed: set[str], out: list[tuple[dict[str, Any], str]]) -> None:
        """`schema` and what it pulls in through `$ref` and `allOf`, each with the URI its refs resolve against."""
        if not isinstance(schema, dict):
            return
        out.append((schema, base))
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self._resolve(ref, base)
            if target is not None and target[2] not in followed:
                followed.add(target[2])
                self._expand(target[0], target[1], followed, out)
        all_of = schema.get("allOf")
        if isinstance(all_of, list):
            for sub in all_of:
                self._expand(sub, base, followed, out)

    def _resolve(self, ref: str, base: str) -> tuple[object, str, str] | None:
        uri = urldefrag(base).url + ref if ref.startswith("#") else urljoin(base, ref)
        document_uri, fragment = urldefrag(uri)
        if document_uri not in self._documents:
            if self._load is None:
                return None
            try:
                self._documents[document_uri] = self._load(document_uri)
            except (OSError, ValueError):
                return None
        target = _resolve_fragment(self._documents[document_uri], fragment)
        return None if target is _MISSING else (target, document_uri, uri)


def _resolve_fragment(document: object, fragment: str) -> object:
    """A URI fragment that is a JSON pointer ("" or "/a/0"); anything else (an anchor) is not followed."""
    if fragment == "":
        return document
    if not fragment.startswith("/"):
        return _MISSING
    node = document
    for raw in unquote(fragment)[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return _MISSING
    return node
