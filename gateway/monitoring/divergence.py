"""How far apart two distributions are: the population stability index and Jensen-Shannon divergence.

Both take two histograms as mappings from bin to count (or share) over the same binning; bins absent
from one side count as empty there, and each side is normalised to sum to 1 first.

PSI = sum over bins of (a - e) * ln(a / e), e the expected (baseline, or stable) share and a the
actual (live, or canary) share. A bin empty on one side would make it infinite, so both shares are
floored at `EPSILON` = 1e-4 before the sum (the floor is not renormalised: it moves the total by at
most bins x 1e-4). A bin empty on both sides adds nothing. Each term is >= 0, so PSI >= 0, and 0 for
identical distributions. Usual reading: < 0.1 stable, 0.1-0.25 a shift to look at, > 0.25 a major
one (the `drift.warn`/`drift.alert` defaults). With the floor, a value appearing in 5% of traffic in a
bin the baseline never saw adds 0.05 * ln(500) = 0.31 on its own: an alert, as it should be.

JS = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, in base 2: symmetric, 0 for identical
distributions and 1 for disjoint ones, and needs no floor (0 * log 0 = 0). This is the divergence;
scipy's `jensenshannon` returns its square root, the JS *distance*.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Literal, TypeVar

__all__ = ["EPSILON", "Metric", "divergence", "js_divergence", "proportions", "psi"]

Metric = Literal["psi", "js"]
K = TypeVar("K", bound=Hashable)

EPSILON = 1e-4


def proportions(counts: Mapping[K, float]) -> dict[K, float]:
    """Counts as shares summing to 1; raises ValueError when there is nothing to normalise."""
    total = math.fsum(counts.values())
    if any(n < 0 for n in counts.values()) or not total > 0:
        raise ValueError("a distribution needs non-negative counts with a positive total")
    return {k: n / total for k, n in counts.items()}


def psi(expected: Mapping[K, float], actual: Mapping[K, float], *, epsilon: float = EPSILON) -> float:
    """Population stability index of `actual` against `expected` (see the module docstring)."""
    e, a = proportions(expected), proportions(actual)
    total = 0.0
    for key in e.keys() | a.keys():
        ek = max(e.get(key, 0.0), epsilon)
        ak = max(a.get(key, 0.0), epsilon)
        if ak != ek:
            total += (ak - ek) * math.log(ak / ek)
    return total


def js_divergence(p: Mapping[K, float], q: Mapping[K, float]) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1] (see the module docstring)."""
    pp, qq = proportions(p), proportions(q)
    total = 0.0
    for key in pp.keys() | qq.keys():
        pk = pp.get(key, 0.0)
        qk = qq.get(key, 0.0)
        m = (pk + qk) / 2.0
        if pk > 0.0:
            total += pk * math.log2(pk / m)
        if qk > 0.0:
            total += qk * math.log2(qk / m)
    return min(1.0, max(0.0, total / 2.0))  # float rounding can step a hair outside


def divergence(metric: Metric, expected: Mapping[K, float], actual: Mapping[K, float]) -> float:
    """`psi(expected, actual)` or `js_divergence(expected, actual)`."""
    if metric == "psi":
        return psi(expected, actual)
    return js_divergence(expected, actual)
