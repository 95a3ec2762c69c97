"""What an atomic second-factor attempt costs per code check (auth/attempts.py).

    .venv/bin/python -m bench.attempts [--checks 2000]

Measures, one client, sequential, wall clock: the store calls around one code check,
before atomic attempts (read the lockout, count the NAS's failures, and after a good
code reset the count) and now (take the user's lease, reserve one NAS event and one
attempt, then settle: reset and release on a good code, keep on a wrong one, and drop
the lease). On a SQLite user store in a temporary directory with the sealed memory
state store, on SQLite with a real redis-server, and on a real PostgreSQL with Redis
(both started here on loopback). Printed as microseconds per check. Reported in
bench/README.md, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from mfaproxy.auth.attempts import CLIENT_FAILURES, NAS_WINDOW, AttemptGate
from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.config.stores import RedisSettings
from mfaproxy.core.factor_result import FactorResult
from mfaproxy.core.second_factor import Step
from mfaproxy.factors.base import FactorServices
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.postgres_users import PostgresUserStore
from mfaproxy.store.records import UserRepository
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.sealed import SealedStateStore
from mfaproxy.store.state import MemoryStateStore, StateStore
from mfaproxy.store.users import UserStore
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer

KEY = bytes(range(32))
NOW = 1_800_000_000.0
CONFIG = MultifactorConfig()
GOOD, WRONG = FactorResult.accept("code_ok"), FactorResult.reject("bad_code")


async def per_check(count: int, check: Callable[[int], Awaitable[None]]) -> float:
    for i in range(min(100, count)):  # warm-up
        await check(-i - 1)
    started = time.perf_counter()
    for i in range(count):
        await check(i)
    return (time.perf_counter() - started) / count * 1e6


async def measure(name: str, users: UserRepository, state: StateStore, count: int) -> None:
    services = FactorServices(AsyncUserStore(users), SealedStateStore(state, KEY), None, None, KEY)
    gate = AttemptGate(CONFIG, services)
    runs = itertools.count()

    async def before(i: int) -> None:
        user = f"before{i}"
        await services.users.run(lambda s: s.lock_state(user, NOW))
        await services.state.count(CLIENT_FAILURES, "vpn", NOW, NAS_WINDOW)
        await services.users.run(lambda s: s.reset_failures(user))

    async def attempt(i: int, result: FactorResult) -> None:
        run = next(runs)
        user, now = f"{result.reason}{run}", NOW + run * NAS_WINDOW  # a fresh NAS window
        opened = await gate.open(user, "vpn", now)
        assert not isinstance(opened, Step), opened
        await gate.settle(opened, result, now)
        await gate.close(opened)

    old = await per_check(count, before)
    good = await per_check(count, lambda i: attempt(i, GOOD))
    wrong = await per_check(count, lambda i: attempt(i, WRONG))
    print(
        f"{name:<22} before {old:8.0f} us   now: good code {good:8.0f} us"
        f"   wrong code {wrong:8.0f} us   ({count} checks each)"
    )
    await services.state.close()
    await services.users.close()


@contextlib.contextmanager
def sqlite_store() -> Iterator[UserRepository]:
    with tempfile.TemporaryDirectory() as tmp:
        store = UserStore(Path(tmp) / "users.sqlite3", KEY)
        yield store


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[tuple[RedisServer, PostgresServer]]:
    with RedisServer() as redis, PostgresServer() as postgres:
        yield redis, postgres


async def main(count: int) -> None:
    with sqlite_store() as users:
        await measure("sqlite + memory", users, MemoryStateStore(), count)
    async with servers() as (redis, postgres):
        settings = RedisSettings.model_validate({"url": redis.url})
        with sqlite_store() as users:
            await measure("sqlite + redis", users, RedisStateStore(settings), count)
        redis.flush()
        pg = PostgresUserStore(postgres.dsn, KEY)
        await measure("postgres + redis", pg, RedisStateStore(settings), count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=2000)
    asyncio.run(main(parser.parse_args().checks))
