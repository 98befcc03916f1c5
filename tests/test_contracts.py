"""Unit tests of gateway.contracts: the builtins on real-looking bodies, custom schemas, defaults, pointers."""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

import gateway.contracts
from gateway.contracts import (
    BUILTINS,
    Contract,
    ContractError,
    Direction,
    Schema,
    Violation,
    load_contract,
    load_schema,
)
from gateway.contracts.defaults import plan_defaults
from gateway.contracts.violation import _pointer

HERE = Path(__file__).parent


def builtin(name: str, direction: Direction = "request") -> Schema:
    schema = load_schema(name, direction=direction, base_dir=HERE)
    assert schema is not None
    return schema


def pointers(violations: list[Violation]) -> list[str]:
    return [v.pointer for v in violations]


def write(tmp_path: Path, name: str, document: object) -> Path:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(document))
    return path


CHAT_REQUEST: dict[str, Any] = {
    "model": "small-chat",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ],
    "temperature": 0.7,
    "max_tokens": 256,
}

CHAT_TOOLS_REQUEST: dict[str, Any] = {
    "model": "small-chat",
    "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image, and what is the weather there?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "stream": True,
    "stream_options": {"include_usage": True},
    "stop": ["\n\n", "END"],
    "top_p": None,
    "n": None,
    "seed": 42,
    "logit_bias": {"50256": -100},
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
    # vLLM's own sampling parameters: OpenAI-compatible servers accept extra fields.
    "top_k": 20,
    "repetition_penalty": 1.1,
    "chat_template_kwargs": {"enable_thinking": False},
}

CHAT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "A boardwalk through a meadow.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}

CHAT_TOOL_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1699896916,
    "model": "llama-3-8b-v1",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "reasoning_content": "The user wants the weather.",  # vLLM's extra field
                "tool_calls": [
                    {"id": "call_abc", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99},
}

CHAT_CHUNKS: list[dict[str, Any]] = [
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ],
        "usage": None,
    },
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}],
    },
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "weather", "arguments": ""}}]
                },
                "finish_reason": None,
            }
        ],
    },
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    },
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    },
]

COMPLETION_REQUESTS: list[dict[str, Any]] = [
    {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7, "temperature": 0},
    {"model": "m", "prompt": ["one", "two"], "n": 2, "best_of": 3, "logprobs": 5, "echo": True, "stop": "\n"},
    {"model": "m", "prompt": [1, 2, 3], "max_tokens": 0, "echo": True, "logprobs": 0},
    {"model": "m", "prompt": [[1, 2], [3]], "suffix": None, "stream": True, "stream_options": {"include_usage": True}},
]

COMPLETION_RESPONSE: dict[str, Any] = {
    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    "object": "text_completion",
    "created": 1589478378,
    "model": "gpt-3.5-turbo-instruct",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [{"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

EMBEDDING_REQUESTS: list[dict[str, Any]] = [
    {"model": "text-embedding-3-small", "input": "The food was delicious", "encoding_format": "float"},
    {"model": "m", "input": ["a", "b"], "dimensions": 256},
    {"model": "m", "input": [101, 2023, 102], "encoding_format": "base64"},
    {"model": "m", "input": [[101, 2023], [102]], "user": "u-1"},
]

EMBEDDING_RESPONSES: list[dict[str, Any]] = [
    {
        "object": "list",
        "data": [{"object": "embedding", "embedding": [0.0023064255, -0.009327292, 1], "index": 0}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    },
    {
        "id": "embd-1",  # vLLM adds id and created
        "created": 1,
        "object": "list",
        "data": [{"object": "embedding", "embedding": "AAAAAA==", "index": 0}],
        "model": "m",
        "usage": {"prompt_tokens": 1, "total_tokens": 1, "completion_tokens": 0},
    },
]

KSERVE_REQUEST: dict[str, Any] = {
    "id": "42",
    "parameters": {"content_type": "np"},
    "inputs": [
        {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
        {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
        {"name": "input2", "shape": [2, 4], "datatype": "FP32", "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1]]},
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"], "parameters": {"content_type": "str"}},
        {"name": "empty", "shape": [0, 3], "datatype": "INT64", "data": []},
        {"name": "raw", "shape": [1, 3, 224, 224], "datatype": "FP16", "parameters": {"binary_data_size": 301056}},
    ],
    "outputs": [{"name": "output0", "parameters": {"binary_data": False}}],
}

KSERVE_RESPONSE: dict[str, Any] = {
    "model_name": "mymodel",
    "model_version": "1",
    "id": "42",
    "outputs": [
        {"name": "output0", "shape": [3, 2], "datatype": "FP32", "data": [1.0, 1.1, 2.0, 2.1, 3.0, 3.1]},
        {"name": "labels", "shape": [3], "datatype": "BYTES", "data": ["a", "b", "c"]},
        {"name": "raw", "shape": [3, 2], "datatype": "BF16", "parameters": {"binary_data_size": 12}},
    ],
}

# As KServe's Python model server writes it: optional fields as null.
KSERVE_PYTHON_RESPONSE: dict[str, Any] = {
    "id": "123",
    "model_name": "sklearn-v2-iris",
    "model_version": None,
    "parameters": None,
    "outputs": [{"name": "predict", "shape": [2], "datatype": "INT64", "parameters": None, "data": [1, 1]}],
}

VALID: list[tuple[str, Direction, dict[str, Any]]] = [
    ("openai.chat", "request", CHAT_REQUEST),
    ("openai.chat", "request", CHAT_TOOLS_REQUEST),
    ("openai.chat", "response", CHAT_RESPONSE),
    ("openai.chat", "response", CHAT_TOOL_RESPONSE),
    *(("openai.chat", "chunk", chunk) for chunk in CHAT_CHUNKS),
    *(("openai.completions", "request", body) for body in COMPLETION_REQUESTS),
    ("openai.completions", "response", COMPLETION_RESPONSE),
    ("openai.completions", "chunk", {**COMPLETION_RESPONSE, "choices": [{"text": "This", "index": 0}]}),
    ("openai.completions", "chunk", {**COMPLETION_RESPONSE, "choices": [], "usage": COMPLETION_RESPONSE["usage"]}),
    *(("openai.embeddings", "request", body) for body in EMBEDDING_REQUESTS),
    *(("openai.embeddings", "response", body) for body in EMBEDDING_RESPONSES),
    ("kserve.v2", "request", KSERVE_REQUEST),
    ("kserve.v2", "response", KSERVE_RESPONSE),
    ("kserve.v2", "response", KSERVE_PYTHON_RESPONSE),
    ("kserve.v2", "request", {"id": None, "parameters": None, "inputs": KSERVE_REQUEST["inputs"][:1], "outputs": None}),
]


@pytest.mark.parametrize(("name", "direction", "doc"), VALID)
def test_builtins_accept_real_bodies(name: str, direction: Direction, doc: dict[str, Any]) -> None:
    assert builtin(name, direction).violations(doc) == []


def with_(doc: dict[str, Any], pointer: str, value: object) -> dict[str, Any]:
    """A deep copy of `doc` with the value at `pointer` replaced (or removed, for REMOVE)."""
    result = copy.deepcopy(doc)
    *parents, last = pointer.split("/")[1:]
    node: Any = result
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    key: Any = int(last) if isinstance(node, list) else last
    if value is REMOVE:
        del node[key]
    else:
        node[key] = value
    return result


REMOVE = object()

INVALID: list[tuple[str, Direction, dict[str, Any], str, str]] = [
    # (builtin, direction, document, the pointer that must be reported, its keyword)
    ("openai.chat", "request", with_(CHAT_REQUEST, "/model", REMOVE), "/model", "required"),
    ("openai.chat", "request", with_(CHAT_REQUEST, "/messages", []), "/messages", "minItems"),
    ("openai.chat", "request", with_(CHAT_REQUEST, "/temperature", 2.5), "/temperature", "maximum"),
    ("openai.chat", "request", with_(CHAT_REQUEST, "/temperature", -0.1), "/temperature", "minimum"),
    ("openai.chat", "request", with_(CHAT_REQUEST, "/max_tokens", 0), "/max_tokens", "minimum"),
    ("openai.chat", "request", with_(CHAT_REQUEST, "/max_tokens", 1.5), "/max_tokens", "type"),
    ("openai.chat", "request", {**CHAT_REQUEST, "top_p": 1.01}, "/top_p", "maximum"),
    ("openai.chat", "request", {**CHAT_REQUEST, "n": 0}, "/n", "minimum"),
    ("openai.chat", "request", {**CHAT_REQUEST, "presence_penalty": -3}, "/presence_penalty", "minimum"),
    ("openai.chat", "request", {**CHAT_REQUEST, "frequency_penalty": 2.1}, "/frequency_penalty", "maximum"),
    ("openai.chat", "request", {**CHAT_REQUEST, "stream": "yes"}, "/stream", "type"),
    ("openai.chat", "request", {**CHAT_REQUEST, "stop": ["a", "b", "c", "d", "e"]}, "/stop", "maxItems"),
    ("openai.chat", "request", {**CHAT_REQUEST, "top_logprobs": 21}, "/top_logprobs", "maximum"),
    ("openai.chat", "request", {**CHAT_REQUEST, "logit_bias": {"x": 1}}, "/logit_bias", "propertyNames"),
    ("openai.chat", "request", {**CHAT_REQUEST, "tool_choice": "sometimes"}, "/tool_choice", "enum"),
    ("openai.chat", "request", with_(CHAT_REQUEST, "/messages/1/role", "robot"), "/messages/1/role", "enum"),
    ("openai.chat", "request", with_(CHAT_REQUEST, "/messages/1/content", None), "/messages/1/content", "type"),
    ("openai.chat", "request", with_(CHAT_REQUEST, "/messages/0/content", REMOVE), "/messages/0/content", "required"),
    (
        "openai.chat",
        "request",
        with_(CHAT_TOOLS_REQUEST, "/messages/3/tool_call_id", REMOVE),
        "/messages/3/tool_call_id",
        "required",
    ),
    (
        "openai.chat",
        "request",
        with_(CHAT_TOOLS_REQUEST, "/messages/1/content/1/image_url/url", REMOVE),
        "/messages/1/content/1/image_url/url",
        "required",
    ),
    ("openai.chat", "request", with_(CHAT_TOOLS_REQUEST, "/tools/0/function", REMOVE), "/tools/0/function", "required"),
    ("openai.chat", "response", with_(CHAT_RESPONSE, "/choices", []), "/choices", "minItems"),
    ("openai.chat", "response", with_(CHAT_RESPONSE, "/object", "chat.completion.chunk"), "/object", "const"),
    (
        "openai.chat",
        "response",
        with_(CHAT_RESPONSE, "/choices/0/finish_reason", REMOVE),
        "/choices/0/finish_reason",
        "required",
    ),
    ("openai.chat", "response", with_(CHAT_RESPONSE, "/choices/0/message", REMOVE), "/choices/0/message", "required"),
    ("openai.chat", "response", with_(CHAT_RESPONSE, "/usage/total_tokens", "21"), "/usage/total_tokens", "type"),
    ("openai.chat", "chunk", with_(CHAT_CHUNKS[1], "/choices/0/delta", REMOVE), "/choices/0/delta", "required"),
    ("openai.chat", "chunk", with_(CHAT_CHUNKS[1], "/choices/0/delta/content", 7), "/choices/0/delta/content", "type"),
    ("openai.completions", "request", with_(COMPLETION_REQUESTS[0], "/prompt", REMOVE), "/prompt", "required"),
    ("openai.completions", "request", {**COMPLETION_REQUESTS[0], "max_tokens": -1}, "/max_tokens", "minimum"),
    ("openai.completions", "request", {**COMPLETION_REQUESTS[0], "logprobs": 6}, "/logprobs", "maximum"),
    ("openai.completions", "request", {**COMPLETION_REQUESTS[0], "best_of": 21}, "/best_of", "maximum"),
    ("openai.completions", "request", {**COMPLETION_REQUESTS[0], "prompt": []}, "/prompt", "minItems"),
    ("openai.completions", "request", {**COMPLETION_REQUESTS[0], "prompt": ["a", 1]}, "/prompt/1", "type"),
    ("openai.completions", "request", {**COMPLETION_REQUESTS[0], "prompt": [[1], []]}, "/prompt/1", "minItems"),
    ("openai.completions", "response", with_(COMPLETION_RESPONSE, "/choices/0/text", None), "/choices/0/text", "type"),
    ("openai.embeddings", "request", {**EMBEDDING_REQUESTS[0], "input": ""}, "/input", "minLength"),
    ("openai.embeddings", "request", {**EMBEDDING_REQUESTS[0], "input": ["a"] * 2049}, "/input", "maxItems"),
    ("openai.embeddings", "request", {**EMBEDDING_REQUESTS[0], "input": [1, -2]}, "/input/1", "minimum"),
    ("openai.embeddings", "request", {**EMBEDDING_REQUESTS[0], "encoding_format": "int8"}, "/encoding_format", "enum"),
    ("openai.embeddings", "request", {**EMBEDDING_REQUESTS[0], "dimensions": 0}, "/dimensions", "minimum"),
    ("openai.embeddings", "response", with_(EMBEDDING_RESPONSES[0], "/usage", REMOVE), "/usage", "required"),
    (
        "openai.embeddings",
        "response",
        with_(EMBEDDING_RESPONSES[0], "/data/0/embedding/1", "x"),
        "/data/0/embedding/1",
        "type",
    ),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs", REMOVE), "/inputs", "required"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs", []), "/inputs", "minItems"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/0/name", REMOVE), "/inputs/0/name", "required"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/0/data", REMOVE), "/inputs/0/data", "required"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/0/datatype", "FLOAT"), "/inputs/0/datatype", "enum"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/0/shape/0", -1), "/inputs/0/shape/0", "minimum"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/0/shape", [2, 3]), "/inputs/0/data", "shape"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/2/data/1", [1.0]), "/inputs/2/data", "shape"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/0/data/2", -3), "/inputs/0/data/2", "datatype"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/0/data/2", 2.5), "/inputs/0/data/2", "datatype"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/1/data/1", 0), "/inputs/1/data/1", "datatype"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/2/data/1/3", "1.0"), "/inputs/2/data/1/3", "datatype"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/2/data/0/0", True), "/inputs/2/data/0/0", "datatype"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/inputs/3/data/0", 104), "/inputs/3/data/0", "datatype"),
    ("kserve.v2", "request", with_(KSERVE_REQUEST, "/outputs/0/name", REMOVE), "/outputs/0/name", "required"),
    ("kserve.v2", "response", with_(KSERVE_RESPONSE, "/model_name", REMOVE), "/model_name", "required"),
    (
        "kserve.v2",
        "response",
        with_(KSERVE_PYTHON_RESPONSE, "/outputs/0/data", REMOVE),  # parameters null: no binary_data_size
        "/outputs/0/data",
        "required",
    ),
    ("kserve.v2", "response", with_(KSERVE_RESPONSE, "/outputs/0/data", [1.0]), "/outputs/0/data", "shape"),
    ("kserve.v2", "response", with_(KSERVE_RESPONSE, "/outputs/1/data/2", None), "/outputs/1/data/2", "datatype"),
]


@pytest.mark.parametrize(("name", "direction", "doc", "pointer", "keyword"), INVALID)
def test_builtins_reject_with_the_failing_pointer(
    name: str, direction: Direction, doc: dict[str, Any], pointer: str, keyword: str
) -> None:
    violations = builtin(name, direction).violations(doc)
    assert (pointer, keyword) in [(v.pointer, v.keyword) for v in violations], violations


def test_assistant_message_needs_content_or_tool_calls() -> None:
    schema = builtin("openai.chat")
    without_both = with_(with_(CHAT_TOOLS_REQUEST, "/messages/2/tool_calls", REMOVE), "/messages/2/content", REMOVE)
    assert pointers(schema.violations(without_both)) == ["/messages/2/content"]
    assert schema.violations(with_(CHAT_TOOLS_REQUEST, "/messages/2/content", REMOVE)) == []
    assert schema.violations(with_(CHAT_TOOLS_REQUEST, "/messages/2/content", "Let me check.")) == []


def test_every_failing_field_is_listed_sorted_by_pointer() -> None:
    doc = {"messages": [{"role": "user"}, {"role": "bogus", "content": 1}], "temperature": 3, "n": 0}
    violations = builtin("openai.chat").violations(doc)
    assert violations == [
        Violation("/messages/0/content", '"content" is a required property', "required"),
        Violation("/messages/1/content", '1 is not of types "null", "string", "array"', "type"),
        Violation("/messages/1/role", violations[2].message, "enum"),
        Violation("/model", '"model" is a required property', "required"),
        Violation("/n", "0 is less than the minimum of 1", "minimum"),
        Violation("/temperature", "3 is greater than the maximum of 2", "maximum"),
    ]
    assert violations[2].message.startswith('"bogus" is not one of "system"')


def test_kserve_spec_example_is_inconsistent_and_rejected() -> None:
    # The protocol's own example sends a BOOL tensor of shape [3] with one element.
    doc = {"id": "42", "inputs": [{"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True]}]}
    assert builtin("kserve.v2").violations(doc) == [
        Violation("/inputs/0/data", "data has 1 elements, shape [3] needs 3", "shape")
    ]


@pytest.mark.parametrize(
    ("datatype", "good", "bad"),
    [
        ("INT8", [-128, 127], [128]),
        ("INT16", [-32768, 32767], [-32769]),
        ("INT32", [-(2**31), 2**31 - 1], [2**31]),
        ("INT64", [-(2**63), 2**63 - 1], [2**63]),
        ("UINT8", [0, 255], [256]),
        ("UINT16", [0, 65535], [-1]),
        ("UINT32", [0, 2**32 - 1], [2**32]),
        ("UINT64", [0, 2**64 - 1], [2**64]),
        ("FP16", [1, 0.5], ["0.5"]),
        ("FP32", [1e38, -1], [None]),
        ("FP64", [1e308, 0], [{}]),
        ("BF16", [1.5, 2], [False]),
        ("BOOL", [True, False], [1]),
        ("BYTES", ["a", ""], [1]),
    ],
)
def test_kserve_datatypes(datatype: str, good: list[object], bad: list[object]) -> None:
    schema = builtin("kserve.v2")

    def request(data: list[object]) -> dict[str, Any]:
        return {"inputs": [{"name": "x", "shape": [len(data)], "datatype": datatype, "data": data}]}

    assert schema.violations(request(good)) == []
    assert [(v.pointer, v.keyword) for v in schema.violations(request([*good, *bad]))] == [
        ("/inputs/0/data/2", "datatype")
    ]


def test_kserve_element_errors_are_capped_per_tensor() -> None:
    doc = {"inputs": [{"name": "x", "shape": [100], "datatype": "UINT8", "data": [-1] * 100}]}
    violations = builtin("kserve.v2").violations(doc)
    assert violations[0] == Violation("/inputs/0/data", "95 more elements are not valid UINT8 values", "datatype")
    assert pointers(violations[1:]) == sorted(f"/inputs/0/data/{i}" for i in range(5))
    assert violations[1].message == "-1 is out of the UINT8 range 0..255"


def test_kserve_nested_data_is_counted_whatever_the_nesting() -> None:
    schema = builtin("kserve.v2")
    deep: object = 1.0
    for _ in range(50):
        deep = [deep]
    doc: dict[str, Any] = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [deep, [[2]]]}]}
    assert schema.violations(doc) == []
    doc["inputs"][0]["data"][1] = [["2"]]
    assert schema.violations(doc) == [
        Violation("/inputs/0/data/1/0/0", '"2" is not a number, as FP32 needs', "datatype")
    ]


def test_kserve_checks_skip_what_the_schema_already_rejects() -> None:
    doc = {"inputs": [{"name": "x", "shape": "2", "datatype": "FP32", "data": "abc"}, 7]}
    assert [(v.pointer, v.keyword) for v in builtin("kserve.v2").violations(doc)] == [
        ("/inputs/0/data", "type"),
        ("/inputs/0/shape", "type"),
        ("/inputs/1", "type"),
    ]


def test_chunk_schemas_exist_only_for_streaming_builtins() -> None:
    assert builtin("openai.chat", "chunk").name == "openai.chat"
    assert builtin("openai.completions", "chunk").direction == "chunk"
    assert load_schema("openai.embeddings", direction="chunk", base_dir=HERE) is None
    assert load_schema("kserve.v2", direction="chunk", base_dir=HERE) is None
    # A chat.completion is not a chunk, and a chunk is not a chat.completion.
    assert "/object" in pointers(builtin("openai.chat", "chunk").violations(CHAT_RESPONSE))
    assert "/object" in pointers(builtin("openai.chat", "response").violations(CHAT_CHUNKS[1]))


def test_builtins_are_compiled_once() -> None:
    assert load_schema("openai.chat", direction="request", base_dir=HERE) is builtin("openai.chat")
    assert repr(builtin("openai.chat")) == "<Schema 'openai.chat' request>"
    assert BUILTINS == ("kserve.v2", "openai.chat", "openai.completions", "openai.embeddings")


def test_package_exports() -> None:
    public = (name for name, value in vars(gateway.contracts).items() if not name.startswith("_"))
    assert gateway.contracts.__all__ == sorted(
        name for name in public if not isinstance(vars(gateway.contracts)[name], ModuleType)
    )


# --- pointers, messages, odd documents ---


@pytest.mark.parametrize(
    ("path", "pointer"),
    [((), ""), (("a",), "/a"), (("a/b", 0), "/a~1b/0"), (("m~n",), "/m~0n"), (("~/",), "/~0~1"), (("",), "/")],
)
def test_pointer_escaping(path: tuple[str | int, ...], pointer: str) -> None:
    assert _pointer(path) == pointer


def test_pointers_of_custom_schema_escape_keys(tmp_path: Path) -> None:
    write(
        tmp_path,
        "odd.json",
        {
            "type": "object",
            "required": ["x/y"],
            "properties": {
                "a/b": {"type": "integer"},
                "m~n": {"type": "object", "additionalProperties": False},
                "p": {"type": "object", "properties": {"q": {}}, "additionalProperties": False},
            },
        },
    )
    schema = load_schema("odd.json", direction="request", base_dir=tmp_path)
    assert schema.violations({"a/b": "1", "m~n": {"k/1": 1, "z": 2}, "p": {"q": 1, "r~": 2}}) == [
        Violation("/a~1b", '"1" is not of type "integer"', "type"),
        Violation("/m~0n/k~11", '"k/1" is not an allowed property', "additionalProperties"),
        Violation("/m~0n/z", '"z" is not an allowed property', "additionalProperties"),
        Violation("/p/r~0", '"r~" is not an allowed property', "additionalProperties"),
        Violation("/x~1y", '"x/y" is a required property', "required"),
    ]


def test_duplicate_errors_are_reported_once(tmp_path: Path) -> None:
    write(tmp_path, "dup.json", {"allOf": [{"type": "string"}, {"type": "string"}]})
    schema = load_schema("dup.json", direction="request", base_dir=tmp_path)
    assert schema.violations(3) == [Violation("", '3 is not of type "string"', "type")]


def test_long_messages_are_clipped() -> None:
    doc = {**CHAT_REQUEST, "model": {"x": "y" * 5000}}
    (violation,) = builtin("openai.chat").violations(doc)
    assert violation.pointer == "/model"
    assert len(violation.message) <= 240
    assert violation.message.endswith('is not of type "string"')


@pytest.mark.parametrize("doc", [{1: 2}, {"model": b"bytes"}, {"messages": [object()]}])
def test_values_that_are_not_json_are_a_violation_not_an_exception(doc: object) -> None:
    (violation,) = builtin("openai.chat").violations(doc)
    assert violation.pointer == ""
    assert violation.message.startswith("cannot validate the document")


def test_violations_json() -> None:
    schema = builtin("openai.chat", "chunk")
    assert schema.violations_json(orjson.dumps(CHAT_CHUNKS[1])) == []
    assert schema.violations_json(b'{"id": ') == [
        Violation("", schema.violations_json(b'{"id": ')[0].message, "json"),
    ]
    assert schema.violations_json("[DONE]")[0].message.startswith("invalid JSON")
    assert pointers(schema.violations_json(b"{}")) == ["/choices", "/created", "/id", "/model", "/object"]


# --- defaults ---


def test_apply_defaults_fills_documented_openai_defaults() -> None:
    schema = builtin("openai.chat")
    doc = {**copy.deepcopy(CHAT_REQUEST), "top_p": None}
    filled = schema.apply_defaults(doc)
    assert filled == ["/n", "/stream", "/presence_penalty", "/frequency_penalty", "/logprobs"]
    assert doc["temperature"] == 0.7  # present: kept
    assert doc["top_p"] is None  # present as null: kept
    assert (doc["n"], doc["stream"], doc["presence_penalty"]) == (1, False, 0)
    assert schema.violations(doc) == []
    assert schema.apply_defaults(doc) == []  # idempotent
    assert builtin("openai.completions").apply_defaults({"model": "m", "prompt": "p", "max_tokens": 5}) == [
        "/best_of",
        "/echo",
        "/frequency_penalty",
        "/presence_penalty",
        "/n",
        "/stream",
        "/temperature",
        "/top_p",
    ]


def test_schemas_without_defaults_fill_nothing() -> None:
    schema = builtin("kserve.v2")
    doc = copy.deepcopy(KSERVE_REQUEST)
    assert not schema.has_defaults
    assert schema.apply_defaults(doc) == []
    assert doc == KSERVE_REQUEST


def test_apply_defaults_nested_arrays_refs_and_sibling_files(tmp_path: Path) -> None:
    write(tmp_path, "common.json", {"$defs": {"unit": {"type": "string", "enum": ["m", "ft"], "default": "m"}}})
    write(
        tmp_path,
        "req.json",
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["rows"],
            "properties": {
                "rows": {"type": "array", "items": {"$ref": "#/$defs/row"}},
                "options": {
                    "type": "object",
                    "default": {},
                    "properties": {"unit": {"$ref": "common.json#/$defs/unit"}},
                },
                "a~/b": {"type": "integer", "default": 3},
            },
            "allOf": [{"properties": {"version": {"const": 2, "default": 2}}}],
            "$defs": {
                "row": {
                    "type": "object",
                    "required": ["x"],
                    "properties": {"x": {"type": "number"}, "weight": {"type": "number", "default": 1.0}},
                }
            },
        },
    )
    schema = load_schema("req.json", direction="request", base_dir=tmp_path)
    doc: dict[str, Any] = {"rows": [{"x": 1}, {"x": 2, "weight": 0.5}, "not an object"]}
    filled = schema.apply_defaults(doc)
    assert filled == ["/options", "/a~0~1b", "/version", "/rows/0/weight", "/options/unit"]
    assert doc == {
        "rows": [{"x": 1, "weight": 1.0}, {"x": 2, "weight": 0.5}, "not an object"],
        "options": {"unit": "m"},
        "a~/b": 3,
        "version": 2,
    }
    assert pointers(schema.violations(doc)) == ["/rows/2"]


def test_mutable_defaults_are_copied(tmp_path: Path) -> None:
    write(tmp_path, "s.json", {"properties": {"tags": {"type": "array", "default": []}}})
    schema = load_schema("s.json", direction="request", base_dir=tmp_path)
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    schema.apply_defaults(first)
    schema.apply_defaults(second)
    first["tags"].append("x")
    assert second == {"tags": []}


def test_recursive_schema_defaults_terminate(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tree.json",
        {"type": "object", "properties": {"label": {"default": "node"}, "children": {"items": {"$ref": "#"}}}},
    )
    schema = load_schema("tree.json", direction="request", base_dir=tmp_path)
    doc: dict[str, Any] = {"children": [{"children": [{}]}]}
    assert schema.apply_defaults(doc) == ["/label", "/children/0/label"]


# --- loading: custom schemas and errors ---


def test_custom_schema_with_sibling_ref(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    write(tmp_path / "schemas", "common.json", {"$defs": {"age": {"type": "integer", "minimum": 0}}})
    write(
        tmp_path / "schemas",
        "credit.json",
        {
            "type": "object",
            "properties": {"instances": {"items": {"properties": {"age": {"$ref": "common.json#/$defs/age"}}}}},
        },
    )
    schema = load_schema("schemas/credit.json", direction="request", base_dir=tmp_path)
    assert schema.name == "schemas/credit.json"
    assert schema.violations({"instances": [{"age": 3}, {"age": -1}]}) == [
        Violation("/instances/1/age", "-1 is less than the minimum of 0", "minimum")
    ]
    assert load_schema("schemas/credit.json", direction="chunk", base_dir=tmp_path) is None
    absolute = load_schema(str(tmp_path / "schemas/credit.json"), direction="response", base_dir=HERE)
    assert absolute.violations({"instances": [{"age": -1}]}) != []


def test_boolean_schemas(tmp_path: Path) -> None:
    write(tmp_path, "yes.json", True)
    write(tmp_path, "no.json", False)
    assert load_schema("yes.json", direction="request", base_dir=tmp_path).violations({"x": 1}) == []
    assert pointers(load_schema("no.json", direction="request", base_dir=tmp_path).violations({"x": 1})) == [""]


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"type": "nope"}, "is not a valid JSON Schema 2020-12: at /type:"),
        ({"properties": {"a": {"minimum": "0"}}}, "at /properties/a/minimum: "),
        ({"required": "name"}, "at /required: "),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "declares $schema"),
        ({"$ref": "#/$defs/missing"}, "/$defs/missing"),
        ({"$ref": "https://example.com/schema.json"}, "only local schema files can be referenced"),
        ({"$ref": "other.json"}, "No such file or directory"),
        ([1, 2], "a schema is an object or a boolean"),
    ],
)
def test_bad_custom_schema_is_a_contract_error(tmp_path: Path, document: object, reason: str) -> None:
    write(tmp_path, "bad.json", document)
    with pytest.raises(ContractError, match="bad.json") as caught:
        load_schema("bad.json", direction="request", base_dir=tmp_path)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)  # so a pydantic validator reports it with its key path


def test_unreadable_and_unparseable_files(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ContractError, match="is not valid JSON"):
        load_schema("broken.json", direction="request", base_dir=tmp_path)
    with pytest.raises(ContractError, match="cannot read contract file .*missing.json.*No such file"):
        load_schema("missing.json", direction="request", base_dir=tmp_path)


def test_unknown_builtin_suggests_the_closest() -> None:
    with pytest.raises(ContractError, match=r"unknown builtin contract 'openai.chats': did you mean 'openai.chat'\?"):
        load_schema("openai.chats", direction="request", base_dir=HERE)
    with pytest.raises(ContractError, match="builtins are kserve.v2, openai.chat, openai.completions"):
        load_schema("tfserving", direction="response", base_dir=HERE)


def test_load_contract(tmp_path: Path) -> None:
    chat = load_contract("openai.chat", "openai.chat", base_dir=HERE, apply_defaults=True)
    assert chat == Contract(
        builtin("openai.chat"), builtin("openai.chat", "response"), builtin("openai.chat", "chunk"), True
    )
    write(tmp_path, "resp.json", {"type": "object"})
    custom = load_contract(response="resp.json", base_dir=tmp_path)
    assert (custom.request, custom.chunk, custom.apply_defaults) == (None, None, False)
    assert custom.response is not None and custom.response.name == "resp.json"
    assert load_contract(base_dir=HERE) == Contract()
    with pytest.raises(ContractError, match="^request: unknown builtin contract 'openai.chatt'"):
        load_contract("openai.chatt", base_dir=HERE)
    with pytest.raises(ContractError, match="^response: cannot read contract file"):
        load_contract("openai.chat", "nope.json", base_dir=tmp_path)


def test_defaults_plan_follows_pointers_and_skips_what_it_cannot_resolve() -> None:
    root = {
        "properties": {
            "listed": {"$ref": "#/$defs/choices/1"},
            "anchored": {"$ref": "#here"},
            "dangling": {"$ref": "#/$defs/choices/7"},
            "elsewhere": {"$ref": "other.json#/$defs/x"},
            "unloadable": {"$ref": "broken.json"},
        },
        "$defs": {"choices": [{"default": "first"}, {"default": "second"}], "here": {"$anchor": "here", "default": 1}},
    }

    def load(uri: str) -> object:
        if uri.endswith("broken.json"):
            raise OSError("gone")
        return {"$defs": {"x": {"default": "other"}}}

    plan = plan_defaults(root, base_uri="file:///schemas/root.json", load=load)
    assert plan is not None
    doc: dict[str, Any] = {}
    assert plan.apply(doc) == ["/listed", "/elsewhere"]
    assert doc == {"listed": "second", "elsewhere": "other"}
    without_loader = plan_defaults(root, base_uri="file:///schemas/root.json")
    assert without_loader is not None and without_loader.apply({}) == ["/listed"]


def test_defaults_plan_depth_is_bounded() -> None:
    def nested(depth: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"default": 0}
        for _ in range(depth):
            schema = {"properties": {"a": schema}}
        return schema

    assert plan_defaults(nested(40), base_uri="builtin:deep") is None  # deeper than any real body: not planned
    shallow = plan_defaults(nested(3), base_uri="builtin:shallow")
    assert shallow is not None
    doc: dict[str, Any] = {"a": {"a": {}}}
    assert shallow.apply(doc) == ["/a/a/a"]


def test_kserve_shape_written_as_floats_still_counts() -> None:
    doc = {"inputs": [{"name": "x", "shape": [2.0, 2], "datatype": "FP64", "data": [1, 2, 3]}]}
    assert builtin("kserve.v2").violations(doc) == [
        Violation("/inputs/0/data", "data has 3 elements, shape [2, 2] needs 4", "shape")
    ]


def test_closed_objects_inside_arrays(tmp_path: Path) -> None:
    write(tmp_path, "rows.json", {"type": "array", "items": {"additionalProperties": False}})
    schema = load_schema("rows.json", direction="request", base_dir=tmp_path)
    assert pointers(schema.violations([{}, {"a": 1, "b": 2}])) == ["/1/a", "/1/b"]
