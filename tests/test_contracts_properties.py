"""Property-based tests of gateway.contracts: the builtins and a family of custom schemas."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings, strategies as st

from gateway.contracts import BUILTINS, Direction, Schema, Violation, load_schema

HERE = Path(__file__).parent
FAST = settings(max_examples=60, deadline=None)


def builtin(name: str, direction: Direction = "request") -> Schema:
    schema = load_schema(name, direction=direction, base_dir=HERE)
    assert schema is not None
    return schema


def _pointer(path: tuple[str | int, ...]) -> str:
    """RFC 6901, written out again here so that the tests do not trust the code under test."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in path)


def assert_well_formed(violations: list[Violation]) -> None:
    assert violations == sorted(set(violations))
    for violation in violations:
        assert isinstance(violation, Violation)
        assert violation.pointer == "" or violation.pointer.startswith("/")
        assert violation.message


def paths(doc: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every location in a JSON document, the root included."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += paths(value, (*prefix, index))
    return found


def replaced(doc: Any, path: tuple[str | int, ...], value: object) -> Any:
    """A copy of `doc` with the value at `path` replaced, or removed when `value` is REMOVE."""
    if not path:
        return value
    result = copy.deepcopy(doc)
    node = result
    for token in path[:-1]:
        node = node[token]
    if value is REMOVE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return result


REMOVE = object()

# --- strategies: JSON, and valid bodies for each builtin ---

text = st.text(max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=16,
)
not_a_string: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers() | st.lists(st.integers(), max_size=2) | st.just({})
)
not_an_array: st.SearchStrategy[Any] = st.none() | st.booleans() | st.integers() | text | st.just({})

text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
image_part = st.fixed_dictionaries(
    {
        "type": st.just("image_url"),
        "image_url": st.fixed_dictionaries({"url": text}, optional={"detail": st.just("low")}),
    }
)
tool_call = st.fixed_dictionaries(
    {
        "id": text,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": text, "arguments": text}),
    }
)
messages = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer"]), "content": text | st.lists(text_part, max_size=2)},
        optional={"name": text},
    ),
    st.fixed_dictionaries({"role": st.just("user"), "content": text | st.lists(text_part | image_part, min_size=1)}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": text | st.none()}, optional={"refusal": st.none()}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "tool_calls": st.lists(tool_call, min_size=1, max_size=2)},
        optional={"content": st.none()},
    ),
    st.fixed_dictionaries({"role": st.just("tool"), "content": text, "tool_call_id": text}),
)
unit = st.floats(min_value=0, max_value=1)
penalty = st.floats(min_value=-2, max_value=2)
stop = text | st.lists(text, max_size=4) | st.none()
logit_bias = st.dictionaries(st.integers(0, 200_000).map(str), st.integers(-100, 100), max_size=3)
vllm_extras = {"top_k": st.integers(-1, 50), "min_p": unit, "repetition_penalty": st.floats(0.5, 2)}
sampling = {
    "temperature": st.floats(min_value=0, max_value=2) | st.none(),
    "top_p": unit | st.none(),
    "n": st.integers(1, 128),
    "presence_penalty": penalty,
    "frequency_penalty": penalty,
    "stream": st.booleans(),
    "stop": stop,
    "seed": st.integers(-(2**63), 2**63 - 1),
    "logit_bias": logit_bias,
    "user": text,
    **vllm_extras,
}
chat_requests = st.fixed_dictionaries(
    {"model": text, "messages": st.lists(messages, min_size=1, max_size=4)},
    optional={
        **sampling,
        "max_tokens": st.integers(1, 2**31),
        "max_completion_tokens": st.integers(1, 2**31) | st.none(),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 20),
        "tool_choice": st.sampled_from(["none", "auto", "required"]),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
tokens = st.lists(st.integers(0, 200_000), min_size=1, max_size=5)
completion_requests = st.fixed_dictionaries(
    {"model": text, "prompt": text | st.lists(text, min_size=1, max_size=3) | tokens | st.lists(tokens, min_size=1)},
    optional={
        **sampling,
        "max_tokens": st.integers(0, 2**31),
        "logprobs": st.integers(0, 5),
        "echo": st.booleans(),
        "best_of": st.integers(0, 20),
    },
)
embedding_requests = st.fixed_dictionaries(
    {
        "model": text,
        "input": st.text(min_size=1) | st.lists(text, min_size=1, max_size=4) | tokens | st.lists(tokens, min_size=1),
    },
    optional={
        "encoding_format": st.sampled_from(["float", "base64"]),
        "dimensions": st.integers(1, 4096),
        "user": text,
    },
)

INT_RANGES = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "BOOL": st.booleans(),
    "BYTES": text,
    **{name: st.integers(low, high) for name, (low, high) in INT_RANGES.items()},
    **{
        name: st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-1000, 1000)
        for name in ("FP16", "FP32", "FP64", "BF16")
    },
}
WRONG_ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "BOOL": st.integers() | text | st.none(),
    "BYTES": st.integers() | st.booleans() | st.none(),
    **{
        name: st.floats(0.5, 0.9) | text | st.booleans() | st.integers(high + 1)
        for name, (_, high) in INT_RANGES.items()
    },
    **{name: text | st.booleans() | st.none() | st.just({}) for name in ("FP16", "FP32", "FP64", "BF16")},
}


def reshape(elements: list[object], shape: list[int]) -> list[object]:
    if len(shape) <= 1:
        return elements
    size = math.prod(shape[1:])
    return [reshape(elements[i * size : (i + 1) * size], shape[1:]) for i in range(shape[0])]


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    datatype = draw(st.sampled_from(sorted(ELEMENTS)))
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    elements = draw(st.lists(ELEMENTS[datatype], min_size=math.prod(shape), max_size=math.prod(shape)))
    data = reshape(elements, shape) if draw(st.booleans()) else elements
    tensor: dict[str, Any] = {"name": draw(text), "shape": shape, "datatype": datatype, "data": data}
    if draw(st.booleans()):
        tensor["parameters"] = draw(st.dictionaries(text, json_scalars, max_size=2))
    return tensor


kserve_requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors(), min_size=1, max_size=3)},
    optional={
        "id": text,
        "parameters": st.dictionaries(text, json_scalars, max_size=2),
        "outputs": st.lists(st.fixed_dictionaries({"name": text}), max_size=2),
    },
)
kserve_responses = st.fixed_dictionaries(
    {"model_name": text, "outputs": st.lists(tensors(), max_size=3)}, optional={"model_version": text, "id": text}
)
VALID_BODIES: list[tuple[str, Direction, st.SearchStrategy[Any]]] = [
    ("openai.chat", "request", chat_requests),
    ("openai.completions", "request", completion_requests),
    ("openai.embeddings", "request", embedding_requests),
    ("kserve.v2", "request", kserve_requests),
    ("kserve.v2", "response", kserve_responses),
]
valid_bodies = st.sampled_from(VALID_BODIES).flatmap(lambda case: st.tuples(st.just(case[:2]), case[2]))

# --- builtins ---


@FAST
@given(valid_bodies)
def test_generated_valid_bodies_pass(case: tuple[tuple[str, Direction], Any]) -> None:
    (name, direction), doc = case
    assert builtin(name, direction).violations(doc) == []


@FAST
@given(st.sampled_from(BUILTINS), st.sampled_from(["request", "response", "chunk"]), json_values)
def test_arbitrary_json_never_raises(name: str, direction: Direction, doc: object) -> None:
    schema = load_schema(name, direction=direction, base_dir=HERE)
    if schema is not None:
        assert_well_formed(schema.violations(doc))


@FAST
@given(valid_bodies, st.data())
def test_any_subtree_replaced_by_any_json_never_raises(case: tuple[tuple[str, Direction], Any], data: Any) -> None:
    (name, direction), doc = case
    path = data.draw(st.sampled_from(paths(doc)))
    assert_well_formed(builtin(name, direction).violations(replaced(doc, path, data.draw(json_values))))


@FAST
@given(chat_requests, st.data())
def test_chat_required_field_mutated_is_reported_at_its_pointer(doc: dict[str, Any], data: Any) -> None:
    index = data.draw(st.integers(0, len(doc["messages"]) - 1))
    message = doc["messages"][index]
    required: list[tuple[tuple[str | int, ...], st.SearchStrategy[Any]]] = [
        (("model",), not_a_string),
        (("messages",), not_an_array | st.just([])),
        (("messages", index, "role"), not_a_string | st.sampled_from(["bot", "System", ""])),
    ]
    if message["role"] in ("system", "developer", "user", "tool"):
        required.append((("messages", index, "content"), st.none() | st.booleans() | st.integers()))
    if message["role"] == "tool":
        required.append((("messages", index, "tool_call_id"), not_a_string))
    path, wrong = data.draw(st.sampled_from(required))
    mutated = replaced(doc, path, data.draw(st.just(REMOVE) | wrong))
    assert _pointer(path) in [v.pointer for v in builtin("openai.chat").violations(mutated)]


@FAST
@given(
    chat_requests,
    st.sampled_from(
        [
            ("temperature", st.floats(min_value=2, exclude_min=True, allow_infinity=False)),
            ("temperature", st.floats(max_value=-1e-9, allow_infinity=False)),
            ("top_p", st.floats(min_value=1, exclude_min=True, allow_infinity=False)),
            ("n", st.integers(max_value=0) | st.integers(min_value=129)),
            ("max_tokens", st.integers(max_value=0)),
            ("presence_penalty", st.floats(min_value=2, exclude_min=True, allow_infinity=False)),
            ("frequency_penalty", st.floats(max_value=-2, exclude_max=True, allow_infinity=False)),
            ("stop", st.lists(text, min_size=5, max_size=8)),
            ("stream", text | st.integers()),
        ]
    ),
    st.data(),
)
def test_chat_out_of_range_parameter_is_reported(doc: dict[str, Any], case: Any, data: Any) -> None:
    field, values = case
    violations = builtin("openai.chat").violations({**doc, field: data.draw(values)})
    assert [v.pointer for v in violations] == [f"/{field}"]


@FAST
@given(kserve_requests, st.data())
def test_kserve_required_field_mutated_is_reported_at_its_pointer(doc: dict[str, Any], data: Any) -> None:
    index = data.draw(st.integers(0, len(doc["inputs"]) - 1))
    field, wrong = data.draw(
        st.sampled_from(
            [
                ("name", not_a_string),
                ("shape", not_an_array),
                ("datatype", not_a_string | st.sampled_from(["FLOAT", "fp32", "STRING"])),
                ("data", not_an_array),
            ]
        )
    )
    path = ("inputs", index, field)
    mutated = replaced(doc, path, data.draw(st.just(REMOVE) | wrong))
    assert _pointer(path) in [v.pointer for v in builtin("kserve.v2").violations(mutated)]


@FAST
@given(kserve_requests, st.data())
def test_kserve_data_that_does_not_fit_shape_or_datatype_is_reported(doc: dict[str, Any], data: Any) -> None:
    index = data.draw(st.integers(0, len(doc["inputs"]) - 1))
    tensor = doc["inputs"][index]
    elements = [path for path in paths(tensor["data"]) if path and not isinstance(_at(tensor["data"], path), list)]
    schema = builtin("kserve.v2")
    # One element too many, wherever it goes.
    grown = replaced(doc, ("inputs", index, "data"), [*tensor["data"], data.draw(ELEMENTS[tensor["datatype"]])])
    assert (f"/inputs/{index}/data", "shape") in [(v.pointer, v.keyword) for v in schema.violations(grown)]
    # One element of the wrong type or out of range: reported at its own pointer, flat or nested.
    if elements:
        path = data.draw(st.sampled_from(elements))
        wrong = replaced(doc, ("inputs", index, "data", *path), data.draw(WRONG_ELEMENTS[tensor["datatype"]]))
        expected = (_pointer(("inputs", index, "data", *path)), "datatype")
        assert expected in [(v.pointer, v.keyword) for v in schema.violations(wrong)]


def _at(doc: Any, path: tuple[str | int, ...]) -> Any:
    for token in path:
        doc = doc[token]
    return doc


# --- custom schemas: a small family, written to a file and loaded back ---

names = st.text(alphabet="ab/~_", min_size=1, max_size=4)


@st.composite
def fields(draw: st.DrawFn) -> dict[str, Any]:
    """One property: its schema, a strategy of valid values and one of invalid values."""
    kind = draw(st.sampled_from(["integer", "string", "boolean", "enum"]))
    if kind == "integer":
        low = draw(st.integers(-100, 100))
        high = draw(st.integers(low, low + 100))
        schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
        valid: st.SearchStrategy[Any] = st.integers(low, high)
        invalid: st.SearchStrategy[Any] = st.integers(max_value=low - 1) | st.integers(min_value=high + 1) | text
    elif kind == "string":
        longest = draw(st.integers(0, 5))
        schema = {"type": "string", "maxLength": longest}
        valid = st.text(max_size=longest)
        invalid = st.text(min_size=longest + 1, max_size=longest + 3) | st.integers() | st.none()
    elif kind == "boolean":
        schema = {"type": "boolean"}
        valid = st.booleans()
        invalid = st.integers() | text | st.none()
    else:
        options = draw(st.lists(text, min_size=1, max_size=3, unique=True))
        schema = {"enum": options}
        valid = st.sampled_from(options)
        invalid = text.filter(lambda value: value not in options) | st.integers()
    default = draw(st.none() | valid)
    if default is not None:
        schema["default"] = default
    return {"schema": schema, "valid": valid, "invalid": invalid, "default": default}


@st.composite
def families(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    props = draw(st.dictionaries(names, fields(), min_size=1, max_size=5))
    required = [name for name in props if draw(st.booleans())]
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {name: field["schema"] for name, field in props.items()},
        "required": required,
        "additionalProperties": draw(st.booleans()),
    }
    return schema, props, required


def load_custom(schema: dict[str, Any], tmp: str) -> Schema:
    (Path(tmp) / "custom.json").write_bytes(orjson.dumps(schema))
    return load_schema("custom.json", direction="request", base_dir=Path(tmp))


@FAST
@given(families(), st.data())
def test_custom_schema_family_round_trips(family: Any, data: Any) -> None:
    schema_document, props, required = family
    with tempfile.TemporaryDirectory() as tmp:
        schema = load_custom(schema_document, tmp)
    present = [name for name in props if name in required or data.draw(st.booleans())]
    doc = {name: data.draw(props[name]["valid"]) for name in present}
    assert schema.violations(doc) == []

    # A present field given an invalid value, or a required field removed: reported at that field.
    name = data.draw(st.sampled_from(present)) if present else None
    if name is not None:
        mutated = {**doc, name: data.draw(props[name]["invalid"])}
        assert _pointer((name,)) in [v.pointer for v in schema.violations(mutated)]
    if required:
        name = data.draw(st.sampled_from(required))
        without = {key: value for key, value in doc.items() if key != name}
        assert [v.pointer for v in schema.violations(without)] == [_pointer((name,))]

    # Defaults fill exactly the missing fields that declare one, in schema order, and keep the document valid.
    filled = schema.apply_defaults(doc)
    expected = [name for name, field in props.items() if name not in present and field["default"] is not None]
    assert filled == [_pointer((name,)) for name in expected]
    assert all(doc[name] == props[name]["default"] for name in expected)
    assert schema.violations(doc) == []
    assert schema.apply_defaults(doc) == []


@FAST
@given(families(), st.dictionaries(names, json_values, max_size=4))
def test_custom_schema_rejects_unknown_properties_when_closed(family: Any, extra: dict[str, Any]) -> None:
    schema_document, props, _ = family
    with tempfile.TemporaryDirectory() as tmp:
        schema = load_custom(schema_document, tmp)
    unknown = {key: value for key, value in extra.items() if key not in props}
    pointers = [v.pointer for v in schema.violations(unknown)]
    for key in unknown:
        assert (_pointer((key,)) in pointers) is (schema_document["additionalProperties"] is False)
