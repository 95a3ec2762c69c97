"""The user-record cache of AsyncUserStore on SQLite: reads without a thread hop while
nothing changed, and never a stale record after any write, wherever it came from (the
daemon's own threads, the CLI in another process, another worker)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from mfaproxy.store import async_users
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.records import UserRecord
from mfaproxy.store.users import UserStore

KEY = bytes(range(32))
REPO = Path(__file__).resolve().parents[2]


class CountingStore(UserStore):
    """The real SQLite store, counting the reads that reached the database."""

    reads = 0

    def get_user(self, user: str) -> UserRecord | None:
        self.reads += 1
        return super().get_user(user)


async def test_reads_are_served_from_the_cache_while_nothing_changes(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "users.sqlite3", KEY)
    store.set_method("alice", "totp", 1.0)
    users = AsyncUserStore(store)
    try:
        first = [await users.get_user("alice") for _ in range(5)]
        absent = [await users.get_user("nobody") for _ in range(3)]
    finally:
        await users.close()
    assert all(r is not None and r.method == "totp" for r in first)
    assert absent == [None, None, None]
    assert store.reads == 2  # one per name


async def test_a_write_through_the_daemon_is_seen_at_once(tmp_path: Path) -> None:
    users = AsyncUserStore(UserStore(tmp_path / "users.sqlite3", KEY))
    try:
        assert await users.get_user("alice") is None
        await users.run(lambda s: s.set_method("alice", "totp", 1.0))
        record = await users.get_user("alice")
        assert record is not None and record.method == "totp"
        state = await users.run(lambda s: s.record_failure("alice", 2.0, 5, 60))
        assert state.failures == 1
        record = await users.get_user("alice")
        assert record is not None and record.failures == 1
    finally:
        await users.close()


async def test_an_operators_change_from_another_process_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Asked on every read here; the daemon asks at most every 0.1 s.
    monkeypatch.setattr(async_users, "EXTERNAL_CHECK_SECONDS", 0.0)
    path = tmp_path / "users.sqlite3"
    users = AsyncUserStore(UserStore(path, KEY))
    try:
        await users.run(lambda s: s.set_method("alice", "totp", 1.0))
        cached = await users.get_user("alice")
        assert cached is not None and cached.method == "totp"
        # The CLI is another process with its own connection to the file.
        script = (
            "import sys; from mfaproxy.store.users import UserStore; "
            "s = UserStore(sys.argv[1], bytes(range(32))); s.delete_user('alice'); s.close()"
        )
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=REPO)
        assert await users.get_user("alice") is None
    finally:
        await users.close()


async def test_reads_racing_writes_never_go_back_in_time(tmp_path: Path) -> None:
    users = AsyncUserStore(UserStore(tmp_path / "users.sqlite3", KEY))
    try:
        await users.run(lambda s: s.set_method("alice", "totp", 0.0))
        for count in range(1, 21):
            reads = [users.get_user("alice") for _ in range(4)]
            write = users.run(lambda s: s.record_failure("alice", 1.0, 100, 60))
            await asyncio.gather(*reads, write)
            # Once a write has returned, no read may show the state before it.
            after = await users.get_user("alice")
            assert after is not None and after.failures == count
    finally:
        await users.close()
