from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.admission import Admission, _expected_tokens, _token_bound
from gateway.config import Tenant
from gateway.errors import TooManyRequests, Unauthorized
from gateway.state import MemoryStore, RedisStore, StateStore
from gateway.tenants import LEASE_S, Tenants, TenantState, _digest, _sha256
from tests.context_factory import make_ctx
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/15"
NOON = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOON)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[StateStore]:
    """The limits run on both stores; Redis TTLs tick in real time, but a test lasts far less than any TTL."""
    if request.param == "memory":
        yield MemoryStore(clock=clock)
        return
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (RedisConnectionError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    prefix = f"test-tenants-{uuid.uuid4().hex}:"
    try:
        yield RedisStore(client, prefix=prefix)
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def make(store: StateStore, clock: FakeClock, **limits: object) -> tuple[Tenants, TenantState]:
    config: dict[str, object] = {"name": "team-a", "api_keys": ["key-a"]}
    if "usd_per_day" in limits:
        config["budget"] = {"usd_per_day": limits.pop("usd_per_day")}
    if limits:
        config["rate_limit"] = limits
    tenants = Tenants.from_config([Tenant.model_validate(config)], store=store, clock=clock)
    state = tenants.get("team-a")
    assert state is not None
    return tenants, state


def retry_after(exc: pytest.ExceptionInfo[TooManyRequests]) -> int:
    assert exc.value.status == 429
    values = [v for k, v in exc.value.headers if k == b"retry-after"]
    assert len(values) == 1
    return int(values[0])


# -- authentication ---------------------------------------------------------------------------------


async def admit(tenants: Tenants, tenant: TenantState, estimated_tokens: int) -> None:
    """`Tenants.check`, awaited when it returns an awaitable (another store than memory), as the gate's caller does."""
    pending = tenants.check(tenant, estimated_tokens)
    if pending is not None:
        await pending


def test_keys_are_digested_with_sha256() -> None:
    assert _sha256 is not hashlib.sha256  # CPython's builtin one, here
    for key in (b"", b"key-a1", "ключ".encode(), bytes(range(256)) * 3):
        assert _digest(key) == hashlib.sha256(key).digest()


def test_no_tenants_configured_means_no_authentication() -> None:
    tenants = Tenants.from_config(None)
    assert tenants.authenticate([]) is None
    assert repr(tenants) == "<Tenants disabled>"


def test_keys_from_bearer_or_x_api_key() -> None:
    tenants = Tenants.from_config(
        [
            Tenant(name="team-a", api_keys=["key-a1", "key-a2"]),
            Tenant(name="team-b", api_keys=["key-b"], rate_limit={"requests_per_minute": 10}),
        ]
    )
    a = tenants.authenticate([(b"authorization", b"Bearer key-a1")])
    assert a is not None and a.name == "team-a"
    assert tenants.authenticate([(b"authorization", b"bearer  key-a2 ")]) is a
    b = tenants.authenticate([(b"x-api-key", b"key-b")])
    assert b is not None and b.name == "team-b"
    # Bearer wins over x-api-key when both are sent.
    assert tenants.authenticate([(b"x-api-key", b"key-b"), (b"authorization", b"Bearer key-a1")]) is a
    assert repr(b) == "<TenantState 'team-b' rpm=10>"
    assert tenants.names() == ["team-a", "team-b"]
    assert repr(tenants).startswith("<Tenants tenants=2 keys=3 store=<MemoryStore")


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ([], "missing API key"),
        ([(b"authorization", b"Basic a2V5LWE6")], "missing API key"),
        ([(b"authorization", b"Bearer ")], "missing API key"),
        ([(b"x-api-key", b"")], "missing API key"),
        ([(b"authorization", b"Bearer nope")], "unknown API key"),
        ([(b"x-api-key", b"key-a ")], None),  # surrounding blanks are not part of the key
    ],
)
def test_missing_or_unknown_key_is_401(headers: list[tuple[bytes, bytes]], detail: str | None) -> None:
    tenants = Tenants.from_config([Tenant(name="team-a", api_keys=["key-a"])])
    if detail is None:
        assert tenants.authenticate(headers) is not None
        return
    with pytest.raises(Unauthorized) as exc:
        tenants.authenticate(headers)
    assert exc.value.status == 401
    assert exc.value.detail.startswith(detail)
    assert (b"www-authenticate", b'Bearer realm="inference-gateway"') in exc.value.headers


def test_plaintext_keys_are_not_kept() -> None:
    tenants = Tenants.from_config([Tenant(name="team-a", api_keys=["very-secret-key"])])
    kept = repr(vars(tenants)) + repr(tenants) + repr(tenants.get("team-a"))
    assert "very-secret-key" not in kept
    assert b"very-secret-key" not in b"".join(vars(tenants)["_by_digest"])


# -- request rate -----------------------------------------------------------------------------------


async def test_requests_per_minute_edges(store: StateStore, clock: FakeClock) -> None:
    tenants, a = make(store, clock, requests_per_minute=5)
    for _ in range(5):
        await admit(tenants, a, 0)
    with pytest.raises(TooManyRequests) as exc:
        await admit(tenants, a, 0)
    assert retry_after(exc) == 12  # one slot frees every 60/5 s
    assert "5 requests per minute" in exc.value.detail

    clock.now += 11.9
    with pytest.raises(TooManyRequests) as exc:
        await admit(tenants, a, 0)
    assert retry_after(exc) == 1  # 0.1 s, rounded up to whole seconds
    clock.now += 0.1
    await admit(tenants, a, 0)  # exactly when Retry-After said
    with pytest.raises(TooManyRequests):
        await admit(tenants, a, 0)

    clock.now += 60  # a quiet minute: the full allowance is back
    for _ in range(5):
        await admit(tenants, a, 0)
    with pytest.raises(TooManyRequests):
        await admit(tenants, a, 0)


async def test_requests_per_minute_not_dividing_sixty(store: StateStore, clock: FakeClock) -> None:
    tenants, a = make(store, clock, requests_per_minute=7)
    for _ in range(7):  # 7 x 60/7 s must not round past the minute
        await admit(tenants, a, 0)
    with pytest.raises(TooManyRequests) as exc:
        await admit(tenants, a, 0)
    assert retry_after(exc) == 9  # 8.57 s
    clock.now += 60 / 7
    await admit(tenants, a, 0)


async def test_concurrent_admits_take_exactly_the_allowance(store: StateStore, clock: FakeClock) -> None:
    tenants, a = make(store, clock, requests_per_minute=5)
    results = await asyncio.gather(*(admit(tenants, a, 0) for _ in range(12)), return_exceptions=True)
    assert sum(r is None for r in results) == 5
    assert all(isinstance(r, TooManyRequests) for r in results if r is not None)


# -- token rate -------------------------------------------------------------------------------------


async def test_tokens_per_minute(store: StateStore, clock: FakeClock) -> None:
    tenants, a = make(store, clock, tokens_per_minute=1000)
    await admit(tenants, a, 600)  # checked, not charged
    await admit(tenants, a, 600)
    await tenants.settle(a, tokens=600, cost_usd=0.0)
    await admit(tenants, a, 400)  # 600 used + 400 = the whole minute
    with pytest.raises(TooManyRequests) as exc:
        await admit(tenants, a, 600)
    assert retry_after(exc) == 12  # 200 more tokens free up in 200 x 60/1000 s
    assert "1000 tokens per minute" in exc.value.detail
    clock.now += 12
    await admit(tenants, a, 600)


async def test_request_larger_than_the_token_allowance(store: StateStore, clock: FakeClock) -> None:
    tenants, a = make(store, clock, tokens_per_minute=1000)
    await admit(tenants, a, 5000)  # fits only into a full bucket: it is full
    await tenants.settle(a, tokens=5000, cost_usd=0.0)
    with pytest.raises(TooManyRequests) as exc:
        await admit(tenants, a, 1)
    assert retry_after(exc) == 241  # the debt of 4000 tokens beyond a minute, then 1 token (240.06 s)
    clock.now += 240.06
    await admit(tenants, a, 1)
    with pytest.raises(TooManyRequests):
        await admit(tenants, a, 5000)  # no longer a full bucket


# -- daily budget -----------------------------------------------------------------------------------


async def test_budget_until_utc_midnight(store: StateStore, clock: FakeClock) -> None:
    clock.now = datetime(2024, 6, 1, 23, 0, 0, tzinfo=UTC).timestamp()
    tenants, a = make(store, clock, usd_per_day=1.0)
    assert await tenants.remaining_budget(a) == 1.0
    await admit(tenants, a, 0)
    await tenants.settle(a, tokens=0, cost_usd=0.6)
    assert await tenants.remaining_budget(a) == pytest.approx(0.4)
    await admit(tenants, a, 0)  # 0.6 < 1.0
    await tenants.settle(a, tokens=0, cost_usd=0.4)  # spent == budget
    with pytest.raises(TooManyRequests) as exc:
        await admit(tenants, a, 0)
    assert retry_after(exc) == 3600
    assert "daily budget of 1 USD" in exc.value.detail
    assert await tenants.remaining_budget(a) == 0.0
    await tenants.settle(a, tokens=0, cost_usd=0.3)  # an in-flight request overshoots
    assert await tenants.spent_today(a) == pytest.approx(1.3)
    assert await tenants.remaining_budget(a) == 0.0

    clock.now += 3599.5
    with pytest.raises(TooManyRequests) as exc:
        await admit(tenants, a, 0)
    assert retry_after(exc) == 1
    clock.now += 0.5  # 00:00:00 UTC: a new day
    await admit(tenants, a, 0)
    assert await tenants.remaining_budget(a) == 1.0


async def test_refusals_do_not_take_a_request_slot(store: StateStore, clock: FakeClock) -> None:
    tenants, a = make(store, clock, requests_per_minute=2, tokens_per_minute=100, usd_per_day=1.0)
    await tenants.settle(a, tokens=100, cost_usd=0.0)
    for _ in range(3):
        with pytest.raises(TooManyRequests):
            await admit(tenants, a, 50)  # refused by the token rate
    await tenants.settle(a, tokens=0, cost_usd=2.0)
    clock.now += 60
    with pytest.raises(TooManyRequests):
        await admit(tenants, a, 50)  # refused by the budget
    clock.now = datetime(2024, 6, 2, 0, 0, 0, tzinfo=UTC).timestamp()
    await admit(tenants, a, 50)
    await admit(tenants, a, 50)  # both request slots were still there
    with pytest.raises(TooManyRequests):
        await admit(tenants, a, 50)


async def test_unlimited_tenant(store: StateStore, clock: FakeClock) -> None:
    tenants, a = make(store, clock)
    for _ in range(100):
        await admit(tenants, a, 10_000)
    await tenants.settle(a, tokens=10_000, cost_usd=5.0)
    assert await tenants.remaining_budget(a) == math.inf
    assert repr(a) == "<TenantState 'team-a'>"


async def test_unreadable_rate_state_counts_as_a_full_bucket(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    tenants, a = make(store, clock, requests_per_minute=1)
    await store.set_str("tenant:team-a:requests", "garbage", ttl_s=None)
    await admit(tenants, a, 0)
    assert tenants.store is store
    with pytest.raises(TooManyRequests):
        await admit(tenants, a, 0)


async def test_check_decides_at_once_in_memory_and_waits_on_redis(store: StateStore, clock: FakeClock) -> None:
    tenants, a = make(store, clock, requests_per_minute=1)
    pending = tenants.check(a, 0)
    if isinstance(store, MemoryStore):
        assert pending is None  # admitted without a coroutine
        with pytest.raises(TooManyRequests):
            tenants.check(a, 0)
        return
    assert pending is not None
    await pending
    refused = tenants.check(a, 0)
    assert refused is not None
    with pytest.raises(TooManyRequests):
        await refused


@pytest.mark.parametrize(
    "document",
    [
        {"messages": [{"role": "user", "content": "héllo wörld " * 40}], "max_tokens": 7},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 'a"b\\' * 30}]}]},
        {"prompt": list(range(300)), "max_tokens": 1},
        {"prompt": [1, 2, 3]},
        {"input": ["x", "yy", "zzz"]},
        {"messages": [{"role": "user", "content": "\u2603\U0001f600"}]},
        {},
    ],
)
def test_the_admission_bound_is_never_below_the_estimate(document: dict[str, object]) -> None:
    body = orjson.dumps(document)
    assert _token_bound(body, orjson.loads(body)) >= _expected_tokens(orjson.loads(body))


async def test_a_request_over_the_bound_but_within_the_estimate_is_admitted(clock: FakeClock) -> None:
    """Near the token limit the bound refuses and the estimate decides: the same answer as the estimate alone."""
    tenants, a = make(MemoryStore(clock=clock), clock, tokens_per_minute=1000)
    document = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 0}  # ~100 tokens, ~430 bytes
    await tenants.settle(a, tokens=850, cost_usd=0.0)  # 150 tokens left this minute
    ctx = make_ctx(headers=[(b"x-api-key", b"key-a")], document=document)
    ctx.body = orjson.dumps(document)
    assert Admission(tenants).enter(ctx) is None  # the bound (431) does not fit, the estimate (100) does
    await tenants.settle(a, tokens=100, cost_usd=0.0)
    with pytest.raises(TooManyRequests):
        Admission(tenants).enter(ctx)


# -- leases (in-memory store) -----------------------------------------------------------------------


def test_a_busy_tenant_is_admitted_from_leases_and_counted_exactly(clock: FakeClock) -> None:
    """120,000 requests a minute: leases of 64 slots serve most requests, and a burst at one instant
    still gets the allowance, then 429 with the wait for one slot. (To a few requests: at a wall
    clock's magnitude a 0.5 ms step is rounded to 2.4e-7 s at each addition, with or without leases.)"""
    store = MemoryStore(clock=clock)
    tenants, a = make(store, clock, requests_per_minute=120_000, tokens_per_minute=10**9, usd_per_day=10.0)
    full = 0
    admit_now = store.admit_now

    def counting(*args: Any) -> Any:
        nonlocal full
        full += 1
        return admit_now(*args)

    store.admit_now = counting  # type: ignore[method-assign,assignment]
    passed = 0
    with pytest.raises(TooManyRequests) as refused:
        for _ in range(200_000):
            assert tenants.check(a, 100) is None
            passed += 1
    assert abs(passed - 120_000) <= 12
    assert retry_after(refused) == 1  # one slot, 0.5 ms away, rounded up to a whole second
    assert full < passed / 10  # most requests never reached the store


async def test_an_unused_lease_holds_back_at_most_what_the_rate_refills_in_its_time(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    tenants, a = make(store, clock, requests_per_minute=60_000)
    await admit(tenants, a, 0)  # one request, and a lease for the next ones
    tat = await store.get("tenant:team-a:requests")
    assert tat is not None
    held_s = tat - clock() - 60 / 60_000  # charged beyond the one request
    assert 0 < held_s <= LEASE_S + 1e-9


async def test_settling_ends_the_lease(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    tenants, a = make(store, clock, requests_per_minute=60_000, tokens_per_minute=1000, usd_per_day=1.0)
    await admit(tenants, a, 10)
    await admit(tenants, a, 10)  # from the lease
    await tenants.settle(a, tokens=995, cost_usd=0.0)  # the token rate is (nearly) used up
    with pytest.raises(TooManyRequests):
        await admit(tenants, a, 10)
    await tenants.settle(a, tokens=0, cost_usd=1.0)  # and the budget
    clock.advance(60)
    with pytest.raises(TooManyRequests, match="budget"):
        await admit(tenants, a, 10)


def test_slow_rates_get_no_lease(clock: FakeClock) -> None:
    tenants, a = make(MemoryStore(clock=clock), clock, requests_per_minute=1000)  # under one slot per 50 ms
    assert tenants.check(a, 0) is None
    assert tenants._keys_of(a).lease is None
