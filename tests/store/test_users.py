"""The SQLite user store: durability, migrations, atomic single-use operations."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mfaproxy.otp.backup_codes import generate_codes
from mfaproxy.otp.totp import new_secret
from mfaproxy.store.users import UserStore

REPO = Path(__file__).resolve().parents[2]

KEY = bytes(range(32))
T0 = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "users.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[UserStore]:
    store = UserStore(db_path, KEY)
    yield store
    store.close()


def reopen(store: UserStore) -> UserStore:
    store.close()
    return UserStore(store.path, KEY)


def race(workers: int, action: Callable[[], bool]) -> list[bool]:
    """Run `action` in `workers` threads released together by a barrier."""
    barrier = threading.Barrier(workers)

    def run() -> bool:
        barrier.wait()
        return action()

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run) for _ in range(workers)]
        return [f.result() for f in futures]


# ----------------------------------------------------------------- file, schema


def test_database_file_is_private_and_durable(store: UserStore, db_path: Path) -> None:
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    conn = store._db.conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_secrets_never_reach_the_file_in_plaintext(store: UserStore, db_path: Path) -> None:
    secret = new_secret()
    codes = generate_codes(4)
    store.set_totp_secret("alice", secret, T0)
    store.set_enrolment("alice", "sms", {"phone": "+15551234567"}, T0)
    store.set_enrolment("alice", "yubikey", {"public_id": "cccccckdvvul", "aes_key": "9f" * 16}, T0)
    store.replace_backup_codes("alice", codes, T0)
    needles = [secret, "+15551234567", "cccccckdvvul", "9f" * 16]
    needles += codes + [code.replace("-", "") for code in codes]

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))

    def check(content: bytes) -> None:
        assert b"alice" in content  # the search does see the data
        for needle in needles:
            assert needle.encode() not in content, needle

    check(files())  # while open: recent pages are in the -wal file
    store.close()
    check(files())  # after the checkpoint at close: all in the main file


# ----------------------------------------------------------------- users


def test_method_is_validated(store: UserStore) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        store.set_method("alice", "fax", T0)  # type: ignore[arg-type]
    store.set_method("alice", None, T0 + 5)
    record = store.get_user("alice")
    assert record is not None
    assert (record.method, record.configure_later, record.updated_at) == (None, False, T0 + 5)


# ----------------------------------------------------------------- TOTP


def test_concurrent_use_of_one_totp_step_has_one_winner(store: UserStore) -> None:
    store.set_totp_secret("alice", new_secret(), T0)
    results = race(8, lambda: store.accept_totp_step("alice", 77))
    assert results.count(True) == 1


# ----------------------------------------------------------------- enrolments


# ----------------------------------------------------------------- backup codes


def test_racing_threads_consume_a_code_once(store: UserStore) -> None:
    codes = generate_codes(2)
    store.replace_backup_codes("alice", codes, T0)
    results = race(8, lambda: store.consume_backup_code("alice", codes[0], T0))
    assert results.count(True) == 1
    record = store.get_user("alice")
    assert record is not None and record.backup_codes_remaining == 1


def test_two_stores_on_one_file_consume_a_code_once(store: UserStore) -> None:
    # a second UserStore stands for the CLI process using the same file
    codes = generate_codes(1)
    store.replace_backup_codes("alice", codes, T0)
    other = UserStore(store.path, KEY)
    try:
        stores = iter([store, other] * 4)
        lock = threading.Lock()

        def consume() -> bool:
            with lock:
                mine = next(stores)
            return mine.consume_backup_code("alice", codes[0], T0)

        assert race(8, consume).count(True) == 1
    finally:
        other.close()


# ----------------------------------------------------------------- resets


# ----------------------------------------------------------------- lockout


def test_unsynced_marks_survive_a_crash_of_the_process(tmp_path: Path) -> None:
    # The used TOTP step and a failure reset are written without fsync; a process that
    # dies right after (no close, no checkpoint) still leaves them in the WAL file.
    path = tmp_path / "users.sqlite3"
    key = bytes(range(32))
    setup = UserStore(path, key)
    setup.set_totp_secret("alice", "JBSWY3DPEHPK3PXP", 1.0)
    setup.record_failure("alice", 1.0, 5, 60)
    setup.close()
    script = (
        "import os, sys; from mfaproxy.store.users import UserStore\n"
        "s = UserStore(sys.argv[1], bytes(range(32)))\n"
        "assert s.accept_totp_step('alice', 1000)\n"
        "s.reset_failures('alice')\n"
        "os._exit(0)  # no close: as if the daemon were killed\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=REPO)
    after = UserStore(path, key)
    try:
        assert not after.accept_totp_step("alice", 1000)  # the replay is refused
        record = after.get_user("alice")
        assert record is not None and record.totp_last_step == 1000 and record.failures == 0
        # Other writes are synced as before.
        synchronous = after._db.conn().execute("PRAGMA synchronous").fetchone()[0]
        assert synchronous == 2  # FULL
    finally:
        after.close()
