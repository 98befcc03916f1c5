"""Loading each route's `monitor` section: pointer checks and its drift baseline file.

Used twice, like the contracts: by the loader to report problems with their key paths (so
`gateway check` and a reload reject a bad baseline), and by the runtime to configure the books.
"""

from __future__ import annotations

from pathlib import Path

from gateway.baseline import Baseline, BaselineError, baseline_problems, load_baseline
from gateway.config import GatewayConfig
from gateway.monitoring.book import monitor_problems


def load_monitors(config: GatewayConfig, base_dir: Path) -> tuple[dict[str, Baseline | None], list[tuple[str, str]]]:
    """Each monitored route's baseline (None without one), and every problem as (key path, message)."""
    baselines: dict[str, Baseline | None] = {}
    problems: list[tuple[str, str]] = []
    for i, route in enumerate(config.routes):
        monitor = route.monitor
        if monitor is None:
            continue
        where = f"routes[{i}].monitor"
        problems += [(f"{where}.{key}" if key else where, message) for key, message in monitor_problems(monitor)]
        baselines[route.name] = None
        drift = monitor.drift
        if drift is None or drift.baseline is None:
            continue
        try:
            baseline = load_baseline(base_dir / drift.baseline)
        except BaselineError as exc:
            problems.append((f"{where}.drift.baseline", str(exc)))
            continue
        mismatch = baseline_problems(baseline, monitor, route.name)
        problems += [(f"{where}.drift.baseline", message) for message in mismatch]
        baselines[route.name] = baseline
    return baselines, problems
