"""What one demo model server is: its name, address, model and steady background behaviour."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DemoSettings"]


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Settings of one demo model server (the CLI flags, one field each).

    `latency_ms`, `jitter_ms` and `error_rate` are the steady background behaviour used by the demo:
    every model request waits `latency_ms ± jitter_ms` (uniform, never below 0) and fails with a 500
    at probability `error_rate`, drawn from a `random.Random(seed)`. Health probes are never delayed.
    """

    name: str = "demo"
    host: str = "127.0.0.1"
    port: int = 9001
    model: str = "demo-model"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    seed: int | None = 0
    stream_interval_ms: float = 0.0
    context_window: int = 0  # in tokens (words); 0 = unlimited

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0 or self.stream_interval_ms < 0:
            raise ValueError("latency_ms, jitter_ms and stream_interval_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.context_window < 0:
            raise ValueError("context_window must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
