"""Calls into the (blocking) user store from the event loop, through a bounded pool.

Every failure of the database behind the store is an outage, never a crash: a SQLite
driver error (locked, I/O error, a missing table, a full disk) or a store error (closed,
a PostgreSQL statement refused; PostgreSQL connection trouble already arrives as
`UserStoreUnavailable`) is raised as `UserStoreUnavailable`, so the engine answers it
with `server.store_failmode` and writes its audit event.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from mfaproxy.errors import StoreError, UserStoreUnavailable
from mfaproxy.store.records import UserRepository

T = TypeVar("T")

# What a database driver raises when it cannot do what it was asked.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreError)


class AsyncUserStore:
    def __init__(self, store: UserRepository, workers: int = 4):
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="userstore")

    async def run(self, call: Callable[[UserRepository], T]) -> T:
        """Run `call(store)` in the pool; e.g. `await users.run(lambda s: s.get_user(u))`."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, call, self.store)
        except UserStoreUnavailable:
            raise
        except DRIVER_ERRORS as exc:
            raise UserStoreUnavailable(f"user store: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()
