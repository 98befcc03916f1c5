"""`GET /admin/stats`: one read-only view over the recorders (traffic, latency, cost, contracts, breakers)."""

from __future__ import annotations

from typing import Any

from gateway.runtime import RuntimeHolder


async def stats_snapshot(holder: RuntimeHolder) -> dict[str, Any]:
    shared = holder.shared
    latency = shared.latency.snapshot()
    cost = shared.ledger.snapshot()
    breakers = shared.resilience.states()
    routes: dict[str, Any] = {}
    for route in holder.current.config.routes:
        weights = holder.current.choosers[route.name].weights
        backends = {}
        for backend in route.backends:
            key = (route.name, backend.name)
            backends[backend.name] = {
                "weight": weights.get(backend.name, 0.0),
                "stable": backend.stable,
                "circuit": breakers[key].value if key in breakers else "closed",
                "traffic": shared.traffic.snapshot(route.name, backend.name),
                "latency_ms": latency.get(route.name, {}).get(backend.name),
                "cost": cost.get(route.name, {}).get(backend.name),
            }
        routes[route.name] = {
            "owner": route.owner,
            "fallbacks": {reason: n for (r, reason), n in shared.traffic.fallbacks.items() if r == route.name},
            "contracts": shared.contract_stats.snapshot(route.name),
            "shadow": shared.shadows[route.name].snapshot() if route.name in shared.shadows else None,
            "monitor": shared.monitor.snapshot(route.name),
            "slo": shared.slo.snapshot(route.name),
            "feedback": shared.feedback.snapshot(route.name),
            "canary_analysis": shared.analyzer.snapshot(route.name),
            "backends": backends,
        }
    tenants = {}
    admission = holder.current.tenants
    for name in admission.names():
        tenant = admission.get(name)
        assert tenant is not None
        tenants[name] = {
            "spent_today_usd": await admission.spent_today(tenant),
            "budget_usd_per_day": tenant.usd_per_day,
            "cost": shared.ledger.totals(tenant=name),
        }
    return {"routes": routes, "tenants": tenants, "totals": shared.ledger.totals()}
