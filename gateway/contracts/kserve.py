"""Open Inference Protocol (KServe v2) tensor checks that JSON Schema cannot express.

For each tensor of a request's `inputs` or a response's `outputs`:
- `data` holds as many elements as the product of `shape`. The protocol lets `data` be flat (row-major)
  or nested like the shape; as Triton and OpenVINO Model Server do, the elements are counted, whatever
  the nesting.
- every element fits `datatype`: BOOL booleans; INT*/UINT* integers within the type's range, written as
  integers (1, not 1.0, as Triton reads them); FP16, FP32, FP64 and BF16 (Triton's extension) numbers;
  BYTES strings.

A check that needs a field the JSON Schema already rejects (`data` not a list, a bad `shape` or
`datatype`) is skipped, so a broken document gets one violation per fault, not two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import cast

import orjson

from gateway.contracts.violation import Violation

# A tensor of a million bad elements must not make a million violations.
MAX_ELEMENT_VIOLATIONS = 5
# Nested data is flattened a level per pass (fast for real tensors, 1 to 5 dimensions); past this depth,
# a single walk keeps the cost linear in the body size.
_FAST_FLATTEN_LEVELS = 8

_INT_RANGES: dict[str, tuple[int, int]] = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
_NUMBER = frozenset({int, float})
_ALLOWED: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
    **{name: frozenset({int}) for name in _INT_RANGES},
    **{name: _NUMBER for name in ("FP16", "FP32", "FP64", "BF16")},
}
_WHAT = {"BOOL": "a boolean", "BYTES": "a string", **{name: "a number" for name in ("FP16", "FP32", "FP64", "BF16")}}


def check_inputs(doc: object) -> list[Violation]:
    """Check an inference request's `inputs`."""
    return _check_tensors(doc, "inputs")


def check_outputs(doc: object) -> list[Violation]:
    """Check an inference response's `outputs`."""
    return _check_tensors(doc, "outputs")


def _check_tensors(doc: object, key: str) -> list[Violation]:
    tensors = doc.get(key) if type(doc) is dict else None
    if type(tensors) is not list:
        return []
    found: list[Violation] = []
    for index, tensor in enumerate(tensors):
        if type(tensor) is dict:
            _check_tensor(tensor, f"/{key}/{index}", found)
    return found


def _check_tensor(tensor: dict[str, object], base: str, found: list[Violation]) -> None:
    data = tensor.get("data")
    if type(data) is not list:
        return
    values = data
    types = set(map(type, values))
    passes = 0
    while list in types:  # nested data: flatten one level per pass, row-major order kept
        passes += 1
        if passes > _FAST_FLATTEN_LEVELS:  # deeper than any real tensor: one O(n) walk, not a pass per level
            values = [value for value, _ in _leaves(data)]
        else:
            values = [leaf for item in values for leaf in (item if type(item) is list else (item,))]
        types = set(map(type, values))
    dims = _dims(tensor.get("shape"))
    if dims is not None and len(values) != math.prod(dims):
        needed = math.prod(dims)
        found.append(
            Violation(f"{base}/data", f"data has {len(values)} elements, shape {dims} needs {needed}", "shape")
        )
    datatype = tensor.get("datatype")
    if type(datatype) is not str or datatype not in _ALLOWED:
        return
    allowed = _ALLOWED[datatype]
    bad: Callable[[object], bool] | None = None
    if not types <= allowed:
        bad = _mistyped(allowed)
    elif datatype in _INT_RANGES and values:
        low, high = _INT_RANGES[datatype]
        integers = cast(list[int], values)
        if min(integers) < low or max(integers) > high:
            bad = _out_of_range(low, high)
    if bad is not None:
        _report(data, values, bad, datatype, f"{base}/data", found)


def _dims(shape: object) -> list[int] | None:
    """The shape's dimensions, or None when the JSON Schema will reject it anyway."""
    if type(shape) is not list:
        return None
    dims: list[int] = []
    for dim in shape:
        if type(dim) is float and dim.is_integer():
            dim = int(dim)
        if type(dim) is not int or dim < 0:
            return None
        dims.append(dim)
    return dims


def _leaves(data: list[object]) -> Iterator[tuple[object, tuple[int, ...]]]:
    """Each element of nested `data` with its index path, in row-major order (iterative: JSON nests deep)."""
    stack: list[tuple[object, tuple[int, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if type(node) is list:
            stack.extend((node[i], (*path, i)) for i in range(len(node) - 1, -1, -1))
        else:
            yield node, path


def _mistyped(allowed: frozenset[type]) -> Callable[[object], bool]:
    return lambda value: type(value) not in allowed


def _out_of_range(low: int, high: int) -> Callable[[object], bool]:
    return lambda value: not low <= cast(int, value) <= high


def _report(
    data: list[object],
    values: list[object],
    bad: Callable[[object], bool],
    datatype: str,
    pointer: str,
    found: list[Violation],
) -> None:
    failing = [index for index, value in enumerate(values) if bad(value)]
    shown = failing[:MAX_ELEMENT_VIOLATIONS]
    if values is data:
        paths: list[tuple[int, ...]] = [(index,) for index in shown]
    else:
        wanted = set(shown)
        paths = [path for index, (_, path) in enumerate(_leaves(data)) if index in wanted]
    for index, path in zip(shown, paths, strict=True):
        found.append(
            Violation(pointer + "".join(f"/{i}" for i in path), _element_message(values[index], datatype), "datatype")
        )
    if len(failing) > MAX_ELEMENT_VIOLATIONS:
        more = len(failing) - MAX_ELEMENT_VIOLATIONS
        found.append(Violation(pointer, f"{more} more elements are not valid {datatype} values", "datatype"))


def _element_message(value: object, datatype: str) -> str:
    shown = _show(value)
    if datatype in _INT_RANGES:
        if type(value) is int:
            low, high = _INT_RANGES[datatype]
            return f"{shown} is out of the {datatype} range {low}..{high}"
        return f"{shown} is not an integer, as {datatype} needs"
    return f"{shown} is not {_WHAT[datatype]}, as {datatype} needs"


def _show(value: object) -> str:
    try:
        shown = orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits
        shown = repr(value)
    return shown if len(shown) <= 64 else shown[:61] + "..."
