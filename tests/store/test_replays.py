"""Replays (issue 10, item 9) on every duplicate table: in process, and shared through a
real redis-server by two instances. A processed request's Request Authenticator, seen
again outside the duplicate window or from another port, is REPLAYED; within a client
only; forgotten with a shed request; never confused with a takeover of a dead
instance's request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from mfaproxy.config.stores import RedisSettings
from mfaproxy.radius.duplicates import DuplicateTable, ReplayWindow, Seen
from mfaproxy.store.duplicates import Duplicates, LocalDuplicates, SharedDuplicates
from mfaproxy.store.redis_state import RedisStateStore
from tests.support.redis_server import RedisServer

KEY = ("192.0.2.1", 40000, 7, b"\x05" * 16)
OTHER_PORT = ("192.0.2.1", 40001, 9, KEY[3])
REPLY_TTL, REPLAY_TTL = 30.0, 120.0
Instances = Callable[[], Duplicates]  # each call: one more instance of the cluster


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["local", "redis"])
async def instances(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[Instances]:
    stores: list[RedisStateStore] = []
    local = LocalDuplicates(DuplicateTable(REPLY_TTL, 300), ReplayWindow(REPLAY_TTL))

    def make() -> Duplicates:
        if request.param == "local":
            return local  # one process: every "instance" is the same table
        store = RedisStateStore(RedisSettings.model_validate({"url": redis_server.url}))
        stores.append(store)
        return SharedDuplicates(store, REPLY_TTL, 300, lease=2.0, replay_ttl=REPLAY_TTL)

    redis_server.flush()
    yield make
    for store in stores:
        await store.close()


async def processed(table: Duplicates, now: float) -> None:
    assert (await table.begin(KEY, now, "vpn")).seen is Seen.NEW
    await table.finish(KEY, b"reply", now)


async def test_another_port_or_identifier_is_a_replay_on_any_instance(
    instances: Instances,
) -> None:
    a, b = instances(), instances()
    now = time.time()
    await processed(a, now)
    assert (await b.begin(OTHER_PORT, now + 1, "vpn")).seen is Seen.REPLAYED
    # and its own retransmissions stay silent, not replayed again and again
    assert (await b.begin(OTHER_PORT, now + 2, "vpn")).seen is Seen.IN_FLIGHT


async def test_the_same_packet_after_the_duplicate_window_is_a_replay(
    instances: Instances,
) -> None:
    a, b = instances(), instances()
    now = time.time()
    await processed(a, now)
    assert (await b.begin(KEY, now + 5, "vpn")).seen is Seen.ANSWERED  # a retransmission
    assert (await b.begin(KEY, now + REPLY_TTL + 1, "vpn")).seen is Seen.REPLAYED
    assert (await a.begin(KEY, now + REPLAY_TTL + 1, "vpn")).seen is Seen.NEW  # forgotten


async def test_replays_are_judged_per_client(instances: Instances) -> None:
    a = instances()
    now = time.time()
    await processed(a, now)
    assert (await a.begin(OTHER_PORT, now + 1, "other-nas")).seen is Seen.NEW


async def test_a_shed_request_is_no_replay_when_retransmitted(instances: Instances) -> None:
    a, b = instances(), instances()
    now = time.time()
    assert (await a.begin(KEY, now, "vpn")).seen is Seen.NEW
    await a.forget(KEY, "vpn")  # shed unprocessed
    assert (await b.begin(KEY, now + 3, "vpn")).seen is Seen.NEW


async def test_a_takeover_continues_the_request_it_is_no_replay(
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    stores = [
        RedisStateStore(RedisSettings.model_validate({"url": redis_server.url})) for _ in range(2)
    ]
    a, b = (SharedDuplicates(s, REPLY_TTL, 300, lease=2.0, replay_ttl=REPLAY_TTL) for s in stores)
    try:
        now = time.time()
        assert (await a.begin(KEY, now, "vpn")).seen is Seen.NEW
        for task in a._renewals.values():
            task.cancel()  # A dies mid-request: no lease renewal, no finish
        assert (await b.begin(KEY, now + 3, "vpn")).seen is Seen.NEW  # taken over
    finally:
        for store in stores:
            await store.close()
