"""What sealing the state store and guarding passwords cost per login.

    .venv/bin/python -m bench.sealing [--operations 20000]

Measures, on the memory store and on a real redis-server on loopback (started here):
a challenge session's `put` + `take` bare and sealed (store/sealed.py), and the password
guard's work for one first-round request that passes (auth/password_guard.py: the two
look-ups, the reserve, the release and the known-source mark). Printed as microseconds
per operation, wall clock, one client, sequential. Reported in bench/README.md, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mfaproxy.auth.password_guard import Attempt, PasswordGuard, source_of
from mfaproxy.config.stores import RedisSettings
from mfaproxy.config.throttle import PasswordThrottleConfig
from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult
from mfaproxy.core.second_factor import Stage
from mfaproxy.core.session import Session, primary_to_json
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.redis_throttle import RedisThrottle
from mfaproxy.store.sealed import SealedStateStore
from mfaproxy.store.state import MemoryStateStore, StateStore
from mfaproxy.store.throttle import MemoryThrottle, Throttle
from tests.support.redis_server import RedisServer

KEY = bytes(range(32))
NOW = 1_800_000_000.0


def session() -> dict[str, Any]:
    primary = PrimaryResult(PrimaryOutcome.ACCEPT, "ldap", "ok", frozenset({"vpn-users"}))
    return Session(
        user="alice",
        login_name="alice",
        client="vpn",
        nas="192.0.2.10",
        stage=Stage.CODE,
        method="totp",
        primary=primary_to_json(primary),
        login_key="alice",
    ).to_json()


async def per_operation(count: int, operation: Callable[[int], Awaitable[None]]) -> float:
    for i in range(min(200, count)):  # warm-up
        await operation(-i - 1)
    started = time.perf_counter()
    for i in range(count):
        await operation(i)
    return (time.perf_counter() - started) / count * 1e6


async def put_take(store: StateStore, count: int) -> float:
    value = session()

    async def one(i: int) -> None:
        key = f"state-{i}"
        await store.put("challenge", key, value, 120, NOW)
        await store.take("challenge", key, NOW)

    return await per_operation(count, one)


async def guarded(state: StateStore, throttle: Throttle, count: int) -> float:
    guard = PasswordGuard(PasswordThrottleConfig(), throttle, state)

    async def one(i: int) -> None:
        attempt = await guard.begin(f"user{i % 1000}", source_of("vpn", f"10.0.{i % 250}.1"), NOW)
        assert isinstance(attempt, Attempt)
        await guard.succeeded(attempt, f"user{i % 1000}", NOW)

    return await per_operation(count, one)


async def main(count: int) -> None:
    with RedisServer() as server:
        redis = RedisStateStore(RedisSettings.model_validate({"url": server.url}))
        memory = MemoryStateStore()
        rows = [
            ("memory put+take, bare", await put_take(memory, count)),
            ("memory put+take, sealed", await put_take(SealedStateStore(memory, KEY), count)),
            ("redis put+take, bare", await put_take(redis, count // 4)),
            ("redis put+take, sealed", await put_take(SealedStateStore(redis, KEY), count // 4)),
            (
                "password guard, memory",
                await guarded(SealedStateStore(MemoryStateStore(), KEY), MemoryThrottle(), count),
            ),
            (
                "password guard, redis",
                await guarded(SealedStateStore(redis, KEY), RedisThrottle(redis), count // 4),
            ),
        ]
        await redis.close()
    for name, micros in rows:
        print(f"{name:28s} {micros:9.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=20000)
    asyncio.run(main(parser.parse_args().operations))
