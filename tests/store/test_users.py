"""The SQLite user store: durability, migrations, atomic single-use operations."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mfaproxy.factors.backup_codes import generate_codes
from mfaproxy.factors.totp import new_secret
from mfaproxy.store import users as users_module
from mfaproxy.store.crypto import DecryptionError
from mfaproxy.store.records import LockState, StoreError, UserRepository, normalise_user
from mfaproxy.store.users import MIGRATIONS, UserStore

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


def test_satisfies_the_repository_protocol(store: UserStore) -> None:
    repository: UserRepository = store
    assert repository.get_user("nobody") is None


def test_database_file_is_private_and_durable(store: UserStore, db_path: Path) -> None:
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_schema_version_is_recorded_and_kept(store: UserStore) -> None:
    assert store.schema_version() == len(MIGRATIONS) >= 1
    again = reopen(store)
    try:
        assert again.schema_version() == len(MIGRATIONS)
        rows = again._conn().execute("SELECT count(*) FROM schema_version").fetchone()[0]
        assert rows == 1
    finally:
        again.close()


def test_migrations_are_idempotent(db_path: Path) -> None:
    for _ in range(3):
        store = UserStore(db_path, KEY)
        store.set_method("alice", "totp", T0)
        assert store.schema_version() == len(MIGRATIONS)
        store.close()
    store = UserStore(db_path, KEY)
    assert store.list_users() == ["alice"]
    store.close()


def test_new_migration_is_applied_once(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    UserStore(db_path, KEY).close()
    v2 = "CREATE TABLE notes (user TEXT, note TEXT);"
    monkeypatch.setattr(users_module, "MIGRATIONS", (*MIGRATIONS, v2))
    for _ in range(2):
        store = UserStore(db_path, KEY)
        assert store.schema_version() == len(MIGRATIONS) + 1
        store.close()


def test_failing_migration_leaves_nothing_behind(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    UserStore(db_path, KEY).close()
    broken = "CREATE TABLE extra (x INTEGER); CREATE TABLE broken (;"
    monkeypatch.setattr(users_module, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StoreError, match=f"migration {len(MIGRATIONS) + 1} failed"):
        UserStore(db_path, KEY)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS)
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "extra" not in tables
    finally:
        conn.close()


def test_schema_from_a_newer_version_is_refused(db_path: Path) -> None:
    UserStore(db_path, KEY).close()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        UserStore(db_path, KEY)


def test_closed_store_refuses_use(store: UserStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_users()


def test_reopen_preserves_everything(store: UserStore) -> None:
    secret = new_secret()
    codes = generate_codes(3)
    store.set_method("Alice", "totp", T0, configure_later=True)
    store.set_totp_secret("alice", secret, T0)
    assert store.accept_totp_step("alice", 100)
    store.set_enrolment("alice", "email", {"address": "alice@example.com"}, T0)
    store.replace_backup_codes("alice", codes, T0)
    assert store.consume_backup_code("alice", codes[0], T0 + 1)
    store.request_reset("alice", "radius", T0 + 2)
    store.record_failure("alice", T0 + 3, max_failures=5, lockout_seconds=60)

    again = reopen(store)
    try:
        record = again.get_user("alice")
        assert record is not None
        assert record.method == "totp"
        assert record.configure_later
        assert record.enrolled == frozenset({"totp", "email"})
        assert record.totp_last_step == 100
        assert record.backup_codes_remaining == 2
        assert record.failures == 1
        assert record.last_reset is not None and record.last_reset.status == "pending"
        assert (record.created_at, record.updated_at) == (T0, T0)
        assert again.get_totp_secret("alice") == secret
        assert again.get_enrolment("alice", "email") == {"address": "alice@example.com"}
        assert not again.accept_totp_step("alice", 100)
        assert not again.consume_backup_code("alice", codes[0], T0 + 4)
    finally:
        again.close()


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


def test_user_names_are_normalised(store: UserStore) -> None:
    store.set_method("  ALICE ", "email", T0)
    assert store.list_users() == ["alice"]
    record = store.get_user("Alice")
    assert record is not None and record.name == "alice"
    assert normalise_user(" Bob\t") == "bob"
    with pytest.raises(ValueError, match="empty"):
        normalise_user("   ")


def test_method_is_validated(store: UserStore) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        store.set_method("alice", "fax", T0)  # type: ignore[arg-type]
    store.set_method("alice", None, T0 + 5)
    record = store.get_user("alice")
    assert record is not None
    assert (record.method, record.configure_later, record.updated_at) == (None, False, T0 + 5)


def test_delete_user_removes_everything(store: UserStore) -> None:
    store.set_enrolment("alice", "email", {"address": "a@example.com"}, T0)
    store.replace_backup_codes("alice", generate_codes(2), T0)
    store.request_reset("alice", "cli", T0)
    assert store.delete_user("alice")
    assert not store.delete_user("alice")
    assert store.get_user("alice") is None
    assert store.get_enrolment("alice", "email") is None
    assert store.list_resets(None) == []


# ----------------------------------------------------------------- TOTP


def test_totp_step_is_compare_and_set(store: UserStore) -> None:
    assert not store.accept_totp_step("alice", 10)  # no such user
    store.set_method("alice", "totp", T0)
    assert not store.accept_totp_step("alice", 10)  # no secret yet
    store.set_totp_secret("alice", new_secret(), T0)
    assert store.accept_totp_step("alice", 10)
    assert not store.accept_totp_step("alice", 10)  # the same step: a replay
    assert not store.accept_totp_step("alice", 9)  # an earlier step
    assert store.accept_totp_step("alice", 11)


def test_new_totp_secret_restarts_replay_marker(store: UserStore) -> None:
    store.set_totp_secret("alice", new_secret(), T0)
    assert store.accept_totp_step("alice", 50)
    store.set_totp_secret("alice", new_secret(), T0)
    record = store.get_user("alice")
    assert record is not None and record.totp_last_step is None
    assert store.accept_totp_step("alice", 40)


def test_concurrent_use_of_one_totp_step_has_one_winner(store: UserStore) -> None:
    store.set_totp_secret("alice", new_secret(), T0)
    results = race(8, lambda: store.accept_totp_step("alice", 77))
    assert results.count(True) == 1


def test_totp_secret_moved_to_another_user_does_not_decrypt(store: UserStore) -> None:
    store.set_totp_secret("alice", new_secret(), T0)
    store.set_totp_secret("bob", new_secret(), T0)
    conn = store._conn()
    conn.execute(
        "UPDATE users SET totp_secret = (SELECT totp_secret FROM users WHERE name = 'alice')"
        " WHERE name = 'bob'"
    )
    with pytest.raises(DecryptionError):
        store.get_totp_secret("bob")


def test_clear_totp_enrolment(store: UserStore) -> None:
    assert not store.clear_enrolment("alice", "totp", T0)
    store.set_totp_secret("alice", new_secret(), T0)
    assert store.clear_enrolment("alice", "totp", T0)
    assert store.get_totp_secret("alice") is None


# ----------------------------------------------------------------- enrolments


def test_enrolment_round_trip_and_replace(store: UserStore) -> None:
    assert store.get_enrolment("alice", "yubikey") is None
    store.set_enrolment("alice", "yubikey", {"public_id": "cccccc", "aes_key": "00" * 16}, T0)
    store.set_enrolment("alice", "yubikey", {"public_id": "dddddd", "aes_key": "11" * 16}, T0)
    assert store.get_enrolment("alice", "yubikey") == {"public_id": "dddddd", "aes_key": "11" * 16}
    record = store.get_user("alice")
    assert record is not None and record.enrolled == frozenset({"yubikey"})
    assert store.clear_enrolment("alice", "yubikey", T0)
    assert not store.clear_enrolment("alice", "yubikey", T0)


def test_totp_is_not_generic_enrolment_data(store: UserStore) -> None:
    with pytest.raises(ValueError, match="set_totp_secret"):
        store.set_enrolment("alice", "totp", {"secret": "x"}, T0)


def test_enrolment_blob_moved_to_another_method_does_not_decrypt(store: UserStore) -> None:
    store.set_enrolment("alice", "email", {"address": "a@example.com"}, T0)
    store._conn().execute("UPDATE enrolments SET method = 'sms' WHERE user = 'alice'")
    with pytest.raises(DecryptionError):
        store.get_enrolment("alice", "sms")


# ----------------------------------------------------------------- backup codes


def test_backup_code_is_single_use(store: UserStore) -> None:
    codes = generate_codes()
    store.replace_backup_codes("alice", codes, T0)
    typed = codes[3].upper().replace("-", " ")
    assert store.consume_backup_code("alice", typed, T0 + 1)
    assert not store.consume_backup_code("alice", codes[3], T0 + 2)
    assert not store.consume_backup_code("bob", codes[4], T0 + 2)  # another user's code
    assert not store.consume_backup_code("alice", "123456", T0 + 2)  # not a code at all
    record = store.get_user("alice")
    assert record is not None and record.backup_codes_remaining == 9


def test_new_backup_codes_void_the_old_set(store: UserStore) -> None:
    old, new = generate_codes(2), generate_codes(2)
    store.replace_backup_codes("alice", old, T0)
    store.replace_backup_codes("alice", new, T0 + 1)
    assert not store.consume_backup_code("alice", old[0], T0 + 2)
    assert store.consume_backup_code("alice", new[0], T0 + 2)


def test_invalid_backup_code_is_not_stored(store: UserStore) -> None:
    with pytest.raises(ValueError, match="not a backup code"):
        store.replace_backup_codes("alice", ["123456"], T0)
    assert store.get_user("alice") is None


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


def test_reset_request_lifecycle_approved(store: UserStore) -> None:
    store.set_method("alice", "totp", T0)
    store.set_totp_secret("alice", new_secret(), T0)
    store.set_enrolment("alice", "email", {"address": "a@example.com"}, T0)
    store.replace_backup_codes("alice", generate_codes(3), T0)

    assert store.request_reset("alice", "radius", T0 + 10)
    assert not store.request_reset("Alice", "cli", T0 + 11)  # already pending: no new mail
    [pending] = store.list_resets()
    assert (pending.user, pending.via, pending.status) == ("alice", "radius", "pending")
    assert (pending.requested_at, pending.decided_at) == (T0 + 10, None)

    assert store.approve_reset("alice", T0 + 20)
    assert not store.approve_reset("alice", T0 + 21)
    assert store.list_resets() == []
    [done] = store.list_resets("approved")
    assert (done.id, done.decided_at) == (pending.id, T0 + 20)

    record = store.get_user("alice")
    assert record is not None
    assert record.method is None
    assert record.enrolled == frozenset()
    assert record.backup_codes_remaining == 0
    assert record.last_reset == done
    assert store.get_totp_secret("alice") is None

    assert store.request_reset("alice", "radius", T0 + 30)  # a later request is new
    assert len(store.list_resets(None)) == 2


def test_reset_request_cleared_keeps_mfa(store: UserStore) -> None:
    store.set_method("bob", "email", T0)
    store.set_enrolment("bob", "email", {"address": "b@example.com"}, T0)
    assert not store.clear_reset("bob", T0)  # nothing pending
    assert store.request_reset("bob", "radius", T0)
    assert store.clear_reset("bob", T0 + 1)
    [cleared] = store.list_resets("cleared")
    assert cleared.decided_at == T0 + 1
    record = store.get_user("bob")
    assert record is not None and record.method == "email"
    assert store.get_enrolment("bob", "email") == {"address": "b@example.com"}


def test_clear_mfa(store: UserStore) -> None:
    assert not store.clear_mfa("nobody", T0)
    store.set_method("carol", "sms", T0)
    store.set_enrolment("carol", "sms", {"phone": "+15550000000"}, T0)
    assert store.clear_mfa("carol", T0 + 1)
    record = store.get_user("carol")
    assert record is not None and (record.method, record.enrolled) == (None, frozenset())


# ----------------------------------------------------------------- lockout


def test_failures_lock_then_expire_in_virtual_time(store: UserStore) -> None:
    def fail(at: float) -> LockState:
        return store.record_failure("alice", at, max_failures=3, lockout_seconds=300)

    assert fail(T0) == LockState(1, None, False)
    assert fail(T0 + 1) == LockState(2, None, False)
    assert fail(T0 + 2) == LockState(3, T0 + 302, True)
    assert store.lock_state("alice", T0 + 301.999) == LockState(3, T0 + 302, True)
    # failing during the lockout counts but does not extend it
    assert fail(T0 + 100) == LockState(4, T0 + 302, True)
    assert store.lock_state("alice", T0 + 302) == LockState(0, None, False)
    # after expiry the count starts again
    assert fail(T0 + 400) == LockState(1, None, False)


def test_reset_failures_unlocks(store: UserStore) -> None:
    assert store.lock_state("nobody", T0) == LockState(0, None, False)
    store.record_failure("alice", T0, max_failures=1, lockout_seconds=60)
    assert store.lock_state("alice", T0).locked
    store.reset_failures("alice")
    assert store.lock_state("alice", T0) == LockState(0, None, False)


def test_lockout_survives_a_restart(store: UserStore) -> None:
    store.record_failure("alice", T0, max_failures=1, lockout_seconds=60)
    again = reopen(store)
    try:
        assert again.lock_state("alice", T0 + 30) == LockState(1, T0 + 60, True)
    finally:
        again.close()


def test_concurrent_failures_are_all_counted(store: UserStore) -> None:
    def fail() -> bool:
        return store.record_failure("alice", T0, max_failures=100, lockout_seconds=60).locked

    race(10, fail)
    assert store.lock_state("alice", T0).failures == 10


def test_failure_arguments_are_checked(store: UserStore) -> None:
    with pytest.raises(ValueError):
        store.record_failure("alice", T0, max_failures=0, lockout_seconds=60)
