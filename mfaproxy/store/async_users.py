"""Calls into the (blocking) user store from the event loop, through a bounded pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from mfaproxy.store.records import UserRepository

T = TypeVar("T")


class AsyncUserStore:
    def __init__(self, store: UserRepository, workers: int = 4):
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="userstore")

    async def run(self, call: Callable[[UserRepository], T]) -> T:
        """Run `call(store)` in the pool; e.g. `await users.run(lambda s: s.get_user(u))`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, call, self.store)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()
