"""The canary analysis verdict: is the canary worse than stable, by the route's `canary_analysis` limits?

`evaluate(cfg, stable, canary)` is pure: the analysis loop gathers each backend's numbers over the
interval into a `BackendWindow` and acts on the `Verdict` (promote a step, hold, roll back).

- `insufficient`: either backend served fewer than `min_requests`; nothing is judged.
- `breach`: at least one check failed; `breaches` lists (check, observed, limit) for each.
- `healthy`: every check that had the data to run passed.

Checks (each runs only when both sides have its data):

| check | observed | breach when |
|---|---|---|
| error_rate_delta | canary error rate - stable error rate | > max_error_rate_delta |
| p99_ratio | canary p99 / stable p99 | > max_p99_ratio |
| contract_violation_rate | canary violations / canary requests | > max_contract_violation_rate |
| prediction_divergence | PSI or JS of canary's predictions against stable's | > max_prediction_divergence |
| accuracy_delta | canary accuracy - stable accuracy | < min_accuracy_delta |
| burn_rate_ratio | canary burn / max(stable burn, 1) | > max_burn_rate_ratio |

The burn-rate ratio's denominator is floored at 1, the sustainable pace: a canary within its error
budget never fails against a perfect stable (whose burn of 0 would make any ratio infinite), and
one burning 3x its budget fails a 2x limit whatever stable does below 1x.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.config import CanaryAnalysis
from gateway.monitoring.divergence import Metric, divergence

__all__ = ["CHECKS", "BackendWindow", "Breach", "CheckName", "Verdict", "evaluate"]

CheckName = Literal[
    "error_rate_delta",
    "p99_ratio",
    "contract_violation_rate",
    "prediction_divergence",
    "accuracy_delta",
    "burn_rate_ratio",
]
CHECKS: tuple[CheckName, ...] = (
    "error_rate_delta",
    "p99_ratio",
    "contract_violation_rate",
    "prediction_divergence",
    "accuracy_delta",
    "burn_rate_ratio",
)


@dataclass(frozen=True, slots=True)
class BackendWindow:
    """One backend's numbers over the analysis window."""

    requests: int
    errors: int = 0
    p99_ms: float | None = None
    contract_violations: int = 0
    predictions: Mapping[Hashable, float] | None = None  # histogram counts (one binning for both sides)
    accuracy: float | None = None  # None without enough labels
    burn_rate: float | None = None  # None when the route has no `slo`

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Breach:
    check: CheckName
    observed: float
    limit: float

    def __str__(self) -> str:
        op = "<" if self.check == "accuracy_delta" else ">"
        return f"{self.check} {self.observed:.4g} {op} {self.limit:g}"


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Literal["insufficient", "healthy", "breach"]
    breaches: tuple[Breach, ...] = ()
    observed: Mapping[CheckName, float] | None = None  # every check that ran, breached or not

    @property
    def reason(self) -> str:
        if self.status == "breach":
            return "; ".join(str(b) for b in self.breaches)
        if self.status == "insufficient":
            return "not enough requests on both backends yet"
        ran = ", ".join(f"{name} {value:.4g}" for name, value in (self.observed or {}).items())
        return f"healthy: {ran}"


def evaluate(cfg: CanaryAnalysis, stable: BackendWindow, canary: BackendWindow, *, metric: Metric = "psi") -> Verdict:
    """Judge `canary` against `stable` (see the module docstring); `metric` is the route's `drift.metric`."""
    if stable.requests < cfg.min_requests or canary.requests < cfg.min_requests:
        return Verdict("insufficient")
    observed: dict[CheckName, float] = {}
    breaches: list[Breach] = []

    def check(name: CheckName, value: float, limit: float, *, below: bool = False) -> None:
        observed[name] = value
        if (value < limit) if below else (value > limit):
            breaches.append(Breach(name, value, limit))

    check("error_rate_delta", canary.error_rate - stable.error_rate, cfg.max_error_rate_delta)
    if canary.p99_ms is not None and stable.p99_ms is not None and stable.p99_ms > 0:
        check("p99_ratio", canary.p99_ms / stable.p99_ms, cfg.max_p99_ratio)
    check("contract_violation_rate", canary.contract_violations / canary.requests, cfg.max_contract_violation_rate)
    if _has_mass(stable.predictions) and _has_mass(canary.predictions):
        assert stable.predictions is not None and canary.predictions is not None
        value = divergence(metric, stable.predictions, canary.predictions)
        check("prediction_divergence", value, cfg.max_prediction_divergence)
    if canary.accuracy is not None and stable.accuracy is not None:
        check("accuracy_delta", canary.accuracy - stable.accuracy, cfg.min_accuracy_delta, below=True)
    if canary.burn_rate is not None and stable.burn_rate is not None:
        check("burn_rate_ratio", canary.burn_rate / max(stable.burn_rate, 1.0), cfg.max_burn_rate_ratio)
    return Verdict("breach" if breaches else "healthy", tuple(breaches), observed)


def _has_mass(histogram: Mapping[Hashable, float] | None) -> bool:
    return histogram is not None and sum(histogram.values()) > 0
