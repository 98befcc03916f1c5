"""Stage: the route's request contract going in; the response contract is checked per attempt.

Schemas are compiled once per config load (`compile_contracts`); a request that breaks its
contract is answered 422 with every failing field and never forwarded. With `apply_defaults`,
JSON Schema defaults fill missing optional fields and the re-serialised body is what is forwarded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from gateway.config import GatewayConfig
from gateway.context import Reply, RequestContext
from gateway.contracts import ContractError, Schema, Violation, load_schema
from gateway.errors import ContractViolation, FieldError
from gateway.metrics import Metrics, normalize_pointer
from gateway.types import Next

Direction = Literal["request", "response"]


@dataclass(frozen=True, slots=True)
class RouteContract:
    request: Schema | None
    response: Schema | None
    chunk: Schema | None  # the response contract's stream-chunk form, if it streams
    apply_defaults: bool


def compile_contracts(config: GatewayConfig, base_dir: Path) -> tuple[dict[str, RouteContract], list[tuple[str, str]]]:
    """Every route's compiled contract, and each bad schema as (key path, message)."""
    contracts: dict[str, RouteContract] = {}
    problems: list[tuple[str, str]] = []
    for i, route in enumerate(config.routes):
        spec = route.contract
        if spec is None:
            continue
        compiled: dict[str, Schema | None] = {"request": None, "response": None, "chunk": None}
        for direction, ref in (("request", spec.request), ("response", spec.response)):
            if ref is None:
                continue
            try:
                compiled[direction] = load_schema(ref, direction=direction, base_dir=base_dir)  # type: ignore[call-overload]
                if direction == "response":
                    compiled["chunk"] = load_schema(ref, direction="chunk", base_dir=base_dir)
            except ContractError as exc:
                problems.append((f"routes[{i}].contract.{direction}", str(exc)))
        contracts[route.name] = RouteContract(
            compiled["request"], compiled["response"], compiled["chunk"], spec.apply_defaults
        )
    return contracts, problems


class ContractStats:
    """Violations by route, direction and field, and imputed defaults by route and field."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.violations: Counter[tuple[str, str, str]] = Counter()
        self.imputed: Counter[tuple[str, str]] = Counter()
        self.dropped_events: Counter[str] = Counter()

    def violated(self, route: str, direction: Direction, violations: list[FieldError]) -> None:
        for violation in violations:
            field = normalize_pointer(violation.pointer)
            self.violations[(route, direction, field)] += 1
            self._metrics.contract_violation(route, direction, violation.pointer)

    def filled(self, route: str, pointers: list[str]) -> None:
        for pointer in pointers:
            self.imputed[(route, normalize_pointer(pointer))] += 1

    def snapshot(self, route: str) -> dict[str, object]:
        return {
            "violations": {
                f"{direction}:{field}": n for (r, direction, field), n in self.violations.items() if r == route
            },
            "imputed": {field: n for (r, field), n in self.imputed.items() if r == route},
            "dropped_stream_events": self.dropped_events.get(route, 0),
        }


def field_errors(violations: list[Violation]) -> list[FieldError]:
    return [FieldError(v.pointer, v.message) for v in violations]


class ContractCheck:
    """Stage: check the request against the route's request contract (and fill defaults)."""

    def __init__(self, contracts: dict[str, RouteContract], stats: ContractStats) -> None:
        self._contracts = contracts
        self._stats = stats

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        contract = self._contracts.get(ctx.route.name)
        if contract is not None:
            ctx.contract = contract
            if contract.request is not None:
                self._check_request(ctx, contract.request, contract.apply_defaults)
        return await call_next(ctx)

    def _check_request(self, ctx: RequestContext, schema: Schema, apply_defaults: bool) -> None:
        if ctx.document is None:
            errors = [FieldError("", "the body must be a JSON document (Content-Type: application/json)")]
        else:
            errors = field_errors(schema.violations(ctx.document))
        if errors:
            self._stats.violated(ctx.route.name, "request", errors)
            ctx.trace.contract_violation("request", errors)
            raise ContractViolation(f"the request breaks the {schema.name} contract", errors=errors)
        if apply_defaults and schema.has_defaults and isinstance(ctx.document, dict):
            filled = schema.apply_defaults(ctx.document)
            if filled:
                self._stats.filled(ctx.route.name, filled)
                ctx.body = orjson.dumps(ctx.document)
