"""Shared state for budgets, rate limits and run-time decisions: in memory, or in Redis for replicas.

`StateStore` is the small contract both stores keep: counters that expire (`incr` sets the expiry
when it creates the key, so a window's counter disappears with its window), strings with
compare-and-set (for state that must change atomically), GCRA, the rate limiter's one step, as a
single operation (on Redis one round trip instead of a read and a compare-and-set, and in memory no
string round trip at all), and `admit`, all of a request's limits checked at once: a budget ceiling
and GCRA steps, charged only when every one of them fits (it runs on every request of a limited
tenant: one round trip, not one per limit).
Numbers and strings share one key space, as in Redis: keep a key to one kind.

`RedisStore` runs each compound operation as one Lua script, so it is atomic on the server.
`FallbackStore` puts a local `MemoryStore` behind it: a replica that loses Redis keeps serving on
local state (limits then count per replica), says so (`degraded`, `last_error`), and tries Redis
again every `retry_s`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.types import Clock

__all__ = ["FallbackStore", "MemoryStore", "RateStep", "RedisStore", "Refusal", "StateStore"]

log = logging.getLogger("gateway")
T = TypeVar("T")


# One GCRA step of an admission: (key, increment_s, charge): `increment_s` of the allowance at `key`,
# taken only if `charge`. A plain tuple, not a NamedTuple: one is built on every admission.
RateStep = tuple[str, float, bool]


class Refusal(NamedTuple):
    """Which admission check failed: `check` -1 for the ceiling, else the index of the `RateStep`;
    `wait_s` until that step would fit (0.0 for the ceiling)."""

    check: int
    wait_s: float


@runtime_checkable
class StateStore(Protocol):
    async def incr(self, key: str, amount: float, ttl_s: float) -> float:
        """Add `amount` (creating the key at 0 with expiry `ttl_s`); the new value."""
        ...

    async def get(self, key: str) -> float | None: ...

    async def compare_and_set(self, key: str, expected: str | None, new: str, ttl_s: float | None) -> bool:
        """Set `new` only if the key holds `expected` (None: only if absent). `ttl_s` None: no expiry."""
        ...

    async def get_str(self, key: str) -> str | None: ...

    async def set_str(self, key: str, value: str, ttl_s: float | None) -> None: ...

    async def gcra(
        self, key: str, now: float, increment_s: float, burst_s: float, *, charge: bool, force: bool = False
    ) -> float:
        """One step of the generic cell rate algorithm on the theoretical arrival time (TAT) at `key`.

        Seconds until `increment_s` more fits within a `burst_s` allowance at time `now`; 0.0 when it
        fits, and then it was charged (the TAT moved) if `charge`. `force` charges even when it does
        not fit (usage that already happened). The key expires when the allowance is full again.
        """
        ...

    async def admit(
        self, now: float, ceiling: tuple[str, float] | None, steps: tuple[RateStep, ...], burst_s: float
    ) -> Refusal | None:
        """A request's limits as one atomic operation: refused when the number at `ceiling`'s key has
        reached its limit, or when a GCRA step (as `gcra`, allowance `burst_s`; each on its own key) does
        not fit; the first failing check is returned. None: every check passed, and the steps marked
        `charge` were charged.
        """
        ...

    async def aclose(self) -> None: ...


GCRA_EPS = 1e-6  # float slack at exact edges: N intervals of 60/N seconds may sum to 60.000000000000014


def _format_number(value: float) -> str:
    # As Redis shows an INCRBYFLOAT result: integers without a fraction.
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


class MemoryStore:
    """The single-process store: a dict with expiries on an injected monotonic clock, bounded in size.

    At `max_keys`, expired keys are swept; if it is still full, the oldest tenth of the keys goes
    (insertion order), which at worst forgets some old window's counters: limits err on the lenient side.
    """

    def __init__(self, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._clock = clock
        self.max_keys = max_keys
        self._data: dict[str, tuple[float | str, float | None]] = {}  # key -> (value, expires_at)

    def _live(self, key: str) -> float | str | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= self._clock():
            del self._data[key]
            return None
        return value

    def _put(self, key: str, value: float | str, ttl_s: float | None) -> None:
        if key not in self._data and len(self._data) >= self.max_keys:
            self._make_room()
        self._data[key] = (value, None if ttl_s is None else self._clock() + ttl_s)

    def _make_room(self) -> None:
        now = self._clock()
        for key in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[key]
        excess = len(self._data) - self.max_keys + 1
        if excess > 0:
            excess = max(excess, self.max_keys // 10)
            for key in list(self._data)[:excess]:
                del self._data[key]

    async def incr(self, key: str, amount: float, ttl_s: float) -> float:
        current = self._live(key)
        if current is None:
            self._put(key, float(amount), ttl_s)
            return float(amount)
        value = (current if isinstance(current, float) else float(current)) + amount
        self._data[key] = (value, self._data[key][1])
        return value

    async def get(self, key: str) -> float | None:
        value = self._live(key)
        return None if value is None else float(value)

    async def compare_and_set(self, key: str, expected: str | None, new: str, ttl_s: float | None) -> bool:
        current = await self.get_str(key)
        if current != expected:
            return False
        self._put(key, new, ttl_s)
        return True

    async def get_str(self, key: str) -> str | None:
        value = self._live(key)
        if value is None or isinstance(value, str):
            return value
        return _format_number(value)

    async def set_str(self, key: str, value: str, ttl_s: float | None) -> None:
        self._put(key, value, ttl_s)

    def _tat(self, key: str, now: float) -> float:
        """The theoretical arrival time at `key`, never before `now` (a missing or garbled one is `now`)."""
        stored = self._live(key)
        if stored is None:
            return now
        try:
            return max(now, float(stored))
        except ValueError:
            return now

    async def gcra(
        self, key: str, now: float, increment_s: float, burst_s: float, *, charge: bool, force: bool = False
    ) -> float:
        new_tat = self._tat(key, now) + increment_s
        allow_at = new_tat - burst_s
        if not force and allow_at > now + GCRA_EPS:
            return allow_at - now
        if charge:
            self._put(key, new_tat, new_tat - now + 1.0)
        return 0.0

    async def admit(
        self, now: float, ceiling: tuple[str, float] | None, steps: tuple[RateStep, ...], burst_s: float
    ) -> Refusal | None:
        return self.admit_now(now, ceiling, steps, burst_s)

    def admit_now(
        self, now: float, ceiling: tuple[str, float] | None, steps: tuple[RateStep, ...], burst_s: float
    ) -> Refusal | None:
        """`admit` without a coroutine: nothing here waits. `_live`, `_tat` and `_put` are inlined, as
        this runs on every request of a limited tenant."""
        data = self._data
        clock_now = self._clock()
        if ceiling is not None:
            entry = data.get(ceiling[0])
            if entry is not None and (entry[1] is None or entry[1] > clock_now) and float(entry[0]) >= ceiling[1]:
                return Refusal(-1, 0.0)
        # A step fits when tat + increment - burst <= now + eps, i.e. tat + increment <= limit.
        limit = now + burst_s + GCRA_EPS
        charges = []
        check = 0
        for key, increment_s, charge in steps:
            new_tat = now + increment_s
            entry = data.get(key)
            if entry is not None and (entry[1] is None or entry[1] > clock_now):
                stored = entry[0]
                try:
                    if stored > now:  # type: ignore[operator]  # a str raises TypeError
                        new_tat = stored + increment_s  # type: ignore[operator]
                except TypeError:  # a string someone stored at a rate's key: read as `gcra` reads it
                    new_tat = self._tat(key, now) + increment_s
            if new_tat > limit:
                return Refusal(check, new_tat - burst_s - now)
            if charge:
                charges.append((key, new_tat))
            check += 1
        for key, new_tat in charges:
            if len(data) >= self.max_keys and key not in data:
                self._make_room()
            data[key] = (new_tat, clock_now + new_tat - now + 1.0)
        return None

    def peek(self, key: str) -> float | None:
        """The number at `key` (None: absent, expired or not a number), without a coroutine."""
        value = self._live(key)
        try:
            return None if value is None else float(value)
        except ValueError:
            return None

    def reserve(self, key: str, now: float, increment_s: float, burst_s: float, most: int) -> int:
        """Charge up to `most` increments of the GCRA at `key` at once, never more than half of what is
        free: how many it charged (request slots leased ahead of the requests that will use them)."""
        tat = self._tat(key, now)
        count = min(most, int((now + burst_s - tat) / 2 / increment_s))
        if count > 0:
            new_tat = tat + count * increment_s
            self._put(key, new_tat, new_tat - now + 1.0)
        return max(count, 0)

    async def aclose(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<MemoryStore keys={len(self._data)} max_keys={self.max_keys}>"


# KEYS[1] key; ARGV[1] amount, ARGV[2] expiry in ms. The expiry is set only by the call that creates the key.
_INCR = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if created then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""

# KEYS[1] key; ARGV[1] '1' when the key must be absent, ARGV[2] expected, ARGV[3] new, ARGV[4] expiry ms or ''.
_CAS = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
"""


# KEYS[1] the TAT; ARGV now, increment, burst, eps, charge ('1'/'0'), force ('1'/'0'). MemoryStore.gcra,
# line for line. Numbers go back as strings: Lua numbers returned to Redis become integers.
_GCRA = """
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[2])
local allow_at = new_tat - tonumber(ARGV[3])
if ARGV[6] == '0' and allow_at > now + tonumber(ARGV[4]) then return tostring(allow_at - now) end
if ARGV[5] == '1' then
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now + 1) * 1000))
end
return '0'
"""

# KEYS[1] the ceiling's key when ARGV[3] (its limit) is not '', then one TAT per step; ARGV now, eps,
# limit or '', burst, then per step its increment and charge ('1'/'0'). MemoryStore.admit, line for line.
# Returns {check, wait}: check -2 when admitted, -1 the ceiling, else the step's 0-based index.
_ADMIT = """
local now = tonumber(ARGV[1])
local eps = tonumber(ARGV[2])
local burst = tonumber(ARGV[4])
local first = 1
if ARGV[3] ~= '' then
  local reached = tonumber(redis.call('GET', KEYS[1]) or '')
  if reached and reached >= tonumber(ARGV[3]) then return {-1, '0'} end
  first = 2
end
local new_tats = {}
for i = first, #KEYS do
  local step = i - first
  local tat = tonumber(redis.call('GET', KEYS[i]) or '') or now
  if tat < now then tat = now end
  local new_tat = tat + tonumber(ARGV[5 + 2 * step])
  local allow_at = new_tat - burst
  if allow_at > now + eps then return {step, tostring(allow_at - now)} end
  new_tats[i] = new_tat
end
for i = first, #KEYS do
  if ARGV[6 + 2 * (i - first)] == '1' then
    local new_tat = new_tats[i]
    redis.call('SET', KEYS[i], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now + 1) * 1000))
  end
end
return {-2, '0'}
"""


def _ms(ttl_s: float) -> int:
    return max(1, math.ceil(ttl_s * 1000))


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisStore:
    """The shared store for replicas: redis.asyncio, every key under `prefix`."""

    def __init__(self, client: Redis, *, prefix: str = "gateway:", owns_client: bool = False) -> None:
        self._redis = client
        self.prefix = prefix
        self._owns_client = owns_client
        self._incr = client.register_script(_INCR)
        self._cas = client.register_script(_CAS)
        self._gcra = client.register_script(_GCRA)
        self._admit = client.register_script(_ADMIT)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "gateway:", timeout_s: float = 1.0) -> RedisStore:
        """A store with its own connection pool (closed by `aclose`); Redis calls time out after `timeout_s`."""
        client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, prefix=prefix, owns_client=True)

    async def incr(self, key: str, amount: float, ttl_s: float) -> float:
        raw = await self._incr(keys=[self.prefix + key], args=[repr(float(amount)), _ms(ttl_s)])
        return float(raw)

    async def get(self, key: str) -> float | None:
        raw = await self._redis.get(self.prefix + key)
        return None if raw is None else float(raw)

    async def compare_and_set(self, key: str, expected: str | None, new: str, ttl_s: float | None) -> bool:
        args = ["1" if expected is None else "0", expected or "", new, "" if ttl_s is None else _ms(ttl_s)]
        return bool(await self._cas(keys=[self.prefix + key], args=args))

    async def get_str(self, key: str) -> str | None:
        return _text(await self._redis.get(self.prefix + key))

    async def set_str(self, key: str, value: str, ttl_s: float | None) -> None:
        await self._redis.set(self.prefix + key, value, px=None if ttl_s is None else _ms(ttl_s))

    async def gcra(
        self, key: str, now: float, increment_s: float, burst_s: float, *, charge: bool, force: bool = False
    ) -> float:
        args = [
            repr(now),
            repr(increment_s),
            repr(burst_s),
            repr(GCRA_EPS),
            "1" if charge else "0",
            "1" if force else "0",
        ]
        return float(_text(await self._gcra(keys=[self.prefix + key], args=args)) or 0.0)

    async def admit(
        self, now: float, ceiling: tuple[str, float] | None, steps: tuple[RateStep, ...], burst_s: float
    ) -> Refusal | None:
        prefix = self.prefix
        keys = [prefix + ceiling[0]] if ceiling is not None else []
        args: list[str | float] = [
            repr(now),
            repr(GCRA_EPS),
            repr(ceiling[1]) if ceiling is not None else "",
            repr(burst_s),
        ]
        for key, increment_s, charge in steps:
            keys.append(prefix + key)
            args += [repr(increment_s), "1" if charge else "0"]
        check, wait = await self._admit(keys=keys, args=args)
        return None if check == -2 else Refusal(int(check), float(_text(wait) or 0.0))

    async def ping(self) -> bool:
        """Whether Redis answers (for /readyz)."""
        return bool(await self._redis.ping())

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r}>"


class FallbackStore:
    """`primary` (Redis) while it answers, `local` while it does not; back to `primary` after `retry_s`.

    `on_change(degraded, error)` is called on each switch (for events, metrics and /readyz detail).
    """

    def __init__(
        self,
        primary: StateStore,
        local: StateStore | None = None,
        *,
        clock: Clock = time.monotonic,
        retry_s: float = 5.0,
        on_change: Callable[[bool, str | None], None] | None = None,
    ) -> None:
        self.primary = primary
        self.local: StateStore = local if local is not None else MemoryStore(clock=clock)
        self._clock = clock
        self.retry_s = retry_s
        self._on_change = on_change
        self._retry_at: float | None = None  # None: healthy
        self.last_error: str | None = None

    @property
    def degraded(self) -> bool:
        return self._retry_at is not None

    async def _run(self, op: Callable[[StateStore], Awaitable[T]]) -> T:
        if self._retry_at is None or self._clock() >= self._retry_at:
            try:
                result = await op(self.primary)
            except (RedisError, OSError, TimeoutError) as exc:
                first = self._retry_at is None
                self._retry_at = self._clock() + self.retry_s
                self.last_error = f"{type(exc).__name__}: {exc}"
                if first:
                    log.warning("state store unavailable, using local state: %s", self.last_error)
                    if self._on_change is not None:
                        self._on_change(True, self.last_error)
            else:
                if self._retry_at is not None:
                    self._retry_at = None
                    self.last_error = None
                    log.info("state store available again")
                    if self._on_change is not None:
                        self._on_change(False, None)
                return result
        return await op(self.local)

    async def incr(self, key: str, amount: float, ttl_s: float) -> float:
        return await self._run(lambda s: s.incr(key, amount, ttl_s))

    async def get(self, key: str) -> float | None:
        return await self._run(lambda s: s.get(key))

    async def compare_and_set(self, key: str, expected: str | None, new: str, ttl_s: float | None) -> bool:
        return await self._run(lambda s: s.compare_and_set(key, expected, new, ttl_s))

    async def get_str(self, key: str) -> str | None:
        return await self._run(lambda s: s.get_str(key))

    async def set_str(self, key: str, value: str, ttl_s: float | None) -> None:
        await self._run(lambda s: s.set_str(key, value, ttl_s))

    async def gcra(
        self, key: str, now: float, increment_s: float, burst_s: float, *, charge: bool, force: bool = False
    ) -> float:
        return await self._run(lambda s: s.gcra(key, now, increment_s, burst_s, charge=charge, force=force))

    async def admit(
        self, now: float, ceiling: tuple[str, float] | None, steps: tuple[RateStep, ...], burst_s: float
    ) -> Refusal | None:
        return await self._run(lambda s: s.admit(now, ceiling, steps, burst_s))

    async def aclose(self) -> None:
        await self.primary.aclose()
        await self.local.aclose()

    def __repr__(self) -> str:
        state = f"degraded error={self.last_error!r}" if self.degraded else "healthy"
        return f"<FallbackStore {state} primary={self.primary!r}>"
