"""One contract for every `StateStore`: the memory store, the SQLite file the workers of
one host share, and Redis (a real redis-server); memory and Redis each bare and sealed
(store/sealed.py, what the daemon builds).

Each contract test runs against all five. Time is virtual: tests pass `now` and the stores
judge expiry and rate-limit windows by it (Redis keeps the expiry inside the value and
scores events with `now`; its own PX/PEXPIRE is only a safety net, checked below).
`make_store()` returns a store; for Redis each call is a separate client with its own
connection pool, standing for a separate mfaproxy instance, while the memory store is
one process so every call returns the same instance. For SQLite each call opens the same
file again, as each worker process does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from mfaproxy.config.stores import RedisSettings
from mfaproxy.errors import StateStoreUnavailable
from mfaproxy.observability import metrics
from mfaproxy.store.redis_state import EXPIRY_MARGIN, RedisStateStore
from mfaproxy.store.sealed import SealedStateStore
from mfaproxy.store.sqlite_state import SqliteStateStore
from mfaproxy.store.state import MemoryStateStore, StateStore
from tests.support.ports import free_port
from tests.support.redis_server import RedisSentinel, RedisServer

NOW = 1_700_000_000.0
StoreFactory = Callable[[], StateStore]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def redis_store(url: str, **options: object) -> RedisStateStore:
    return RedisStateStore(RedisSettings.model_validate({"url": url, **options}))


MASTER_KEY = bytes(range(32))


@pytest.fixture(
    params=["memory", "sqlite", "redis", "sealed-memory", "sealed-sqlite", "sealed-redis"]
)
async def make_store(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    created: list[StateStore] = []
    memory = MemoryStateStore()
    sealed = str(request.param).startswith("sealed-")

    def make() -> StateStore:
        store: StateStore = memory
        if str(request.param).endswith("sqlite"):
            store = SqliteStateStore(tmp_path / "shared-state.sqlite3")
            created.append(store)
        if str(request.param).endswith("redis"):
            # Not the product's 1 s: these tests are about semantics, and a gather of 40
            # calls on a loaded machine timed out (the timeout has its own tests below).
            store = redis_store(redis_server.url, socket_timeout=10.0)
            created.append(store)
        # Every instance of a cluster has the same master key.
        return SealedStateStore(store, MASTER_KEY) if sealed else store

    if str(request.param).endswith("redis"):
        redis_server.flush()
    yield make
    for store in [memory, *created]:
        await store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> StateStore:
    return make_store()


# --------------------------------------------------------------------------- values


async def test_put_get_round_trip(store: StateStore) -> None:
    value = {"user": "alice", "n": 3, "ok": True, "codes": [1, 2], "sub": {"x": None}}
    assert await store.get("sessions", "s1", NOW) is None
    await store.put("sessions", "s1", value, ttl=120, now=NOW)
    assert await store.get("sessions", "s1", NOW + 1) == value
    await store.put("sessions", "s1", {"user": "bob"}, ttl=120, now=NOW)
    assert await store.get("sessions", "s1", NOW) == {"user": "bob"}


async def test_expiry_follows_the_callers_clock(store: StateStore) -> None:
    await store.put("sessions", "s1", {"a": 1}, ttl=10, now=NOW)
    await store.put("sessions", "s2", {"a": 2}, ttl=10, now=NOW)
    assert await store.get("sessions", "s1", NOW + 9.999) == {"a": 1}
    assert await store.get("sessions", "s1", NOW + 10) is None
    assert await store.take("sessions", "s2", NOW + 10) is None
    # A later put gives a value a new lifetime.
    await store.put("sessions", "s1", {"a": 3}, ttl=10, now=NOW + 20)
    assert await store.get("sessions", "s1", NOW + 29) == {"a": 3}


async def test_namespaces_and_keys_never_collide(store: StateStore) -> None:
    await store.put("a:b", "c", {"v": 1}, ttl=60, now=NOW)
    await store.put("a", "b:c", {"v": 2}, ttl=60, now=NOW)
    await store.put("a%3Ab", "c", {"v": 3}, ttl=60, now=NOW)
    odd = "dave (ops), jr+1 * ? [x] \u00e9\U0001f511\n:"
    await store.put("a", odd, {"v": 4}, ttl=60, now=NOW)
    assert await store.get("a:b", "c", NOW) == {"v": 1}
    assert await store.get("a", "b:c", NOW) == {"v": 2}
    assert await store.get("a%3Ab", "c", NOW) == {"v": 3}
    assert await store.get("a", odd, NOW) == {"v": 4}
    assert await store.size("a", NOW) == 2


async def test_take_is_single_use(store: StateStore) -> None:
    await store.put("sessions", "s1", {"user": "alice"}, ttl=60, now=NOW)
    assert await store.take("sessions", "s1", NOW) == {"user": "alice"}
    assert await store.take("sessions", "s1", NOW) is None
    assert await store.get("sessions", "s1", NOW) is None
    assert await store.take("sessions", "never", NOW) is None


async def test_concurrent_takes_from_two_instances_one_winner(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    for round_ in range(5):
        key = f"s{round_}"
        await first.put("sessions", key, {"round": round_}, ttl=60, now=NOW)
        takers = [first if i % 2 else second for i in range(20)]
        results = await asyncio.gather(*(s.take("sessions", key, NOW) for s in takers))
        assert [r for r in results if r is not None] == [{"round": round_}]


async def test_put_if_absent_keeps_the_first_value(store: StateStore) -> None:
    assert await store.put_if_absent("inflight", "k", {"n": 1}, ttl=30, now=NOW) is None
    assert await store.put_if_absent("inflight", "k", {"n": 2}, ttl=30, now=NOW) == {"n": 1}
    assert await store.get("inflight", "k", NOW) == {"n": 1}
    # once the first has expired (by the caller's clock) the slot is free again
    assert await store.put_if_absent("inflight", "k", {"n": 3}, ttl=30, now=NOW + 31) is None
    assert await store.get("inflight", "k", NOW + 31) == {"n": 3}


async def test_put_if_absent_has_one_winner_across_instances(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    callers = [first if i % 2 else second for i in range(20)]
    results = await asyncio.gather(
        *(
            s.put_if_absent("inflight", "race", {"i": i}, ttl=30, now=NOW)
            for i, s in enumerate(callers)
        )
    )
    assert sum(1 for r in results if r is None) == 1
    winner = await first.get("inflight", "race", NOW)
    assert winner is not None and all(r in (None, winner) for r in results)


async def test_delete(store: StateStore) -> None:
    await store.put("sessions", "s1", {"a": 1}, ttl=60, now=NOW)
    await store.delete("sessions", "s1")
    await store.delete("sessions", "missing")
    assert await store.get("sessions", "s1", NOW) is None
    assert await store.size("sessions", NOW) == 0


async def test_size_counts_live_values_of_one_namespace(store: StateStore) -> None:
    assert await store.size("sessions", NOW) == 0
    for i, ttl in enumerate((10, 20, 30, 40)):
        await store.put("sessions", f"s{i}", {"i": i}, ttl=ttl, now=NOW)
    await store.put("other", "s0", {"i": 0}, ttl=60, now=NOW)
    await store.put("sessions", "s0", {"i": 0}, ttl=10, now=NOW)  # replaced, not added
    assert await store.size("sessions", NOW) == 4
    assert await store.size("sessions", NOW + 10) == 3  # s0 expired
    await store.take("sessions", "s1", NOW + 10)
    await store.delete("sessions", "s2")
    assert await store.size("sessions", NOW + 10) == 1
    assert await store.size("sessions", NOW + 40) == 0
    assert await store.size("other", NOW) == 1


# --------------------------------------------------------------------------- rate limits


def limiter(
    store: StateStore,
    namespace: str,
    key: str,
    *,
    max_events: int,
    window: float,
    min_interval: float = 0.0,
) -> Callable[[float], Awaitable[bool]]:
    """`hit(t)` records an event at NOW + t under one limit."""

    async def hit(t: float) -> bool:
        return await store.rate_limit(
            namespace, key, NOW + t, max_events=max_events, window=window, min_interval=min_interval
        )

    return hit


async def test_rate_limit_admits_max_events_per_window(store: StateStore) -> None:
    alice = limiter(store, "fail", "alice", max_events=3, window=60.0)
    bob = limiter(store, "fail", "bob", max_events=3, window=60.0)
    assert [await alice(t) for t in range(4)] == [True, True, True, False]
    assert await store.count("fail", "alice", NOW + 3, 60.0) == 3
    assert await bob(3)  # keys are independent
    # The first event leaves the window when it is `window` seconds old.
    assert not await alice(59.9)
    assert await alice(60)
    assert not await alice(60.5)


async def test_refusals_record_nothing(store: StateStore) -> None:
    hit = limiter(store, "flood", "k", max_events=2, window=10.0)
    assert await hit(0)
    assert await hit(1)
    for t in range(2, 10):
        assert not await hit(t)
    assert await store.count("flood", "k", NOW + 9, 10.0) == 2
    assert await hit(10)


async def test_min_interval(store: StateStore) -> None:
    hit = limiter(store, "sms", "alice", max_events=10, window=600.0, min_interval=5.0)
    assert await hit(0)
    assert not await hit(4.9)
    assert await store.count("sms", "alice", NOW + 4.9, 600.0) == 1  # refusal not recorded
    assert await hit(5)
    assert not await hit(9.9)
    assert await hit(10)
    assert await store.count("sms", "alice", NOW + 10, 600.0) == 3


async def test_count_uses_its_window(store: StateStore) -> None:
    assert await store.count("fail", "alice", NOW, 60.0) == 0
    for t in (0, 10, 20):
        await store.rate_limit("fail", "alice", NOW + t, max_events=10, window=60.0)
    assert await store.count("fail", "alice", NOW + 20, 60.0) == 3
    assert await store.count("fail", "alice", NOW + 65, 60.0) == 2
    assert await store.count("fail", "alice", NOW + 80, 60.0) == 0


async def test_values_and_rate_limits_do_not_share_keys(store: StateStore) -> None:
    await store.put("otp", "alice", {"step": 1}, ttl=60, now=NOW)
    assert await store.rate_limit("otp", "alice", NOW, max_events=1, window=60.0)
    assert await store.get("otp", "alice", NOW) == {"step": 1}
    assert await store.size("otp", NOW) == 1
    await store.delete("otp", "alice")
    assert await store.count("otp", "alice", NOW, 60.0) == 1


async def test_rate_limit_is_atomic_across_instances(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    calls = [
        (first if i % 2 else second).rate_limit("fail", "alice", NOW, max_events=5, window=60.0)
        for i in range(40)
    ]
    assert sum(await asyncio.gather(*calls)) == 5
    assert await first.count("fail", "alice", NOW, 60.0) == 5


# --------------------------------------------------------------------------- reservations


async def test_reserve_admits_max_events_and_release_gives_one_back(store: StateStore) -> None:
    tokens = [await store.reserve("nas", "vpn", NOW, max_events=3, window=60) for _ in range(4)]
    assert tokens[3] is None and all(tokens[:3]) and len(set(tokens[:3])) == 3
    assert await store.count("nas", "vpn", NOW, 60) == 3
    first = tokens[0]
    assert first is not None
    await store.release("nas", "vpn", first)
    await store.release("nas", "vpn", first)  # twice: the second is a no-op
    assert await store.count("nas", "vpn", NOW, 60) == 2
    assert await store.reserve("nas", "vpn", NOW, max_events=3, window=60) is not None
    assert await store.reserve("nas", "vpn", NOW, max_events=3, window=60) is None
    # the window slides by the caller's clock
    assert await store.reserve("nas", "vpn", NOW + 61, max_events=3, window=60) is not None
    await store.release("nas", "never-used", "no-such-token")


async def test_reserve_is_atomic_across_instances(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    calls = [
        (first if i % 2 else second).reserve("nas", "vpn", NOW, max_events=5, window=60.0)
        for i in range(60)
    ]
    granted = [t for t in await asyncio.gather(*calls) if t is not None]
    assert len(granted) == 5
    # releases and new reservations racing: never more than the limit held at once
    calls = [first.release("nas", "vpn", t) for t in granted[:2]]
    calls += [second.reserve("nas", "vpn", NOW, max_events=5, window=60.0) for _ in range(20)]
    await asyncio.gather(*calls)
    assert await first.count("nas", "vpn", NOW, 60.0) <= 5


async def test_a_lease_is_a_reservation_of_one(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    callers = [first if i % 2 else second for i in range(30)]
    holders = await asyncio.gather(
        *(s.reserve("lease", "alice", NOW, max_events=1, window=30) for s in callers)
    )
    held = [h for h in holders if h is not None]
    assert len(held) == 1
    assert await second.reserve("lease", "alice", NOW + 1, max_events=1, window=30) is None
    await first.release("lease", "alice", held[0])
    assert await second.reserve("lease", "alice", NOW + 1, max_events=1, window=30) is not None
    # a holder that vanished without releasing is timed out by the window
    assert await first.reserve("lease", "bob", NOW, max_events=1, window=30) is not None
    assert await first.reserve("lease", "bob", NOW + 30, max_events=1, window=30) is not None


# --------------------------------------------------------------------------- bounded groups


async def test_put_bounded_retires_the_oldest(store: StateStore) -> None:
    retired: list[str] = []
    for i in range(5):
        retired += await store.put_bounded(
            "sessions", f"s{i}", {"i": i}, ttl=120, now=NOW, group="alice", limit=3
        )
    assert retired == ["s0", "s1"]
    assert [await store.get("sessions", f"s{i}", NOW) for i in range(5)] == [
        None,
        None,
        {"i": 2},
        {"i": 3},
        {"i": 4},
    ]
    assert await store.size("sessions", NOW) == 3
    # another group is not affected
    assert await store.put_bounded("sessions", "b0", {}, 120, NOW, group="bob", limit=3) == []


async def test_put_bounded_counts_only_live_members(store: StateStore) -> None:
    for i in range(3):
        await store.put_bounded("sessions", f"s{i}", {}, ttl=60, now=NOW, group="u", limit=3)
    assert await store.take("sessions", "s1", NOW) == {}  # answered: no longer counts
    assert await store.put_bounded("sessions", "s3", {}, ttl=60, now=NOW, group="u", limit=3) == []
    # expired by the caller's clock: no longer counts either
    later = NOW + 61
    for i in range(4, 7):
        assert await store.put_bounded("sessions", f"s{i}", {}, 60, later, group="u", limit=3) == []
    assert await store.put_bounded("sessions", "s7", {}, 60, later, group="u", limit=3) == ["s4"]


async def test_put_bounded_is_atomic_across_instances(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    calls = [
        (first if i % 2 else second).put_bounded(
            "sessions", f"s{i}", {"i": i}, ttl=120, now=NOW, group="alice", limit=3
        )
        for i in range(40)
    ]
    retired = [key for keys in await asyncio.gather(*calls) for key in keys]
    assert len(retired) == 37 and len(set(retired)) == 37
    live = [await first.get("sessions", f"s{i}", NOW) for i in range(40)]
    assert sum(1 for value in live if value is not None) == 3


# --------------------------------------------------------------------------- Redis only


async def test_redis_expiry_safety_net(redis_server: RedisServer) -> None:
    redis_server.flush()
    store = redis_store(redis_server.url, key_prefix="cluster1")
    try:
        await store.put("sessions", "s1", {"a": 1}, ttl=120, now=NOW)
        await store.rate_limit("fail", "alice", NOW, max_events=3, window=60.0)
    finally:
        await store.close()
    client = redis_server.client()
    try:
        value_ttl = client.pttl("cluster1:sessions:v:s1")
        index_ttl = client.pttl("cluster1:sessions:index")
        events_ttl = client.pttl("cluster1:fail:e:alice")
    finally:
        client.close()
    assert 120_000 < value_ttl <= (120 + EXPIRY_MARGIN) * 1000
    assert 120_000 < index_ttl <= (120 + EXPIRY_MARGIN) * 1000
    assert 60_000 < events_ttl <= (60 + EXPIRY_MARGIN) * 1000


def up_gauge(store: RedisStateStore) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "mfaproxy_upstream_up", {"service": "redis", "server": store.settings.server_label()}
    )


async def assert_every_method_unavailable(store: RedisStateStore) -> None:
    calls = [
        lambda: store.put("s", "k", {}, ttl=1, now=NOW),
        lambda: store.get("s", "k", NOW),
        lambda: store.take("s", "k", NOW),
        lambda: store.delete("s", "k"),
        lambda: store.rate_limit("s", "k", NOW, max_events=1, window=1.0),
        lambda: store.count("s", "k", NOW, 1.0),
        lambda: store.size("s", NOW),
        store.ping,
    ]
    async with asyncio.timeout(30):  # a guard against hanging, not a timing assertion
        for call in calls:
            with pytest.raises(StateStoreUnavailable):
                await call()
    assert up_gauge(store) == 0


async def test_refused_connection_is_unavailable() -> None:
    store = redis_store(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    try:
        await assert_every_method_unavailable(store)
    finally:
        await store.close()


async def test_silent_server_is_unavailable_after_the_socket_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        store = redis_store(f"redis://127.0.0.1:{port}/0", socket_timeout=0.1)
        try:
            await assert_every_method_unavailable(store)
        finally:
            await store.close()


async def test_recovers_after_redis_restart_without_a_new_store() -> None:
    with RedisServer() as server:
        store = redis_store(server.url)
        try:
            await store.put("sessions", "s1", {"a": 1}, ttl=60, now=NOW)
            assert up_gauge(store) == 1
            # Restarted while idle: the broken pooled connection is replaced at once.
            server.restart()
            assert await store.get("sessions", "s1", NOW) is None  # no persistence
            # Down: every call fails fast; back up: the same object works again.
            server.stop()
            await assert_every_method_unavailable(store)
            server.start()
            async with asyncio.timeout(10):
                while True:
                    try:
                        await store.ping()
                        break
                    except StateStoreUnavailable:
                        await asyncio.sleep(0.05)  # polling interval
            await store.put("sessions", "s2", {"a": 2}, ttl=60, now=NOW)
            assert await store.take("sessions", "s2", NOW) == {"a": 2}
            assert up_gauge(store) == 1
        finally:
            await store.close()


async def test_tls_with_a_private_ca() -> None:
    with RedisServer(tls=True) as server:
        assert server.ca_file is not None
        store = redis_store(server.tls_url, tls_ca_file=str(server.ca_file))
        untrusted = redis_store(server.tls_url, socket_timeout=0.5)
        try:
            await store.put("sessions", "s1", {"a": 1}, ttl=60, now=NOW)
            assert await store.take("sessions", "s1", NOW) == {"a": 1}
            with pytest.raises(StateStoreUnavailable):
                await untrusted.ping()  # system CAs do not know the test CA
        finally:
            await store.close()
            await untrusted.close()


async def test_sentinel_finds_the_master_and_passes_its_password() -> None:
    with (
        RedisServer(password="redis-Secret-9") as master,
        RedisSentinel(master, "mfa") as sentinel,
    ):
        settings = RedisSettings.model_validate(
            {
                "sentinels": [sentinel.address],
                "service_name": "mfa",
                "password": "redis-Secret-9",
            }
        )
        store = RedisStateStore(settings)
        try:
            await store.put("sessions", "s1", {"a": 1}, ttl=60, now=NOW)
            assert await store.take("sessions", "s1", NOW) == {"a": 1}
        finally:
            await store.close()


# --------------------------------------------------------------------------- settings


def test_settings_forms_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PW", "from-env")
    by_url = RedisSettings.model_validate(
        {"url": "redis://user:hunter2@10.0.0.5:6380/2", "password_env": "REDIS_PW"}
    )
    assert by_url.password is not None and by_url.password.get_secret_value() == "from-env"
    assert by_url.server_label() == "10.0.0.5:6380"  # never the password
    by_sentinel = RedisSettings.model_validate(
        {"sentinels": ["10.0.0.1", "[::1]:26380"], "service_name": "mfa"}
    )
    assert by_sentinel.server_label() == "sentinel/mfa"
    for bad in (
        {},
        {"url": "redis://h", "sentinels": ["h:1"], "service_name": "m"},
        {"url": "http://h"},
        {"sentinels": ["h:1"]},
        {"sentinels": ["h:99999"], "service_name": "m"},
        {"url": "redis://h", "service_name": "m"},
        {"url": "redis://h", "unknown": 1},
        {"url": "redis://h", "socket_timeout": 0},
        {"url": "redis://h", "tls_ca_file": "/etc/ssl/ca.pem"},  # not TLS: refused
    ):
        with pytest.raises(ValidationError):
            RedisSettings.model_validate(bad)
