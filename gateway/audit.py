"""The audit log: every admin change as one JSON line (time, actor, action, before, after)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("gateway.audit")


class AuditLog:
    def __init__(self, path: str | Path | None) -> None:
        self._path = Path(path) if path else None

    def append(self, actor: str, action: str, before: Any, after: Any, **extra: Any) -> None:
        entry = {"time": time.time(), "actor": actor, "action": action, "before": before, "after": after, **extra}
        log.info("audit %s by %s", action, actor)
        if self._path is None:
            return
        try:
            with self._path.open("ab") as handle:
                handle.write(orjson.dumps(entry, default=str) + b"\n")
        except OSError as exc:
            log.error("cannot append to the audit log %s: %s", self._path, exc)
