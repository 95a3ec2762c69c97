"""Calls into the (blocking) user store from the event loop, through a bounded pool.

Every failure of the database behind the store is an outage, never a crash: a SQLite
driver error (locked, I/O error, a missing table, a full disk) or a store error (closed,
a PostgreSQL statement refused; PostgreSQL connection trouble already arrives as
`UserStoreUnavailable`) is raised as `UserStoreUnavailable`, so the engine answers it
with `server.store_failmode` and writes its audit event.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

from mfaproxy.admission.pool import BoundedPool
from mfaproxy.errors import StoreError, UserStoreUnavailable
from mfaproxy.store.records import UserRecord, UserRepository

T = TypeVar("T")

# What a database driver raises when it cannot do what it was asked.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreError)


# Records kept by the read cache at most (it is emptied when full).
CACHE_ENTRIES = 10_000
# How often the cache asks the database whether another process (the CLI, another
# worker) wrote to it. Asking is one SQLite call on the event loop's thread, and such a
# call hands the GIL to whichever pool thread wants it (the loop then waits for it
# back): doing it per request cost more than the thread hop it saves.
EXTERNAL_CHECK_SECONDS = 0.1


@runtime_checkable
class ChangeCounter(Protocol):
    """A store that can say cheaply whether anything changed (SQLite data_version)."""

    def change_counter(self) -> int: ...


class AsyncUserStore:
    def __init__(self, store: UserRepository, threads: int = 4, queue: int = 1024):
        self.store = store
        # Bounded and fair (admission/pool.py). Calls are short and may come after a
        # State was taken, so they are never shed for their age, only when it is full.
        self._pool = BoundedPool("user_store", threads, queue, shed_on_deadline=False)
        # User records read, reused while nothing was written: every call through
        # `run` (which may write) empties the cache at once; a write by another process
        # is noticed within EXTERNAL_CHECK_SECONDS. PostgreSQL offers no cheap change
        # signal: no cache there.
        self._counter = store.change_counter if isinstance(store, ChangeCounter) else None
        self._cache: dict[str, UserRecord | None] = {}
        self._writes = 0  # calls through `run` started or finished
        self._external: int | None = None
        self._checked_at = -EXTERNAL_CHECK_SECONDS

    def _check_external(self) -> None:
        assert self._counter is not None
        now = time.monotonic()
        if now - self._checked_at < EXTERNAL_CHECK_SECONDS:
            return
        try:
            external = self._counter()
        except DRIVER_ERRORS as exc:
            raise UserStoreUnavailable(f"user store: {type(exc).__name__}: {exc}") from exc
        self._checked_at = now
        if external != self._external:
            self._cache.clear()
            self._external = external

    async def get_user(self, name: str) -> UserRecord | None:
        """`store.get_user(name)`, from the cache when nothing was written since it was
        read (no thread hop). What the record says is never the last word on a check
        (lockout, a TOTP step, a backup code are each decided by the store itself), so a
        change by another process may be seen up to EXTERNAL_CHECK_SECONDS late."""
        if self._counter is None:
            return await self._call(lambda s: s.get_user(name))
        self._check_external()
        if name in self._cache:
            return self._cache[name]
        writes, external = self._writes, self._external
        record = await self._call(lambda s: s.get_user(name))
        # Not kept when a write began or ended meanwhile (it may be missing from it).
        if self._writes == writes and self._external == external:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[name] = record
        return record

    async def run(self, call: Callable[[UserRepository], T]) -> T:
        """Run `call(store)` in the pool; e.g. `await users.run(lambda s: s.get_user(u))`.
        Any call may write: the record cache is emptied before and after it."""
        self._writes += 1
        self._cache.clear()
        try:
            return await self._call(call)
        finally:
            self._writes += 1
            self._cache.clear()

    async def _call(self, call: Callable[[UserRepository], T]) -> T:
        try:
            return await self._pool.run(call, self.store)
        except UserStoreUnavailable:
            raise
        except DRIVER_ERRORS as exc:
            raise UserStoreUnavailable(f"user store: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._pool.close(wait=True)
        self.store.close()
