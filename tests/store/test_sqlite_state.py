"""The SQLite state store across real processes: what `server.workers` relies on.

Each worker is a separate process with its own connection to one file; these tests
start real processes (multiprocessing, spawn) that race for the same challenge and the
same rate limit, and check that exactly one wins / exactly the limit is admitted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mfaproxy.errors import StateStoreUnavailable
from mfaproxy.store import sqlite_state
from mfaproxy.store.sqlite_state import SqliteStateStore

NOW = 1_700_000_000.0
PROCESSES = 4
KEYS = 40


def _race(path: str, barrier: Any, results: Any, index: int) -> None:
    async def run() -> None:
        store = SqliteStateStore(path)
        barrier.wait()
        won = [key for key in range(KEYS) if await store.take("challenge", str(key), NOW)]
        admitted = 0
        for _ in range(30):
            admitted += await store.rate_limit(
                "client_failures", "vpn", NOW, max_events=37, window=60
            )
        await store.close()
        results.put((index, won, admitted))

    asyncio.run(run())


async def test_processes_racing_take_once_and_admit_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "shared-state.sqlite3"
    setup = SqliteStateStore(path)
    for key in range(KEYS):
        await setup.put("challenge", str(key), {"key": key}, ttl=60, now=NOW)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    workers = [
        context.Process(target=_race, args=(str(path), barrier, results, i))
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    found = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    taken = sorted(key for _, won, _ in found for key in won)
    assert taken == list(range(KEYS))  # every session taken, none twice
    assert sum(admitted for *_, admitted in found) == 37
    assert await setup.size("challenge", NOW) == 0
    await setup.close()


async def test_a_held_lock_becomes_unavailable_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_state, "LOCK_WAIT_SECONDS", 0.05)
    path = tmp_path / "shared-state.sqlite3"
    store = SqliteStateStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker stuck inside a transaction
    try:
        with pytest.raises(StateStoreUnavailable, match="locked"):
            await store.put("challenge", "s", {"a": 1}, ttl=60, now=NOW)
        # Reads are not blocked by a writer in WAL mode.
        assert await store.get("challenge", "s", NOW) is None
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.put("challenge", "s", {"a": 1}, ttl=60, now=NOW)
    assert await store.take("challenge", "s", NOW) == {"a": 1}
    await store.close()


@pytest.mark.parametrize("stored", ["[1, 2]", "not json", "null", '"text"'])
async def test_a_tampered_value_is_unavailable_not_trusted(tmp_path: Path, stored: str) -> None:
    path = tmp_path / "shared-state.sqlite3"
    store = SqliteStateStore(path)
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO state_values VALUES ('challenge', 's', ?, ?)", (NOW + 60, stored))
    with pytest.raises(StateStoreUnavailable):
        await store.get("challenge", "s", NOW)
    with pytest.raises(StateStoreUnavailable):
        await store.take("challenge", "s", NOW)
    await store.close()


async def test_file_is_private_and_expired_rows_are_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_state, "PRUNE_EVERY", 4)
    path = tmp_path / "private" / "shared-state.sqlite3"
    store = SqliteStateStore(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    for i in range(4):
        await store.put("challenge", str(i), {"i": i}, ttl=1, now=NOW)
    await store.put("challenge", "late", {"i": 9}, ttl=60, now=NOW + 10)  # 5th write
    await store.put("challenge", "late2", {"i": 9}, ttl=60, now=NOW + 10)
    await store.put("challenge", "late3", {"i": 9}, ttl=60, now=NOW + 10)
    await store.put("challenge", "late4", {"i": 9}, ttl=60, now=NOW + 10)  # sweeps
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT count(*) FROM state_values").fetchone()[0]
    assert rows == 4
    await store.close()
