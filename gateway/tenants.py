"""Tenants: who is calling (API keys), how fast they may call, and how much they may spend a day.

Keys arrive as ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` and are looked up by their
SHA-256 digest; `Tenants` never keeps a plaintext key.

Rate limits are GCRA (the generic cell rate algorithm, as in ATM networks and redis-cell): with
`requests_per_minute` N, one request costs 60/N seconds of a "theoretical arrival time" (TAT), and a
request passes while TAT stays within 60 s of now. So N requests pass at once, the next one waits
60/N s for a slot to free (its Retry-After), and after a quiet minute the full N are back. Unlike a
fixed window there is no double burst at a window edge, and the state is one number per tenant.
`tokens_per_minute` works the same with a token as the unit: `check` holds the request's estimate
against it, `settle` charges the tokens actually used (the estimate is never charged, so nothing
needs undoing). A request estimated above the whole per-minute allowance passes only when the
tenant's token bucket is full, then drains it.

Budgets are per UTC day: `check` refuses once the day's spend reached `usd_per_day` (Retry-After: until
midnight UTC), `settle` adds the request's cost. Concurrent requests admitted just under the budget
may overshoot it by their own cost; that is the price of not reserving a cost that is unknown yet.

All state lives in a `StateStore` (memory, or Redis shared by replicas), keyed by tenant name, so it
survives a config reload. Times come from a wall clock, which replicas share.

With the in-memory store, a busy tenant's request slots are leased: an admission that passes also
charges up to 64 more slots (at most what the rate refills in 50 ms, never more than half of what is
free), and the next requests take them without a store operation while the token rate and the spend
it read still hold (`_Lease`). A lease that goes unused delays the tenant by 50 ms of its allowance.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from gateway.config import Tenant
from gateway.errors import TooManyRequests, Unauthorized
from gateway.state import GCRA_EPS, MemoryStore, RateStep, Refusal, StateStore
from gateway.types import Clock, Headers

__all__ = ["TenantState", "Tenants"]


def _builtin_sha256() -> Callable[[bytes], hashlib._Hash]:
    """CPython's own SHA-256, which hashlib falls back on: without OpenSSL's per-call set-up (an EVP
    context made, copied and freed) it took authentication from 2.0 to 1.2 us a request in the running
    gateway (perf, Python 3.12). hashlib's when the build has none."""
    for module in ("_sha2", "_sha256"):  # Python 3.12 and later, 3.11
        try:
            return cast("Callable[[bytes], hashlib._Hash]", importlib.import_module(module).sha256)
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256


_sha256 = _builtin_sha256()
_DAY_S = 86_400.0
_MINUTE_S = 60.0
_EPS = GCRA_EPS
_KEY_HEADERS = frozenset((b"authorization", b"x-api-key"))
LEASE_S = 0.05  # how long request slots leased from the in-memory store last; as long as a settlement's wait
LEASE_SLOTS = 64  # the most slots a lease holds
_WWW_AUTHENTICATE = [(b"www-authenticate", b'Bearer realm="inference-gateway"')]


@dataclass(frozen=True, slots=True)
class TenantState:
    """A configured tenant: its name and limits (no keys)."""

    name: str
    usd_per_day: float | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @classmethod
    def from_config(cls, tenant: Tenant) -> TenantState:
        limits = tenant.rate_limit
        return cls(
            name=tenant.name,
            usd_per_day=tenant.budget.usd_per_day if tenant.budget else None,
            requests_per_minute=limits.requests_per_minute if limits else None,
            tokens_per_minute=limits.tokens_per_minute if limits else None,
        )

    def __repr__(self) -> str:
        parts = [f"<TenantState {self.name!r}"]
        if self.requests_per_minute is not None:
            parts.append(f"rpm={self.requests_per_minute}")
        if self.tokens_per_minute is not None:
            parts.append(f"tpm={self.tokens_per_minute}")
        if self.usd_per_day is not None:
            parts.append(f"usd_per_day={self.usd_per_day:g}")
        return " ".join(parts) + ">"


def _digest(key: bytes) -> bytes:
    return _sha256(key).digest()


class _StoreKeys:
    """A tenant's keys in the store, worked out once: its request and token rates', and today's spend.

    `ceiling` is today's (spend key, `usd_per_day`) while `day_starts <= now < day_ends` (`renew` it
    past midnight); None for a tenant without a budget."""

    __slots__ = (
        "_budget",
        "_spent",
        "_spent_prefix",
        "ceiling",
        "day_ends",
        "day_starts",
        "lease",
        "lease_slots",
        "request_steps",
        "token_cap",
        "token_s",
        "tokens",
    )

    def __init__(self, prefix: str, tenant: TenantState) -> None:
        requests = f"{prefix}{tenant.name}:requests"
        self.tokens = f"{prefix}{tenant.name}:tokens"
        # A token's share of the token rate's minute (0.0 without a token rate), and the most tokens a
        # request is checked for (its whole allowance).
        self.token_s = _MINUTE_S / tenant.tokens_per_minute if tenant.tokens_per_minute else 0.0
        self.token_cap = tenant.tokens_per_minute or 0
        per_minute = tenant.requests_per_minute
        # The admission's charge for a request slot: 60/N seconds of the minute.
        self.request_steps: tuple[RateStep, ...] = (
            () if per_minute is None else ((requests, _MINUTE_S / per_minute, True),)
        )
        # A lease holds at most what the request rate refills while it lasts.
        self.lease_slots = 0 if per_minute is None else min(LEASE_SLOTS, int(per_minute * LEASE_S / _MINUTE_S))
        self.lease: _Lease | None = None
        self._spent_prefix = f"{prefix}{tenant.name}:spent:"
        self._budget = tenant.usd_per_day
        self.day_starts = self.day_ends = 0.0
        self._spent = ""
        self.ceiling: tuple[str, float] | None = None

    def spent_on(self, now: float) -> str:
        """The key of the day's spend (UTC)."""
        if not self.day_starts <= now < self.day_ends:
            self.renew(now)
        return self._spent

    def renew(self, now: float) -> tuple[str, float] | None:
        """Move to the day of `now`: formatting a date costs more than the rest of an admission."""
        day = now // _DAY_S
        self.day_starts, self.day_ends = day * _DAY_S, (day + 1) * _DAY_S
        self._spent = self._spent_prefix + datetime.fromtimestamp(self.day_starts, UTC).strftime("%Y-%m-%d")
        self.ceiling = None if self._budget is None else (self._spent, self._budget)
        return self.ceiling


class _Lease:
    """Request slots the in-memory store charged ahead of the requests that use them, with the token
    rate's TAT and today's spend as the store had them then. Admission never changes those two and
    `settle` ends the lease, so they hold while it lasts. It lasts LEASE_S at most, and holds at most
    what the request rate refills in that time: slots left unused delay the tenant by LEASE_S at worst.
    Near a limit there is none (a lease takes at most half of what is free), so refusals, and their
    Retry-After, come from the store as without leases."""

    __slots__ = ("budget", "left", "spent", "tokens_tat", "until")

    def __init__(self, left: int, until: float, tokens_tat: float, spent: float, budget: float) -> None:
        self.left = left
        self.until = until
        self.tokens_tat = tokens_tat
        self.spent = spent
        self.budget = budget


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    # RFC 9110 10.2.3: whole seconds; rounded up, so a client that waits exactly that long gets in.
    return [(b"retry-after", str(max(1, math.ceil(seconds - _EPS))).encode())]


class Tenants:
    """Authentication, rate limits and daily budgets for the configured tenants."""

    def __init__(
        self,
        tenants: Iterable[tuple[TenantState, Iterable[str]]] | None,
        *,
        store: StateStore | None = None,
        clock: Clock = time.time,
        prefix: str = "tenant:",
    ) -> None:
        self._clock = clock
        self._store: StateStore = store if store is not None else MemoryStore(clock=clock)
        # The in-memory store decides an admission without a coroutine (it runs on every request).
        self._local = self._store if isinstance(self._store, MemoryStore) else None
        self.decides_at_once = self._local is not None  # `check` never returns an awaitable
        self._prefix = prefix
        self.enabled = tenants is not None
        self._by_name: dict[str, TenantState] = {}
        # Looked up by digest, never compared with plaintext: timing can only tell an attacker how a
        # guess's SHA-256 relates to a stored digest, which says nothing about the key (no constant-time
        # comparison needed).
        self._by_digest: dict[bytes, TenantState] = {}
        self._keys: dict[str, _StoreKeys] = {}
        for state, api_keys in tenants or ():
            self._by_name[state.name] = state
            self._keys[state.name] = _StoreKeys(prefix, state)
            for key in api_keys:
                self._by_digest[_digest(key.encode())] = state

    @classmethod
    def from_config(
        cls,
        tenants: list[Tenant] | None,
        *,
        store: StateStore | None = None,
        clock: Clock = time.time,
        prefix: str = "tenant:",
    ) -> Tenants:
        """From the config's `tenants` list; None (the key absent) turns authentication off."""
        states = None if tenants is None else [(TenantState.from_config(t), t.api_keys) for t in tenants]
        return cls(states, store=store, clock=clock, prefix=prefix)

    @property
    def store(self) -> StateStore:
        return self._store

    def get(self, name: str) -> TenantState | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    # -- authentication -------------------------------------------------------------------------

    def authenticate(self, headers: Headers) -> TenantState | None:
        """The calling tenant; None when tenants are not configured. Raises Unauthorized (401)."""
        if not self.enabled:
            return None
        # The presented key (a bearer token, else x-api-key), found inline: a call costs as much as the loop.
        bearer: bytes | None = None
        api_key: bytes | None = None
        for name, value in headers:
            if name in _KEY_HEADERS:  # one set lookup per header, not two comparisons
                if name == b"authorization":
                    if value.startswith(b"Bearer "):  # the usual spelling: no general parse
                        token = value[7:].strip()
                    else:  # the scheme is case-insensitive (RFC 9110 11.1)
                        scheme, _, token = value.strip().partition(b" ")
                        token = token.strip() if scheme.lower() == b"bearer" else b""
                    if token:
                        bearer = token
                elif value := value.strip():
                    api_key = value
        key = bearer if bearer is not None else api_key
        if key is None:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                headers=list(_WWW_AUTHENTICATE),
            )
        tenant = self._by_digest.get(_sha256(key).digest())  # `_digest`, inlined: every request
        if tenant is None:
            raise Unauthorized("unknown API key", headers=list(_WWW_AUTHENTICATE))
        return tenant

    # -- admission ------------------------------------------------------------------------------

    def check(self, tenant: TenantState, estimated_tokens: int) -> Awaitable[None] | None:
        """Let a request through, or raise TooManyRequests (429) with Retry-After.

        Checks the budget, the token rate and a request slot in one store operation; only the request
        slot is charged, and only when all three pass, so that a refusal costs the tenant nothing.
        With the in-memory store that is decided at once (None: admitted); with another store this
        returns the awaitable that decides.
        """
        keys = self._keys.get(tenant.name) or self._keys_of(tenant)
        now = self._clock()
        tokens_s = 0.0  # the estimate's share of the token rate's minute
        if estimated_tokens > 0 and keys.token_s:
            # More than the whole allowance passes only with a full bucket; the estimate is never charged.
            tokens_s = (estimated_tokens if estimated_tokens < keys.token_cap else keys.token_cap) * keys.token_s
        lease = keys.lease
        if (
            lease is not None
            and lease.left
            and now < lease.until
            and lease.spent < lease.budget
            and (lease.tokens_tat if lease.tokens_tat > now else now) + tokens_s <= now + _MINUTE_S + _EPS
        ):
            lease.left -= 1  # a busy tenant's usual case: no store operation at all
            return None
        steps = keys.request_steps
        if tokens_s:
            steps = ((keys.tokens, tokens_s, False),) + steps
        ceiling = keys.ceiling
        if tenant.usd_per_day is not None and not keys.day_starts <= now < keys.day_ends:
            ceiling = keys.renew(now)
        if ceiling is None and not steps:
            return None
        local = self._local
        if local is None:
            return self._admit_remote(tenant, now, ceiling, steps)
        refusal = local.admit_now(now, ceiling, steps, _MINUTE_S)
        if refusal is not None:
            raise self._refused(tenant, refusal, steps, now)
        if keys.lease_slots and (lease is None or not lease.left or now >= lease.until):
            self._lease(local, keys, now, ceiling)
        return None

    def _lease(self, store: MemoryStore, keys: _StoreKeys, now: float, ceiling: tuple[str, float] | None) -> None:
        request_key, increment_s, _ = keys.request_steps[0]
        slots = store.reserve(request_key, now, increment_s, _MINUTE_S, keys.lease_slots)
        if not slots:
            keys.lease = None
            return
        tokens_tat = store.peek(keys.tokens)
        until = now + LEASE_S
        if ceiling is None:
            spent, budget = 0.0, math.inf
        else:
            spent, budget = store.peek(ceiling[0]) or 0.0, ceiling[1]
            until = min(until, keys.day_ends)
        keys.lease = _Lease(slots, until, -math.inf if tokens_tat is None else tokens_tat, spent, budget)

    async def _admit_remote(
        self, tenant: TenantState, now: float, ceiling: tuple[str, float] | None, steps: tuple[RateStep, ...]
    ) -> None:
        refusal = await self._store.admit(now, ceiling, steps, _MINUTE_S)
        if refusal is not None:
            raise self._refused(tenant, refusal, steps, now)

    def _refused(
        self, tenant: TenantState, refusal: Refusal, steps: tuple[RateStep, ...], now: float
    ) -> TooManyRequests:
        if refusal.check < 0:
            return TooManyRequests(
                f"tenant {tenant.name!r} spent its daily budget of {tenant.usd_per_day:g} USD; it renews at 00:00 UTC",
                headers=_retry_after(_DAY_S - now % _DAY_S),
            )
        if steps[refusal.check][2]:  # charged: the request slot
            limit = f"{tenant.requests_per_minute} requests per minute"
        else:
            limit = f"{tenant.tokens_per_minute} tokens per minute"
        return TooManyRequests(
            f"tenant {tenant.name!r} is over its limit of {limit}", headers=_retry_after(refusal.wait_s)
        )

    async def settle(self, tenant: TenantState, tokens: int, cost_usd: float) -> None:
        """After the response: charge the tokens used to the token rate and the cost to today's budget."""
        now = self._clock()
        self._keys_of(tenant).lease = None  # it kept the token rate and the spend as they were before this
        if tenant.tokens_per_minute is not None and tokens > 0:
            # Charged even past the allowance (the tokens were used): the debt delays later requests.
            increment_s = tokens * _MINUTE_S / tenant.tokens_per_minute
            await self._store.gcra(self._keys_of(tenant).tokens, now, increment_s, _MINUTE_S, charge=True, force=True)
        if tenant.usd_per_day is not None and cost_usd > 0:
            # Expires an hour after its day ends: late settles of that day's requests still find it.
            await self._store.incr(self._keys_of(tenant).spent_on(now), cost_usd, _DAY_S - now % _DAY_S + 3600)

    async def spent_today(self, tenant: TenantState) -> float:
        return await self._store.get(self._keys_of(tenant).spent_on(self._clock())) or 0.0

    async def remaining_budget(self, tenant: TenantState) -> float:
        """USD left today (never below 0); math.inf for a tenant without a budget."""
        if tenant.usd_per_day is None:
            return math.inf
        return max(0.0, tenant.usd_per_day - await self.spent_today(tenant))

    # -- internals ------------------------------------------------------------------------------

    def _keys_of(self, tenant: TenantState) -> _StoreKeys:
        keys = self._keys.get(tenant.name)
        return keys if keys is not None else _StoreKeys(self._prefix, tenant)  # a tenant a reload removed, in flight

    def __repr__(self) -> str:
        if not self.enabled:
            return "<Tenants disabled>"
        return f"<Tenants tenants={len(self._by_name)} keys={len(self._by_digest)} store={self._store!r}>"
