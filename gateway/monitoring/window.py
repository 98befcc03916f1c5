"""A ring of time slots: the windowing behind every recorder in the monitoring modules.

Slot numbers are `int(clock() // slot_s)`; the ring holds the last `size` of them. Recording touches
the current slot (O(1)), a slot the ring wraps onto is replaced by a fresh value first, and a window
query returns the slots whose number is in (now - n, now] for n = ceil(window_s / slot_s): the
current, partly filled slot and the n - 1 before it, so between window_s - slot_s and window_s
seconds of data (the same rule as `gateway.latency`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Generic, TypeVar

from gateway.types import Clock

__all__ = ["SlotRing", "slots_for"]

T = TypeVar("T")


def slots_for(window_s: float, slot_s: float) -> int:
    """How many slots of `slot_s` a window of `window_s` spans (at least 1)."""
    return max(1, math.ceil(window_s / slot_s - 1e-9))


class SlotRing(Generic[T]):
    """The last `size` time slots of one series; `new()` makes an empty slot value."""

    __slots__ = ("_clock", "_epochs", "_new", "_values", "size", "slot_s")

    def __init__(self, *, slot_s: float, size: int, clock: Clock, new: Callable[[], T]) -> None:
        if slot_s <= 0 or size < 1:
            raise ValueError("slot_s must be positive and size at least 1")
        self.slot_s = slot_s
        self.size = size
        self._clock = clock
        self._new = new
        self._epochs = [-1] * size
        self._values: list[T | None] = [None] * size

    def current(self) -> T:
        """The slot for now, fresh if the ring just wrapped onto it."""
        epoch = int(self._clock() // self.slot_s)
        i = epoch % self.size
        value = self._values[i]
        if value is None or self._epochs[i] != epoch:
            value = self._values[i] = self._new()
            self._epochs[i] = epoch
        return value

    def window(self, window_s: float | None = None) -> list[T]:
        """The live slots of the last `window_s` seconds (the whole ring when None), oldest first."""
        n = self.size if window_s is None else min(self.size, slots_for(window_s, self.slot_s))
        now = int(self._clock() // self.slot_s)
        live = [
            (epoch, value) for epoch, value in zip(self._epochs, self._values, strict=True) if now - n < epoch <= now
        ]
        return [value for _, value in sorted(live, key=lambda item: item[0]) if value is not None]

    def idle(self) -> bool:
        """Nothing recorded within the ring's span."""
        now = int(self._clock() // self.slot_s)
        return all(epoch <= now - self.size for epoch in self._epochs)

    def __repr__(self) -> str:
        return f"<SlotRing {self.size} x {self.slot_s:g}s>"
