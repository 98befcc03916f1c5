"""One contract, two stores: every test runs on MemoryStore and on a real Redis (DB 15)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.state import FallbackStore, MemoryStore, RateStep, RedisStore, Refusal, StateStore
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/15"


@dataclass
class Subject:
    store: StateStore
    wait: Callable[[float], Awaitable[None]]  # let `seconds` pass for this store


async def _redis_or_skip() -> Redis:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (RedisConnectionError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    return client


@pytest.fixture(params=["memory", "redis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        clock = FakeClock(1000.0)

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Subject(MemoryStore(clock=clock), advance)
        return
    client = await _redis_or_skip()
    prefix = f"test-state-{uuid.uuid4().hex}:"
    store = RedisStore(client, prefix=prefix)
    try:
        yield Subject(store, asyncio.sleep)
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await store.aclose()
        await client.aclose()


async def test_incr_creates_adds_and_returns_the_value(subject: Subject) -> None:
    store = subject.store
    assert await store.get("n") is None
    assert await store.incr("n", 1, ttl_s=60) == 1.0
    assert await store.incr("n", 2.5, ttl_s=60) == 3.5
    assert await store.get("n") == 3.5
    assert await store.incr("f", 0.1, ttl_s=60) == pytest.approx(0.1)
    assert await store.incr("f", 0.2, ttl_s=60) == pytest.approx(0.3)
    assert await store.incr("neg", -2, ttl_s=60) == -2.0
    await store.incr("i", 1, ttl_s=60)
    await store.incr("i", 1, ttl_s=60)
    assert await store.get_str("i") == "2"  # as Redis prints an integral float


async def test_incr_sets_expiry_only_when_creating(subject: Subject) -> None:
    store = subject.store
    await store.incr("window", 1, ttl_s=0.2)
    await subject.wait(0.12)
    await store.incr("window", 1, ttl_s=10)  # must not push the expiry out
    assert await store.get("window") == 2.0
    await subject.wait(0.12)
    assert await store.get("window") is None
    assert await store.incr("window", 1, ttl_s=0.2) == 1.0  # a fresh window


async def test_compare_and_set(subject: Subject) -> None:
    store = subject.store
    assert await store.compare_and_set("k", None, "a", ttl_s=None)
    assert not await store.compare_and_set("k", None, "b", ttl_s=None)  # exists now
    assert not await store.compare_and_set("k", "x", "b", ttl_s=None)  # wrong expectation
    assert await store.get_str("k") == "a"
    assert await store.compare_and_set("k", "a", "b", ttl_s=0.15)
    assert await store.get_str("k") == "b"
    await subject.wait(0.25)
    assert await store.get_str("k") is None  # the TTL given with the new value
    assert not await store.compare_and_set("k", "b", "c", ttl_s=None)
    assert await store.compare_and_set("k", None, "1.5", ttl_s=None)
    assert await store.get("k") == 1.5  # a numeric string reads as a number


async def test_set_and_get_strings(subject: Subject) -> None:
    store = subject.store
    assert await store.get_str("s") is None
    await store.set_str("s", "héllo", ttl_s=None)
    assert await store.get_str("s") == "héllo"
    await store.set_str("s", "short", ttl_s=0.1)
    await subject.wait(0.2)
    assert await store.get_str("s") is None
    await store.set_str("p", "kept", ttl_s=0.1)
    await store.set_str("p", "kept", ttl_s=None)  # no TTL: persists
    await subject.wait(0.2)
    assert await store.get_str("p") == "kept"


async def test_gcra_charges_what_fits_and_says_how_long_the_rest_waits(subject: Subject) -> None:
    store = subject.store
    now = 5000.0
    for _ in range(3):  # a burst of 3 x 20 s fits a 60 s allowance
        assert await store.gcra("r", now, 20.0, 60.0, charge=True) == 0.0
    assert await store.gcra("r", now, 20.0, 60.0, charge=True) == pytest.approx(20.0)  # refused: not charged
    assert await store.gcra("r", now + 5, 20.0, 60.0, charge=True) == pytest.approx(15.0)
    assert await store.gcra("r", now + 20, 20.0, 60.0, charge=False) == 0.0  # fits, but only asked
    assert await store.gcra("r", now + 20, 20.0, 60.0, charge=True) == 0.0
    assert await store.gcra("r", now + 20, 20.0, 60.0, charge=True) == pytest.approx(20.0)
    assert await store.gcra("r", now + 20, 100.0, 60.0, charge=True, force=True) == 0.0  # usage already spent
    assert await store.gcra("r", now + 20, 1.0, 60.0, charge=False) == pytest.approx(101.0)
    assert await store.gcra("s", now, 0.1, 60.0, charge=True) == 0.0
    await subject.wait(1.3)  # the key lives until the allowance is full again, plus 1 s: here 1.1 s
    assert await store.get("s") is None


async def test_concurrent_gcra_steps_are_atomic(subject: Subject) -> None:
    store = subject.store
    waits = await asyncio.gather(*(store.gcra("g", 100.0, 1.0, 10.0, charge=True) for _ in range(30)))
    assert sum(1 for wait in waits if wait == 0.0) == 10


async def test_admit_checks_everything_and_charges_only_when_all_fit(subject: Subject) -> None:
    store = subject.store
    now = 5000.0
    tokens: RateStep = ("tokens", 30.0, False)
    request: RateStep = ("requests", 20.0, True)
    assert await store.admit(now, None, (tokens, request), 60.0) is None
    assert await store.get("tokens") is None  # only asked
    assert await store.get("requests") == pytest.approx(now + 20.0)
    await store.gcra("tokens", now, 45.0, 60.0, charge=True)
    refusal = await store.admit(now, None, (tokens, request), 60.0)
    assert refusal is not None and refusal.check == 0  # the token step,
    assert refusal.wait_s == pytest.approx(15.0)  # 15 s until it fits
    assert await store.get("requests") == pytest.approx(now + 20.0)  # a refusal charges nothing
    await store.gcra("tokens", now, -45.0, 60.0, charge=True, force=True)  # the tokens' debt paid back
    for _ in range(2):  # 3 x 20 s fit the 60 s allowance
        assert await store.admit(now, None, (tokens, request), 60.0) is None
    refusal = await store.admit(now, None, (tokens, request), 60.0)
    assert refusal is not None and refusal.check == 1 and refusal.wait_s == pytest.approx(20.0)

    ceiling = ("spent", 1.0)
    assert await store.admit(now, ceiling, (), 60.0) is None  # nothing spent yet
    await store.incr("spent", 0.999, ttl_s=60)
    assert await store.admit(now, ceiling, (), 60.0) is None
    await store.incr("spent", 0.001, ttl_s=60)
    assert await store.admit(now, ceiling, (("other", 1.0, True),), 60.0) == Refusal(-1, 0.0)
    assert await store.get("other") is None


async def test_concurrent_admits_are_atomic(subject: Subject) -> None:
    store = subject.store
    step = ("a", 1.0, True)
    refusals = await asyncio.gather(*(store.admit(100.0, None, (step,), 10.0) for _ in range(30)))
    assert sum(1 for refusal in refusals if refusal is None) == 10


async def test_concurrent_increments_are_atomic(subject: Subject) -> None:
    store = subject.store
    await asyncio.gather(*(store.incr("c", 1, ttl_s=60) for _ in range(50)))
    assert await store.get("c") == 50.0
    wins = await asyncio.gather(*(store.compare_and_set("once", None, str(i), ttl_s=60) for i in range(20)))
    assert sum(wins) == 1


async def test_redis_keys_carry_the_prefix() -> None:
    client = await _redis_or_skip()
    prefix = f"test-state-{uuid.uuid4().hex}:"
    store = RedisStore(client, prefix=prefix)
    try:
        await store.incr("budget", 1, ttl_s=30)
        assert await client.exists(prefix + "budget") == 1
        ttl = await client.pttl(prefix + "budget")
        assert 0 < ttl <= 30_000
        assert await store.ping()
        assert repr(store) == f"<RedisStore prefix={prefix!r}>"
    finally:
        await client.delete(prefix + "budget")
        await client.aclose()


async def test_redis_store_from_url_owns_its_client() -> None:
    await (await _redis_or_skip()).aclose()
    store = RedisStore.from_url(REDIS_URL, prefix=f"test-state-{uuid.uuid4().hex}:")
    assert await store.get("missing") is None
    await store.aclose()


async def test_memory_store_is_bounded() -> None:
    clock = FakeClock(1000.0)
    store = MemoryStore(clock=clock, max_keys=10)
    for i in range(5):
        await store.set_str(f"old{i}", "x", ttl_s=1)
    clock.now += 2  # those five expire
    for i in range(10):
        await store.incr(f"k{i}", 1, ttl_s=60)
    assert len(store) == 10
    assert await store.get("k0") == 1.0  # room came from the expired keys, not the live ones
    for i in range(10, 30):
        await store.incr(f"k{i}", 1, ttl_s=60)
    assert len(store) <= 10
    assert await store.get("k29") == 1.0
    assert repr(store) == f"<MemoryStore keys={len(store)} max_keys=10>"
    with pytest.raises(ValueError):
        MemoryStore(max_keys=0)
    await store.aclose()
    assert len(store) == 0


async def test_fallback_store_serves_locally_while_redis_is_down() -> None:
    clock = FakeClock(1000.0)
    changes: list[tuple[bool, str | None]] = []
    dead = RedisStore(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), owns_client=True)
    store = FallbackStore(dead, clock=clock, retry_s=5.0, on_change=lambda d, e: changes.append((d, e)))
    assert not store.degraded
    assert await store.incr("n", 1, ttl_s=60) == 1.0  # served by the local store
    assert store.degraded and store.last_error is not None
    assert await store.incr("n", 1, ttl_s=60) == 2.0  # no new attempt on Redis before retry_s
    assert await store.get_str("n") == "2"
    assert await store.compare_and_set("c", None, "v", ttl_s=None)
    await store.set_str("s", "v", ttl_s=None)
    assert await store.get("n") == 2.0
    assert await store.admit(1000.0, ("n", 2.0), (), 60.0) == Refusal(-1, 0.0)
    assert await store.admit(1000.0, None, (("r", 1.0, True),), 60.0) is None
    assert await store.gcra("r", 1000.0, 59.5, 60.0, charge=False) == pytest.approx(0.5)  # the admit's charge
    assert [d for d, _ in changes] == [True]
    assert repr(store).startswith("<FallbackStore degraded")

    healthy = MemoryStore(clock=clock)
    store.primary = healthy  # "Redis" is back
    clock.now += 5
    assert await store.incr("n", 1, ttl_s=60) == 1.0  # the primary's own count
    assert not store.degraded
    assert [d for d, _ in changes] == [True, False]
    assert repr(store).startswith("<FallbackStore healthy")
    await store.aclose()
    await dead.aclose()
