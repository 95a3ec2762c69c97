"""The cluster's duplicate table (store/duplicates.py) on a real redis-server: two
instances, a request in flight on one, its owner alive (retransmissions ignored) or
dead (the first retransmission after its lease lapsed is taken over, by one instance).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from mfaproxy.config.stores import RedisSettings
from mfaproxy.observability.metrics import REGISTRY
from mfaproxy.radius.duplicates import Seen
from mfaproxy.store.duplicates import LEASES, SharedDuplicates
from mfaproxy.store.redis_state import RedisStateStore
from tests.support.redis_server import RedisServer

KEY = ("192.0.2.10", 40000, 42, b"\x01" * 16)
NAME = "192.0.2.10|40000|42|" + "01" * 16
LEASE = 2.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[list[RedisStateStore]]:
    redis_server.flush()
    made = [
        RedisStateStore(RedisSettings.model_validate({"url": redis_server.url})) for _ in range(3)
    ]
    yield made
    for store in made:
        await store.close()


def taken_over() -> float:
    return REGISTRY.get_sample_value("mfaproxy_duplicates_total", {"action": "taken_over"}) or 0


def die(instance: SharedDuplicates) -> None:
    """SIGKILL, as far as the table is concerned: renewals stop, nothing is finished."""
    for task in instance._renewals.values():
        task.cancel()


async def test_a_dead_owners_request_is_taken_over_once(stores: list[RedisStateStore]) -> None:
    a, b, c = (SharedDuplicates(s, reply_ttl=30, in_flight_ttl=300, lease=LEASE) for s in stores)
    now = time.time()
    assert (await a.begin(KEY, now)).seen is Seen.NEW
    assert (await b.begin(KEY, now + 0.5)).seen is Seen.IN_FLIGHT  # young: A is working
    die(a)
    before = taken_over()
    later = now + LEASE + 0.5
    results = await asyncio.gather(b.begin(KEY, later), c.begin(KEY, later))
    assert sorted(r.seen.value for r in results) == ["in_flight", "new"]  # exactly one
    assert taken_over() == before + 1
    winner = b if results[0].seen is Seen.NEW else c
    await winner.finish(KEY, b"reply", later)
    cached = await a.begin(KEY, later + 1)
    assert (cached.seen, cached.reply) == (Seen.ANSWERED, b"reply")
    die(b)
    die(c)


async def test_a_live_owner_keeps_its_request(stores: list[RedisStateStore]) -> None:
    a, b = (SharedDuplicates(s, reply_ttl=30, in_flight_ttl=300, lease=LEASE) for s in stores[:2])
    started = time.time()
    assert (await a.begin(KEY, started)).seen is Seen.NEW
    deadline = time.monotonic() + 20
    while await stores[0].get(LEASES, NAME, time.time()) is None:  # A's first renewal
        assert time.monotonic() < deadline, "the owner never renewed its lease"
        await asyncio.sleep(0.05)  # polling interval, not a synchronisation delay
    before = taken_over()
    # Older than a lease, but the lease is fresh: A is alive, the copy is ignored.
    assert (await b.begin(KEY, started + LEASE + 0.1)).seen is Seen.IN_FLIGHT
    assert taken_over() == before
    await a.finish(KEY, None, time.time())
    assert a._renewals == {}
    # Finished without an answer: copies stay silent, even long after.
    assert (await b.begin(KEY, started + 10 * LEASE)).seen is Seen.IN_FLIGHT


async def test_a_tampered_entry_without_a_start_is_never_taken_over(
    stores: list[RedisStateStore],
) -> None:
    """An entry whose start time is missing or not a number (tampered, or written by an
    older version) is treated as young: silence, never a second processing."""
    b = SharedDuplicates(stores[1], reply_ttl=30, in_flight_ttl=300, lease=LEASE)
    now = time.time()
    for started in (None, "yesterday", [1]):
        await stores[0].put("duplicates", NAME, {"done": False, "started": started}, 300, now)
        assert (await b.begin(KEY, now + 100)).seen is Seen.IN_FLIGHT
