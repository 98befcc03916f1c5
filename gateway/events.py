"""Recent decisions (reloads, rollbacks, promotions, circuit changes): what `GET /admin/events` shows."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("gateway.events")


@dataclass(frozen=True, slots=True)
class Event:
    time: float  # unix seconds
    kind: str  # reload, reload_failed, weights, promote, rollback, circuit, ...
    reason: str
    route: str | None = None
    backend: str | None = None
    actor: str = "gateway"
    details: dict[str, Any] | None = None


class EventLog:
    """A bounded in-memory ring of events; every event is also logged (decisions are always logged)."""

    def __init__(self, capacity: int = 500) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)

    def record(self, kind: str, reason: str, **fields: Any) -> Event:
        event = Event(time=time.time(), kind=kind, reason=reason, **fields)
        self._events.append(event)
        log.info("event %s: %s", kind, reason, extra={"event": asdict(event)})
        return event

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        return [asdict(e) for e in list(self._events)[-limit:]][::-1]

    def __len__(self) -> int:
        return len(self._events)
