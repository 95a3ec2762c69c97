"""The RFC 5080 duplicate table behind its store: in process, or shared through a state
store (memory, and a real redis-server standing for a cluster). One contract for all:
new, in flight, answered from the cache, forgotten; namespaces do not see each other."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from mfaproxy.config.stores import RedisSettings
from mfaproxy.radius.duplicates import DuplicateTable, Seen
from mfaproxy.store.duplicates import Duplicates, LocalDuplicates, SharedDuplicates
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.state import MemoryStateStore, StateStore
from tests.support.redis_server import RedisServer

NOW = 1_700_000_000.0
KEY = ("192.0.2.1", 40000, 7, b"\x01" * 16)
Factory = Callable[[str], Duplicates]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["local", "shared-memory", "shared-redis"])
async def make(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Factory]:
    stores: list[StateStore] = []
    local = DuplicateTable(reply_ttl=30, in_flight_ttl=300)
    memory = MemoryStateStore()

    def factory(namespace: str) -> Duplicates:
        if request.param == "local":
            return LocalDuplicates(local if namespace == "duplicates" else DuplicateTable(30, 300))
        if request.param == "shared-memory":
            return SharedDuplicates(memory, 30, 300, namespace=namespace)
        store = RedisStateStore(RedisSettings.model_validate({"url": redis_server.url}))
        stores.append(store)
        return SharedDuplicates(store, 30, 300, namespace=namespace)

    if request.param == "shared-redis":
        redis_server.flush()
    yield factory
    for store in [memory, *stores]:
        await store.close()


async def test_new_then_in_flight_then_answered_from_the_cache(make: Factory) -> None:
    table = make("duplicates")
    assert (await table.begin(KEY, NOW)).seen is Seen.NEW
    assert (await table.begin(KEY, NOW + 1)).seen is Seen.IN_FLIGHT
    await table.finish(KEY, b"reply", NOW + 2)
    lookup = await table.begin(KEY, NOW + 3)
    assert lookup.seen is Seen.ANSWERED and lookup.reply == b"reply"


async def test_a_forgotten_request_is_new_again(make: Factory) -> None:
    """An accounting record no upstream took: the NAS's next copy is processed afresh."""
    table = make("duplicates")
    assert (await table.begin(KEY, NOW)).seen is Seen.NEW
    await table.forget(KEY)
    assert (await table.begin(KEY, NOW + 1)).seen is Seen.NEW
    await table.forget(("192.0.2.9", 1, 1, bytes(16)))  # forgetting the unknown is a no-op


async def test_namespaces_are_separate(make: Factory) -> None:
    auth, accounting = make("duplicates"), make("accounting_duplicates")
    assert (await auth.begin(KEY, NOW)).seen is Seen.NEW
    assert (await accounting.begin(KEY, NOW)).seen is Seen.NEW
    await accounting.finish(KEY, b"acct", NOW)
    assert (await auth.begin(KEY, NOW + 1)).seen is Seen.IN_FLIGHT
