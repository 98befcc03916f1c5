"""Test doubles shared by the unit tests."""

from __future__ import annotations


class FakeClock:
    """A clock the test moves by hand: `clock()` reads it, `clock.advance(s)` or `clock.now = t` moves it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
