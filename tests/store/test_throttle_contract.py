"""One contract for the password-guessing counters (store/throttle.py): in memory, on a
real redis-server (store/redis_throttle.py, the Lua script) and in the SQLite state file
of one host's workers (store/sqlite_throttle.py). Time is virtual, as for the state
store. For Redis and SQLite each `make()` is a separate client or connection (another
instance or worker)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfaproxy.config.stores import RedisSettings
from mfaproxy.core.throttle import Refusal, Rule, in_window, next_allowed
from mfaproxy.store.redis_state import EXPIRY_MARGIN, RedisStateStore
from mfaproxy.store.redis_throttle import RedisThrottle
from mfaproxy.store.sqlite_state import SqliteStateStore
from mfaproxy.store.sqlite_throttle import SqliteThrottle
from mfaproxy.store.throttle import MemoryThrottle, Throttle
from tests.support.redis_server import RedisServer

NOW = 1_700_000_000.123456
RULE = Rule(window=600.0, free_failures=3, initial_delay=1.0, lock_seconds=60.0, max_failures=8)
WIDE = Rule(window=600.0, free_failures=50, initial_delay=1.0, lock_seconds=60.0, max_failures=60)
Factory = Callable[[], Throttle]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def make(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Factory]:
    memory = MemoryThrottle()
    stores: list[RedisStateStore | SqliteStateStore] = []

    def factory() -> Throttle:
        if request.param == "memory":
            return memory
        if request.param == "sqlite":
            local = SqliteStateStore(tmp_path / "state.sqlite3")
            stores.append(local)
            return SqliteThrottle(local)
        store = RedisStateStore(RedisSettings.model_validate({"url": redis_server.url}))
        stores.append(store)
        return RedisThrottle(store)

    redis_server.flush()
    yield factory
    for store in stores:
        await store.close()


@pytest.fixture
def throttle(make: Factory) -> Throttle:
    return make()


async def test_free_failures_then_a_doubling_wait(throttle: Throttle) -> None:
    counter = ("user:alice", RULE)
    for i in range(3):
        assert await throttle.reserve([counter], f"t{i}", NOW) is None
    refusal = await throttle.reserve([counter], "t3", NOW)
    assert refusal == Refusal(0, NOW + 1.0)
    assert await throttle.reserve([counter], "t3", NOW + 1.0) is None
    assert await throttle.reserve([counter], "t4", NOW + 2.9) == Refusal(0, NOW + 3.0)
    assert await throttle.reserve([counter], "t4", NOW + 3.0) is None
    assert await throttle.check(counter, NOW + 3.0) == NOW + 7.0


async def test_a_refusal_records_nothing_in_any_counter(throttle: Throttle) -> None:
    """A locked source naming bob must not spend bob's budget."""
    source, bob = ("source:nas|10.0.0.9", RULE), ("user:bob", RULE)
    for i in range(3):
        assert await throttle.reserve([source], f"s{i}", NOW) is None
    for i in range(20):
        refusal = await throttle.reserve([bob, source], f"b{i}", NOW)
        assert refusal is not None and refusal.index == 1
    assert await throttle.check(bob, NOW) is None
    for i in range(3):  # bob still has every free attempt
        assert await throttle.reserve([bob], f"x{i}", NOW) is None


async def test_knocking_during_a_lock_does_not_extend_it(throttle: Throttle) -> None:
    counter = ("user:carol", RULE)
    for i in range(8):
        await throttle.add(counter, f"f{i}", NOW)  # at the ceiling
    assert await throttle.check(counter, NOW) == NOW + 600.0
    for second in range(0, 600, 7):
        assert await throttle.reserve([counter], f"k{second}", NOW + second) is not None
    assert await throttle.reserve([counter], "late", NOW + 600.0) is None


async def test_release_clear_and_add(throttle: Throttle) -> None:
    counter = ("user:dave", RULE)
    for i in range(3):
        assert await throttle.reserve([counter], f"t{i}", NOW) is None
    assert await throttle.check(counter, NOW) == NOW + 1.0
    await throttle.release(["user:dave", "user:nobody"], "t2")  # a right password
    assert await throttle.check(counter, NOW) is None
    await throttle.add(counter, "t9", NOW)
    assert await throttle.check(counter, NOW) == NOW + 1.0
    await throttle.clear("user:dave")
    assert await throttle.check(counter, NOW) is None
    await throttle.release([], "t0")


async def test_events_leave_the_window(throttle: Throttle) -> None:
    counter = ("user:erin", RULE)
    for i in range(8):
        await throttle.add(counter, f"f{i}", NOW + i)
    # At the ceiling until the oldest leaves; then 7 are left, and the back-off after
    # 7 (16 s after the newest) is long over.
    assert await throttle.check(counter, NOW + 599) == NOW + 600
    assert await throttle.check(counter, NOW + 600) is None
    assert await throttle.reserve([counter], "again", NOW + 600) is None
    # that one is the 8th in the window again: at the ceiling until the next leaves
    assert await throttle.check(counter, NOW + 600) == NOW + 601


async def test_a_burst_from_two_instances_gets_exactly_the_free_attempts(make: Factory) -> None:
    first, second = make(), make()
    counters = [("user:frank", RULE), ("source:nas|1.2.3.4", WIDE)]
    results = await asyncio.gather(
        *((first if i % 2 else second).reserve(counters, f"r{i}", NOW) for i in range(40))
    )
    assert sum(1 for r in results if r is None) == RULE.free_failures
    assert await first.check(("source:nas|1.2.3.4", WIDE), NOW) is None  # 3 of 50 used


async def test_redis_expires_a_counter_after_its_window(redis_server: RedisServer) -> None:
    redis_server.flush()
    store = RedisStateStore(RedisSettings.model_validate({"url": redis_server.url}))
    try:
        await RedisThrottle(store).add(("user:gina", RULE), "t", NOW)
    finally:
        await store.close()
    client = redis_server.client()
    try:
        ttl = client.pttl("mfaproxy:password_failures:e:user:gina")
    finally:
        client.close()
    assert 600_000 < ttl <= (600 + EXPIRY_MARGIN) * 1000


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    free=st.integers(0, 4),
    extra=st.integers(1, 6),
    steps=st.lists(
        st.tuples(st.sampled_from(["reserve", "add", "release"]), st.floats(0, 90)), max_size=30
    ),
)
async def test_redis_and_memory_agree_with_the_rule(
    redis_server: RedisServer, free: int, extra: int, steps: list[tuple[str, float]]
) -> None:
    """The Lua script is the rule of core/throttle.py: same answers as the pure
    function (and as the memory store) on any sequence of operations."""
    rule = Rule(300.0, free, 0.5, 40.0, free + extra)
    redis_server.flush()
    store = RedisStateStore(RedisSettings.model_validate({"url": redis_server.url}))
    memory, shared = MemoryThrottle(), RedisThrottle(store)
    model: dict[str, float] = {}
    now = NOW
    try:
        for index, (operation, gap) in enumerate(steps):
            now += gap
            token = f"t{index % 5}"
            counter = ("user:hank", rule)
            if operation == "reserve":
                live = in_window(rule, model.values(), now)
                at = next_allowed(rule, live, now)
                expected = Refusal(0, at) if now < at else None
                got = [await t.reserve([counter], token, now) for t in (memory, shared)]
                assert got[0] == expected
                assert got[1] == expected or (
                    expected is not None
                    and got[1] is not None
                    and abs(got[1].retry_at - expected.retry_at) < 1e-6
                )
                if expected is None:
                    model[token] = now
            elif operation == "add":
                for t in (memory, shared):
                    await t.add(counter, token, now)
                model[token] = now
            else:
                for t in (memory, shared):
                    await t.release(["user:hank"], token)
                model.pop(token, None)
            model = {k: v for k, v in model.items() if v > now - rule.window}
    finally:
        await store.close()


def test_memory_stays_bounded_under_a_flood_of_names() -> None:
    throttle = MemoryThrottle(max_counters=100)

    async def flood() -> None:
        for i in range(1000):
            await throttle.add((f"user:u{i}", RULE), "t", NOW + i)

    asyncio.run(flood())
    assert len(throttle._counters) <= 100


def test_a_flood_past_the_cap_evicts_the_least_recently_failed_counter_alone() -> None:
    """Reaching the cap costs one eviction, not a pass over every counter: the old
    prune sorted them all and dropped half (about 5 s of a stalled event loop at the
    default million, a flood of made-up names away)."""
    throttle = MemoryThrottle(max_counters=100)

    async def flood() -> None:
        for i in range(100):
            await throttle.add((f"user:u{i}", RULE), f"t{i}", NOW + i)
        await throttle.add(("user:u0", RULE), "again", NOW + 100)  # u0 failed last
        await throttle.add(("user:new", RULE), "t", NOW + 101)

    asyncio.run(flood())
    names = list(throttle._counters)
    assert len(names) == 100  # not halved
    assert "user:u1" not in names  # the least recently failed went
    assert names[-2:] == ["user:u0", "user:new"]


def test_an_attempt_refused_by_its_source_creates_no_counter() -> None:
    """A sprayer whose source is locked sends a new made-up name each time: nothing is
    recorded for a refused attempt, and no counter is kept for the name either."""
    throttle = MemoryThrottle()
    source = ("source:vpn|station", RULE)

    async def spray() -> int:
        for i in range(RULE.max_failures):  # the source's failures fill its window
            await throttle.add(source, f"t{i}", NOW - i)
        refused = 0
        for i in range(1000):
            counters = [source, (f"user:made-up-{i}", RULE)]
            refused += await throttle.reserve(counters, f"r{i}", NOW + 1) is not None
        return refused

    assert asyncio.run(spray()) == 1000
    assert list(throttle._counters) == [source[0]]


def _race(path: str, results: multiprocessing.Queue[int]) -> None:
    async def burst() -> int:
        store = SqliteStateStore(path)
        try:
            throttle = SqliteThrottle(store)
            counters = [("user:ivan", RULE)]
            tokens = [f"{os.getpid()}-{i}" for i in range(10)]
            answers = [await throttle.reserve(counters, token, NOW) for token in tokens]
            return sum(1 for answer in answers if answer is None)
        finally:
            await store.close()

    results.put(asyncio.run(burst()))


def test_worker_processes_racing_on_sqlite_get_the_free_attempts_only(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite3")
    SqliteStateStore(path)  # created before the race, as the supervisor's first worker does
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = context.Queue()
    workers = [context.Process(target=_race, args=(path, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    admitted = sum(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(60)
    assert admitted == RULE.free_failures
