"""From a route's `contract:` references to compiled schemas, once, when the config is loaded.

A reference is a builtin name (`openai.chat`, `openai.completions`, `openai.embeddings`, `kserve.v2`) or
the path of a JSON Schema 2020-12 file, relative to the config file's directory. A custom schema may
`$ref` sibling files; it is never fetched over the network.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, Literal, cast, overload
from urllib.parse import urlsplit
from urllib.request import url2pathname

import jsonschema_rs
import orjson

from gateway.contracts import kserve
from gateway.contracts.defaults import Load, plan_defaults
from gateway.contracts.schema import Check, Direction, Schema
from gateway.contracts.violation import _pointer

BUILTINS: Final = ("kserve.v2", "openai.chat", "openai.completions", "openai.embeddings")
_CHECKS: Final[dict[tuple[str, Direction], Check]] = {
    ("kserve.v2", "request"): kserve.check_inputs,
    ("kserve.v2", "response"): kserve.check_outputs,
}
_DRAFT_2020_12: Final = "https://json-schema.org/draft/2020-12/schema"


class ContractError(ValueError):
    """A contract that cannot be used: an unknown builtin, an unreadable file, or a file that is not
    a valid JSON Schema 2020-12. The message says which and why."""


@dataclass(frozen=True, slots=True)
class Contract:
    """A route's contract: what requests must look like, and responses and their stream chunks."""

    request: Schema | None = None
    response: Schema | None = None
    chunk: Schema | None = None
    apply_defaults: bool = False


def load_contract(
    request: str | None = None, response: str | None = None, *, base_dir: Path, apply_defaults: bool = False
) -> Contract:
    """Compile a route's `contract: {request, response, apply_defaults}`. The chunk schema comes with a
    builtin response contract that streams (openai.chat, openai.completions)."""
    try:
        request_schema = load_schema(request, direction="request", base_dir=base_dir) if request else None
    except ContractError as exc:
        raise ContractError(f"request: {exc}") from None
    try:
        response_schema = load_schema(response, direction="response", base_dir=base_dir) if response else None
        chunk_schema = load_schema(response, direction="chunk", base_dir=base_dir) if response else None
    except ContractError as exc:
        raise ContractError(f"response: {exc}") from None
    return Contract(request_schema, response_schema, chunk_schema, apply_defaults)


@overload
def load_schema(ref: str, *, direction: Literal["request", "response"], base_dir: Path) -> Schema: ...
@overload
def load_schema(ref: str, *, direction: Direction, base_dir: Path) -> Schema | None: ...
def load_schema(ref: str, *, direction: Direction, base_dir: Path) -> Schema | None:
    """Compile the contract `ref` names for one direction.

    For a builtin, `direction` picks the request, the response or the stream-chunk schema ("chunk" is None
    for a builtin that does not stream). For a custom file, "chunk" is None: the file describes one body.
    Raises ContractError when the builtin is unknown or the file cannot be read or is not a valid schema.
    """
    if ref in BUILTINS:
        return _builtin(ref, direction)
    path = base_dir / ref
    if _looks_like_builtin(ref) and not path.exists():
        hint = difflib.get_close_matches(ref, BUILTINS, n=1)
        did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
        raise ContractError(f"unknown builtin contract {ref!r}: {did_you_mean}builtins are {', '.join(BUILTINS)}")
    if direction == "chunk":
        return None
    document = _read_schema(path)
    return _compile(ref, direction, document, base_uri=path.resolve().as_uri(), load=_read_local, shown=str(path))


def _looks_like_builtin(ref: str) -> bool:
    return "/" not in ref and "\\" not in ref and not ref.endswith(".json")


@functools.cache
def _builtin(name: str, direction: Direction) -> Schema | None:
    # Builtins never change: compile each once per process, however often the config is reloaded.
    resource = resources.files("gateway.contracts").joinpath("builtin", f"{name}.{direction}.json")
    if not resource.is_file():
        return None
    document = orjson.loads(resource.read_bytes())
    return _compile(name, direction, document, base_uri=f"builtin:{name}.{direction}.json", load=None, shown=name)


def _compile(
    name: str, direction: Direction, document: object, *, base_uri: str, load: Load | None, shown: str
) -> Schema:
    try:
        validator = jsonschema_rs.Draft202012Validator(
            cast(dict[str, object] | bool, document), retriever=_retriever(load), base_uri=base_uri
        )
    except (jsonschema_rs.ReferencingError, ValueError) as exc:  # jsonschema_rs.ValidationError is a ValueError
        # "Resource ... retrieving it failed: ContractError: <our reason>": keep our reason.
        reason = str(exc).splitlines()[0].rpartition("ContractError: ")[2]
        raise ContractError(f"{shown!r}: {reason}") from None
    defaults = plan_defaults(document, base_uri=base_uri, load=load)
    return Schema(name, direction, validator, check=_CHECKS.get((name, direction)), defaults=defaults)


def _retriever(load: Load | None) -> jsonschema_rs.RetrieverProtocol:
    def retrieve(uri: str, /) -> jsonschema_rs.JSONType:
        if load is None:
            raise ContractError(f"cannot resolve $ref {uri}")
        return cast("jsonschema_rs.JSONType", load(uri))

    return retrieve


def _read_local(uri: str) -> object:
    """A `$ref`'d schema document: local files only, never the network (config load must not hang)."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise ContractError(f"$ref to {uri}: only local schema files can be referenced")
    return _read_schema(Path(url2pathname(parts.path)))


def _read_schema(path: Path) -> object:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ContractError(f"cannot read contract file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"{str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(document, dict | bool):
        raise ContractError(f"{str(path)!r} is not a JSON Schema: a schema is an object or a boolean")
    if isinstance(document, dict) and "$schema" in document:
        declared = document["$schema"]
        if not isinstance(declared, str) or declared.rstrip("#") != _DRAFT_2020_12:
            raise ContractError(f"{str(path)!r} declares $schema {declared!r}: contracts are JSON Schema 2020-12")
    try:
        jsonschema_rs.meta.validate(document)
    except jsonschema_rs.ValidationError as exc:
        where = _pointer(exc.instance_path) or "the root"
        raise ContractError(f"{str(path)!r} is not a valid JSON Schema 2020-12: at {where}: {exc.message}") from None
    return document
