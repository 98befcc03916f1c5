"""Interface contracts: what goes into a model server and what comes out of it.

A route's `contract: {request, response, apply_defaults}` names a builtin (`openai.chat`,
`openai.completions`, `openai.embeddings`, `kserve.v2`) or a JSON Schema 2020-12 file per direction.
Schemas are compiled once, at config load (`load_contract`, `load_schema`); on the request path a
`Schema` answers `violations(doc)`: every failing field as a `Violation(pointer, message)`, [] when valid.
"""

from gateway.contracts.loader import BUILTINS, Contract, ContractError, load_contract, load_schema
from gateway.contracts.schema import Direction, Schema
from gateway.contracts.violation import Violation

__all__ = [
    "BUILTINS",
    "Contract",
    "ContractError",
    "Direction",
    "Schema",
    "Violation",
    "load_contract",
    "load_schema",
]
