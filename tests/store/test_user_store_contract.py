"""One contract for every `UserRepository`: SQLite `UserStore` and `PostgresUserStore`.

Each contract test runs against both stores through a `Backend`: the SQLite one is a file
in `tmp_path`; the PostgreSQL one is a fresh schema (picked by ``search_path`` in the DSN)
on one real server started for this module. `Backend.open()` returns a new store object
on the same data each time: a restarted daemon, or a second daemon of a cluster (for
SQLite, the CLI process next to the daemon). Racing tests release threads together with
a barrier; for PostgreSQL the racers are spread over two store objects as well. Time is
virtual: every `now` is passed in.

PostgreSQL-only tests at the end: server unreachable, server restarted under a live
store object, a statement blocked past its timeout, a read-only server.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from mfaproxy.errors import DecryptionError, StoreError, UserStoreUnavailable
from mfaproxy.observability import metrics
from mfaproxy.otp.backup_codes import generate_codes
from mfaproxy.otp.totp import TotpSettings, new_secret
from mfaproxy.store import postgres_users, users
from mfaproxy.store.postgres_users import PostgresUserStore
from mfaproxy.store.records import LockState, Reservation, UserRepository
from mfaproxy.store.users import UserStore
from tests.support.ports import free_port
from tests.support.postgres_server import PostgresServer

KEY = bytes(range(32))
T0 = 1_700_000_000.0


class VersionedStore(UserRepository, Protocol):
    def schema_version(self) -> int: ...


class Backend:
    """One store's data, and raw access to it that bypasses the store."""

    name: str
    module: ModuleType  # where the store reads MIGRATIONS from

    def __init__(self) -> None:
        self._opened: list[VersionedStore] = []

    def open(self) -> VersionedStore:
        store = self._open()
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()

    def _open(self) -> VersionedStore:
        raise NotImplementedError

    def execute(self, statement: str) -> None:
        raise NotImplementedError

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def tables(self) -> set[str]:
        raise NotImplementedError

    def schema_text(self) -> str:
        """The table definitions and constraints, as the database reports them."""
        raise NotImplementedError

    def raw_data(self) -> bytes:
        """Everything the database holds for the store, as stored (no decryption)."""
        raise NotImplementedError

    def fail_on(self, operation: str, table: str) -> None:
        """Make every `operation` (INSERT, DELETE...) on `table` fail, as a crash would."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"
    module = users

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _open(self) -> VersionedStore:
        return UserStore(self.path, KEY)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def execute(self, statement: str) -> None:
        conn = self._connect()
        try:
            conn.execute(statement)
        finally:
            conn.close()

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        conn = self._connect()
        try:
            return conn.execute(statement).fetchall()
        finally:
            conn.close()

    def tables(self) -> set[str]:
        return {name for (name,) in self.query("SELECT name FROM sqlite_master")}

    def schema_text(self) -> str:
        return "\n".join(str(s) for (s,) in self.query("SELECT sql FROM sqlite_master"))

    def fail_on(self, operation: str, table: str) -> None:
        self.execute(
            f"CREATE TRIGGER fail_{operation}_{table} BEFORE {operation} ON {table}"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )

    def raw_data(self) -> bytes:
        # the file and its WAL: recent pages live in the -wal file until a checkpoint
        return b"".join(p.read_bytes() for p in self.path.parent.glob(self.path.name + "*"))


class PostgresBackend(Backend):
    name = "postgres"
    module = postgres_users
    _numbers = itertools.count(1)

    def __init__(self, server: PostgresServer) -> None:
        super().__init__()
        self.server = server
        self.schema = f"contract_{next(self._numbers)}"
        with server.connect() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self.dsn = make_conninfo(server.dsn, options=f"-c search_path={self.schema}")

    def _open(self) -> VersionedStore:
        return PostgresUserStore(self.dsn, KEY)

    def connect(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(self.dsn, autocommit=True)

    def execute(self, statement: str) -> None:
        with self.connect() as conn:
            conn.execute(statement)

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(statement).fetchall()

    def tables(self) -> set[str]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,)
            )
            return {name for (name,) in rows}

    def schema_text(self) -> str:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
                " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s",
                (self.schema,),
            )
            return "\n".join(str(d) for (d,) in rows)

    def fail_on(self, operation: str, table: str) -> None:
        self.execute(
            "CREATE OR REPLACE FUNCTION injected_failure() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
        )
        self.execute(
            f"CREATE TRIGGER fail_{operation}_{table} BEFORE {operation} ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION injected_failure()"
        )

    def raw_data(self) -> bytes:
        chunks: list[bytes] = []
        with self.connect() as conn:
            for table in sorted(self.tables()):
                query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))
                for row in conn.execute(query):
                    for value in row:
                        if isinstance(value, bytes):
                            chunks.append(value)  # bytea exactly as stored
                        else:
                            chunks.append(str(value).encode())
        return b"\x00".join(chunks)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    chosen: Backend
    if request.param == "sqlite":
        chosen = SqliteBackend(tmp_path / "state" / "users.sqlite3")
    else:
        chosen = PostgresBackend(request.getfixturevalue("postgres"))
    yield chosen
    chosen.close()


@pytest.fixture
def store(backend: Backend) -> VersionedStore:
    return backend.open()


def race(workers: int, action: Callable[[int], bool]) -> list[bool]:
    """Run `action(i)` in `workers` threads released together by a barrier."""
    barrier = threading.Barrier(workers)

    def run(index: int) -> bool:
        barrier.wait()
        return action(index)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(workers)))


def race_stores(backend: Backend, action: Callable[[UserRepository], bool]) -> list[bool]:
    """8 racers spread over two store objects (two daemons), 4 threads each."""
    stores = [backend.open(), backend.open()]
    return race(8, lambda i: action(stores[i % 2]))


# ----------------------------------------------------------------- schema


def test_satisfies_the_repository_protocol(store: VersionedStore) -> None:
    repository: UserRepository = store
    assert repository.get_user("nobody") is None


def test_schema_version_is_recorded_and_kept(backend: Backend, store: VersionedStore) -> None:
    migrations: tuple[str, ...] = backend.module.MIGRATIONS
    assert store.schema_version() == len(migrations) >= 1
    store.close()
    again = backend.open()
    assert again.schema_version() == len(migrations)
    assert backend.query("SELECT version FROM schema_version") == [(len(migrations),)]


def test_migrations_are_idempotent(backend: Backend) -> None:
    for _ in range(3):
        store = backend.open()
        store.set_method("alice", "totp", T0)
        assert store.schema_version() == len(backend.module.MIGRATIONS)
        store.close()
    assert backend.open().list_users() == ["alice"]


def test_new_migration_is_applied_once(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    backend.open().close()
    migrations: tuple[str, ...] = backend.module.MIGRATIONS
    extra = "CREATE TABLE notes (user_name TEXT, note TEXT);"
    monkeypatch.setattr(backend.module, "MIGRATIONS", (*migrations, extra))
    for _ in range(2):
        store = backend.open()
        assert store.schema_version() == len(migrations) + 1
        store.close()
    assert "notes" in backend.tables()


def test_failing_migration_leaves_nothing_behind(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.open().close()
    migrations: tuple[str, ...] = backend.module.MIGRATIONS
    broken = "CREATE TABLE extra (x INTEGER); CREATE TABLE broken (;"
    monkeypatch.setattr(backend.module, "MIGRATIONS", (*migrations, broken))
    with pytest.raises(StoreError, match=f"migration {len(migrations) + 1} failed"):
        backend.open()
    assert backend.query("SELECT version FROM schema_version") == [(len(migrations),)]
    assert "extra" not in backend.tables()


def test_version_2_store_migrates_without_method_names_in_the_schema(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 3 drops the CHECK constraints naming the methods (the code checks
    them), keeping every row, including those that reference the rebuilt tables."""
    migrations: tuple[str, ...] = backend.module.MIGRATIONS
    monkeypatch.setattr(backend.module, "MIGRATIONS", migrations[:2])
    old = backend.open()
    secret = new_secret(TotpSettings())
    old.set_totp_secret("alice", secret, T0)
    old.set_method("alice", "totp", T0)
    old.set_enrolment("alice", "yubikey", {"public_id": "cccccccccccb"}, T0)
    codes = generate_codes(2)
    old.replace_backup_codes("alice", codes, T0)
    assert old.request_reset("alice", "cli", T0)
    assert "'yubikey'" in backend.schema_text()
    old.close()
    monkeypatch.setattr(backend.module, "MIGRATIONS", migrations)

    store = backend.open()
    assert store.schema_version() == len(migrations)
    assert "'yubikey'" not in backend.schema_text()
    record = store.get_user("alice")
    assert record is not None and record.method == "totp"
    assert record.enrolled == {"totp", "yubikey"} and record.backup_codes_remaining == 2
    assert store.get_totp_secret("alice") == secret
    assert store.get_enrolment("alice", "yubikey") == {"public_id": "cccccccccccb"}
    assert [r.user for r in store.list_resets()] == ["alice"]
    assert store.consume_backup_code("alice", codes[0], T0 + 1)
    # Foreign keys still hold after the rebuild: deleting the user takes its rows.
    assert store.delete_user("alice")
    assert backend.query("SELECT COUNT(*) FROM backup_codes") == [(0,)]


def test_schema_from_a_newer_version_is_refused(backend: Backend) -> None:
    backend.open().close()
    backend.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="newer"):
        backend.open()


def test_daemons_starting_together_migrate_once(backend: Backend) -> None:
    stores: list[VersionedStore] = []
    lock = threading.Lock()

    def start(_: int) -> bool:
        store = backend.open()
        with lock:
            stores.append(store)
        return store.schema_version() == len(backend.module.MIGRATIONS)

    assert all(race(4, start))
    assert backend.query("SELECT version FROM schema_version") == [
        (len(backend.module.MIGRATIONS),)
    ]
    stores[0].set_method("alice", "email", T0)
    assert [s.list_users() for s in stores] == [["alice"]] * 4


def test_closed_store_refuses_use(store: VersionedStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_users()


# ----------------------------------------------------------------- round trips, at rest


def test_reopen_preserves_everything(backend: Backend, store: VersionedStore) -> None:
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
    store.close()

    again = backend.open()
    record = again.get_user("alice")
    assert record is not None
    assert record.name == "alice"
    assert record.method == "totp"
    assert record.configure_later
    assert record.enrolled == frozenset({"totp", "email"})
    assert record.totp_last_step == 100
    assert record.backup_codes_remaining == 2
    assert (record.failures, record.locked_until) == (1, None)
    assert record.last_reset is not None
    assert (record.last_reset.status, record.last_reset.via) == ("pending", "radius")
    assert (record.created_at, record.updated_at) == (T0, T0)
    assert again.get_totp_secret("alice") == secret
    assert again.get_enrolment("alice", "email") == {"address": "alice@example.com"}
    assert not again.accept_totp_step("alice", 100)
    assert not again.consume_backup_code("alice", codes[0], T0 + 4)


def test_secrets_are_sealed_at_rest(backend: Backend, store: VersionedStore) -> None:
    secret = new_secret()
    codes = generate_codes(4)
    store.set_totp_secret("alice", secret, T0)
    store.set_enrolment("alice", "sms", {"phone": "+15551234567"}, T0)
    store.set_enrolment("alice", "yubikey", {"public_id": "cccccckdvvul", "aes_key": "9f" * 16}, T0)
    store.replace_backup_codes("alice", codes, T0)
    needles = [secret, "+15551234567", "cccccckdvvul", "9f" * 16]
    needles += codes + [code.replace("-", "") for code in codes]

    raw = backend.raw_data()
    assert b"alice" in raw  # the search does see the data
    for needle in needles:
        assert needle.encode() not in raw, needle


def test_user_names_are_normalised(store: VersionedStore) -> None:
    store.set_method("  ALICE ", "email", T0)
    store.set_method("Bob", None, T0)
    assert store.list_users() == ["alice", "bob"]
    record = store.get_user("Alice")
    assert record is not None and record.name == "alice"
    with pytest.raises(ValueError, match="empty"):
        store.get_user("   ")


def test_method_is_validated_and_updated(store: VersionedStore) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        store.set_method("alice", "fax", T0)  # type: ignore[arg-type]
    assert store.get_user("alice") is None
    store.set_method("alice", "sms", T0, configure_later=True)
    store.set_method("alice", None, T0 + 5)
    record = store.get_user("alice")
    assert record is not None
    assert (record.method, record.configure_later) == (None, False)
    assert (record.created_at, record.updated_at) == (T0, T0 + 5)


def test_delete_user_removes_everything(store: VersionedStore) -> None:
    store.set_enrolment("alice", "email", {"address": "a@example.com"}, T0)
    store.replace_backup_codes("alice", generate_codes(2), T0)
    store.request_reset("alice", "cli", T0)
    assert store.delete_user("alice")
    assert not store.delete_user("alice")
    assert store.get_user("alice") is None
    assert store.get_enrolment("alice", "email") is None
    assert store.list_resets(None) == []


# ----------------------------------------------------------------- TOTP


def test_totp_step_is_compare_and_set(store: VersionedStore) -> None:
    assert not store.accept_totp_step("alice", 10)  # no such user
    store.set_method("alice", "totp", T0)
    assert not store.accept_totp_step("alice", 10)  # no secret yet
    store.set_totp_secret("alice", new_secret(), T0)
    assert store.accept_totp_step("alice", 10)
    assert not store.accept_totp_step("alice", 10)  # the same step: a replay
    assert not store.accept_totp_step("alice", 9)  # an earlier step
    assert store.accept_totp_step("alice", 11)


def test_new_totp_secret_restarts_replay_marker(store: VersionedStore) -> None:
    store.set_totp_secret("alice", new_secret(), T0)
    assert store.accept_totp_step("alice", 50)
    store.set_totp_secret("alice", new_secret(), T0 + 1)
    record = store.get_user("alice")
    assert record is not None
    assert (record.totp_last_step, record.updated_at) == (None, T0 + 1)
    assert store.accept_totp_step("alice", 40)


def test_threads_racing_for_one_totp_step_have_one_winner(store: VersionedStore) -> None:
    store.set_totp_secret("alice", new_secret(), T0)
    assert race(8, lambda _: store.accept_totp_step("alice", 77)).count(True) == 1


def test_two_daemons_racing_for_one_totp_step_have_one_winner(
    backend: Backend, store: VersionedStore
) -> None:
    store.set_totp_secret("alice", new_secret(), T0)
    results = race_stores(backend, lambda s: s.accept_totp_step("alice", 77))
    assert results.count(True) == 1
    assert not store.accept_totp_step("alice", 77)


def test_totp_secret_moved_to_another_user_does_not_decrypt(
    backend: Backend, store: VersionedStore
) -> None:
    store.set_totp_secret("alice", new_secret(), T0)
    store.set_totp_secret("bob", new_secret(), T0)
    backend.execute(
        "UPDATE users SET totp_secret = (SELECT totp_secret FROM users WHERE name = 'alice')"
        " WHERE name = 'bob'"
    )
    with pytest.raises(DecryptionError):
        store.get_totp_secret("bob")


def test_clear_totp_enrolment(store: VersionedStore) -> None:
    assert not store.clear_enrolment("alice", "totp", T0)
    store.set_totp_secret("alice", new_secret(), T0)
    assert store.accept_totp_step("alice", 5)
    assert store.clear_enrolment("alice", "totp", T0 + 1)
    assert store.get_totp_secret("alice") is None
    record = store.get_user("alice")
    assert record is not None
    assert (record.enrolled, record.totp_last_step) == (frozenset(), None)
    assert not store.accept_totp_step("alice", 6)


# ----------------------------------------------------------------- other methods


def test_enrolment_round_trip_and_replace(store: VersionedStore) -> None:
    assert store.get_enrolment("alice", "yubikey") is None
    store.set_enrolment("alice", "yubikey", {"public_id": "cccccc", "aes_key": "00" * 16}, T0)
    store.set_enrolment("alice", "yubikey", {"public_id": "dddddd", "aes_key": "11" * 16}, T0)
    assert store.get_enrolment("alice", "yubikey") == {"public_id": "dddddd", "aes_key": "11" * 16}
    store.set_enrolment("alice", "email", {"address": "a@example.com", "n": [1, None]}, T0 + 1)
    assert store.get_enrolment("alice", "email") == {"address": "a@example.com", "n": [1, None]}
    record = store.get_user("alice")
    assert record is not None
    assert record.enrolled == frozenset({"yubikey", "email"})
    assert (record.created_at, record.updated_at) == (T0, T0 + 1)
    assert store.clear_enrolment("alice", "yubikey", T0 + 2)
    assert not store.clear_enrolment("alice", "yubikey", T0 + 3)
    record = store.get_user("alice")
    assert record is not None and record.enrolled == frozenset({"email"})


def test_totp_is_not_generic_enrolment_data(store: VersionedStore) -> None:
    with pytest.raises(ValueError, match="set_totp_secret"):
        store.set_enrolment("alice", "totp", {"secret": "x"}, T0)


def test_enrolment_blob_moved_to_another_method_does_not_decrypt(
    backend: Backend, store: VersionedStore
) -> None:
    store.set_enrolment("alice", "email", {"address": "a@example.com"}, T0)
    backend.execute("UPDATE enrolments SET method = 'sms'")
    with pytest.raises(DecryptionError):
        store.get_enrolment("alice", "sms")


def test_yubikey_counter_is_compare_and_set(store: VersionedStore) -> None:
    assert not store.accept_yubikey_counter("alice", 5)  # no such user
    store.set_method("alice", "yubikey", T0)
    assert not store.accept_yubikey_counter("alice", 5)  # no key enrolled
    store.set_enrolment("alice", "yubikey", {"public_id": "cccccc"}, T0)
    assert store.accept_yubikey_counter("alice", 5)
    assert not store.accept_yubikey_counter("alice", 5)
    assert not store.accept_yubikey_counter("alice", 4)
    assert store.accept_yubikey_counter("alice", 6)
    store.set_enrolment("alice", "yubikey", {"public_id": "dddddd"}, T0)  # a new key
    assert store.accept_yubikey_counter("alice", 1)


def test_racing_for_one_yubikey_counter_has_one_winner(
    backend: Backend, store: VersionedStore
) -> None:
    store.set_enrolment("alice", "yubikey", {"public_id": "cccccc"}, T0)
    results = race_stores(backend, lambda s: s.accept_yubikey_counter("alice", 300))
    assert results.count(True) == 1


# ----------------------------------------------------------------- backup codes


def test_backup_code_is_single_use(store: VersionedStore) -> None:
    codes = generate_codes()
    store.replace_backup_codes("alice", codes, T0)
    typed = codes[3].upper().replace("-", " ")
    assert store.consume_backup_code("alice", typed, T0 + 1)
    assert not store.consume_backup_code("alice", codes[3], T0 + 2)
    assert not store.consume_backup_code("bob", codes[4], T0 + 2)  # another user's code
    assert not store.consume_backup_code("alice", "123456", T0 + 2)  # not a code at all
    record = store.get_user("alice")
    assert record is not None and record.backup_codes_remaining == 9


def test_new_backup_codes_void_the_old_set(store: VersionedStore) -> None:
    old, new = generate_codes(2), generate_codes(2)
    store.replace_backup_codes("alice", old, T0)
    store.replace_backup_codes("alice", new, T0 + 1)
    assert not store.consume_backup_code("alice", old[0], T0 + 2)
    assert store.consume_backup_code("alice", new[0], T0 + 2)
    store.replace_backup_codes("alice", [], T0 + 3)
    record = store.get_user("alice")
    assert record is not None and record.backup_codes_remaining == 0


def test_invalid_backup_code_is_not_stored(store: VersionedStore) -> None:
    with pytest.raises(ValueError, match="not a backup code"):
        store.replace_backup_codes("alice", [generate_codes(1)[0], "123456"], T0)
    assert store.get_user("alice") is None


def test_threads_racing_consume_a_code_once(store: VersionedStore) -> None:
    codes = generate_codes(2)
    store.replace_backup_codes("alice", codes, T0)
    results = race(8, lambda _: store.consume_backup_code("alice", codes[0], T0))
    assert results.count(True) == 1
    record = store.get_user("alice")
    assert record is not None and record.backup_codes_remaining == 1


def test_two_daemons_racing_consume_a_code_once(backend: Backend, store: VersionedStore) -> None:
    codes = generate_codes(2)
    store.replace_backup_codes("alice", codes, T0)
    results = race_stores(backend, lambda s: s.consume_backup_code("alice", codes[1], T0))
    assert results.count(True) == 1
    record = store.get_user("alice")
    assert record is not None and record.backup_codes_remaining == 1


# ----------------------------------------------------------------- resets


def test_reset_request_lifecycle_approved(store: VersionedStore) -> None:
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
    assert (done.id, done.decided_at, done.status) == (pending.id, T0 + 20, "approved")

    record = store.get_user("alice")
    assert record is not None
    assert record.method is None
    assert record.enrolled == frozenset()
    assert record.backup_codes_remaining == 0
    assert record.last_reset == done
    assert record.updated_at == T0 + 20
    assert store.get_totp_secret("alice") is None

    assert store.request_reset("alice", "radius", T0 + 30)  # a later request is new
    everything = store.list_resets(None)
    assert [r.status for r in everything] == ["approved", "pending"]
    assert everything[0].id < everything[1].id
    latest = store.get_user("alice")
    assert latest is not None and latest.last_reset == everything[1]


def test_reset_request_cleared_keeps_mfa(store: VersionedStore) -> None:
    store.set_method("bob", "email", T0)
    store.set_enrolment("bob", "email", {"address": "b@example.com"}, T0)
    assert not store.clear_reset("bob", T0)  # nothing pending
    assert not store.approve_reset("bob", T0)
    assert store.request_reset("bob", "radius", T0)
    assert store.clear_reset("bob", T0 + 1)
    [cleared] = store.list_resets("cleared")
    assert cleared.decided_at == T0 + 1
    record = store.get_user("bob")
    assert record is not None and record.method == "email"
    assert store.get_enrolment("bob", "email") == {"address": "b@example.com"}


def test_requests_for_one_user_from_two_daemons_file_one(
    backend: Backend, store: VersionedStore
) -> None:
    results = race_stores(backend, lambda s: s.request_reset("carol", "radius", T0))
    assert results.count(True) == 1
    assert len(store.list_resets()) == 1


def test_a_failure_midway_leaves_no_partial_write(backend: Backend, store: VersionedStore) -> None:
    secret = new_secret()
    old = generate_codes(2)
    store.set_method("alice", "totp", T0)
    store.set_totp_secret("alice", secret, T0)
    store.replace_backup_codes("alice", old, T0)
    assert store.request_reset("alice", "radius", T0)
    # replacing codes deletes the old set, then fails inserting the new one
    backend.fail_on("INSERT", "backup_codes")
    with pytest.raises((StoreError, sqlite3.Error), match="injected failure"):
        store.replace_backup_codes("alice", generate_codes(2), T0 + 1)
    # approving marks the request, clears the user's row, then fails on the codes
    backend.fail_on("DELETE", "backup_codes")
    with pytest.raises((StoreError, sqlite3.Error), match="injected failure"):
        store.approve_reset("alice", T0 + 2)

    record = store.get_user("alice")
    assert record is not None
    assert (record.method, record.enrolled) == ("totp", frozenset({"totp"}))
    assert record.backup_codes_remaining == 2
    assert record.last_reset is not None and record.last_reset.status == "pending"
    assert store.get_totp_secret("alice") == secret
    assert store.consume_backup_code("alice", old[0], T0 + 3)


def test_clear_mfa(store: VersionedStore) -> None:
    assert not store.clear_mfa("nobody", T0)
    store.set_method("carol", "sms", T0)
    store.set_enrolment("carol", "sms", {"phone": "+15550000000"}, T0)
    store.replace_backup_codes("carol", generate_codes(2), T0)
    assert store.clear_mfa("carol", T0 + 1)
    record = store.get_user("carol")
    assert record is not None
    assert (record.method, record.enrolled, record.backup_codes_remaining) == (None, frozenset(), 0)


# ----------------------------------------------------------------- lockout


def test_failures_lock_then_expire_in_virtual_time(store: VersionedStore) -> None:
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


def test_one_failure_can_lock_and_zero_seconds_never_locks(store: VersionedStore) -> None:
    assert store.record_failure("alice", T0, 1, 60) == LockState(1, T0 + 60, True)
    assert store.record_failure("alice", T0 + 60, 1, 60) == LockState(1, T0 + 120, True)
    for count in (1, 2):
        assert store.record_failure("bob", T0, 1, 0) == LockState(count, None, False)


def test_reset_failures_unlocks(store: VersionedStore) -> None:
    assert store.lock_state("nobody", T0) == LockState(0, None, False)
    store.record_failure("alice", T0, max_failures=1, lockout_seconds=60)
    assert store.lock_state("alice", T0).locked
    store.reset_failures("alice")
    assert store.lock_state("alice", T0) == LockState(0, None, False)


def test_lockout_survives_a_restart(backend: Backend, store: VersionedStore) -> None:
    store.record_failure("alice", T0, max_failures=1, lockout_seconds=60)
    store.close()
    assert backend.open().lock_state("alice", T0 + 30) == LockState(1, T0 + 60, True)


def test_concurrent_failures_are_all_counted(backend: Backend, store: VersionedStore) -> None:
    race(8, lambda _: store.record_failure("alice", T0, 100, 60).locked)
    race_stores(backend, lambda s: s.record_failure("alice", T0, 100, 60).locked)
    assert store.lock_state("alice", T0).failures == 16


def test_failure_arguments_are_checked(store: VersionedStore) -> None:
    with pytest.raises(ValueError):
        store.record_failure("alice", T0, max_failures=0, lockout_seconds=60)
    with pytest.raises(ValueError):
        store.record_failure("alice", T0, max_failures=1, lockout_seconds=-1)


# ----------------------------------------------------------------- enrolment windows


def test_an_enrolment_window_opens_closes_and_survives_a_restart(
    backend: Backend, store: VersionedStore
) -> None:
    record = store.get_user("carol")
    assert record is None
    store.open_enrolment("Carol", T0 + 3600, T0)
    record = store.get_user("carol")
    assert record is not None and record.enrol_until == T0 + 3600
    assert record.enrolment_open(T0 + 3599) and not record.enrolment_open(T0 + 3600)
    store.close()
    reopened = backend.open()
    assert reopened.close_enrolment("carol", T0 + 1)
    assert not reopened.close_enrolment("carol", T0 + 2)  # nothing left to close
    record = reopened.get_user("carol")
    assert record is not None and record.enrol_until is None and not record.enrolment_open(T0)


def test_a_new_window_replaces_the_old_one_and_mfa_is_untouched(store: VersionedStore) -> None:
    store.set_totp_secret("alice", "JBSWY3DPEHPK3PXP", T0)
    store.open_enrolment("alice", T0 + 60, T0)
    store.open_enrolment("alice", T0 + 10, T0)
    record = store.get_user("alice")
    assert record is not None and record.enrol_until == T0 + 10 and "totp" in record.enrolled


# ----------------------------------------------------------------- attempt reservations


def test_reservations_count_before_the_check_and_lock_at_the_last(store: VersionedStore) -> None:
    def reserve(at: float) -> Reservation:
        return store.reserve_attempt("alice", at, max_failures=3, lockout_seconds=300)

    first, second, third = reserve(T0), reserve(T0), reserve(T0)
    assert [r.granted for r in (first, second, third)] == [True, True, True]
    assert (first.last, second.last, third.last) == (False, False, True)
    assert store.lock_state("alice", T0) == LockState(3, T0 + 300, True)
    refused = reserve(T0 + 1)
    assert not refused.granted and refused.lock.locked
    assert store.lock_state("alice", T0 + 1).failures == 3  # a refusal counts nothing
    # after the lockout the count starts again
    assert reserve(T0 + 300) == Reservation(True, LockState(1, None, False))


def test_a_released_attempt_is_given_back(store: VersionedStore) -> None:
    for _ in range(3):
        store.reserve_attempt("alice", T0, 3, 300)
    assert store.lock_state("alice", T0).locked
    store.release_attempt("alice", T0, 3)  # e.g. the factor was unavailable
    assert store.lock_state("alice", T0) == LockState(2, None, False)
    assert store.reserve_attempt("alice", T0, 3, 300).last
    store.release_attempt("nobody", T0, 3)  # nothing to give back: no row, no error
    store.reset_failures("bob")
    store.release_attempt("bob", T0, 3)
    assert store.lock_state("bob", T0) == LockState(0, None, False)


def test_a_release_after_the_lockout_ended_gives_nothing_back(store: VersionedStore) -> None:
    store.reserve_attempt("alice", T0, 1, 60)
    store.release_attempt("alice", T0 + 60, 1)  # that lockout is over: the row is left alone
    assert store.reserve_attempt("alice", T0 + 61, 1, 60).granted


def test_concurrent_reservations_never_exceed_the_limit(
    backend: Backend, store: VersionedStore
) -> None:
    # 40 racers on two store objects (two daemons) against a limit of 5
    stores = [backend.open(), backend.open()]
    granted = race(40, lambda i: stores[i % 2].reserve_attempt("alice", T0, 5, 600).granted)
    assert granted.count(True) == 5
    assert store.lock_state("alice", T0) == LockState(5, T0 + 600, True)


def test_concurrent_reservations_and_releases_keep_the_budget(
    backend: Backend, store: VersionedStore
) -> None:
    stores = [backend.open(), backend.open()]

    def attempt(i: int) -> bool:
        chosen = stores[i % 2]
        reservation = chosen.reserve_attempt("alice", T0, 5, 600)
        if reservation.granted and i % 4 == 0:  # not the user's fault: given back
            chosen.release_attempt("alice", T0, 5)
        return reservation.granted and i % 4 != 0

    kept = race(40, attempt)
    # the attempts that were kept (counted) never exceed the limit
    assert kept.count(True) <= 5
    assert store.lock_state("alice", T0).failures == kept.count(True)


# ----------------------------------------------------------------- PostgreSQL only


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def failures_counted() -> float:
    return sample("mfaproxy_upstream_duration_seconds_count", service="postgres", result="failure")


def postgres_up(server: str = "127.0.0.1") -> float | None:
    labels = {"service": "postgres", "server": server}
    return metrics.REGISTRY.get_sample_value("mfaproxy_upstream_up", labels)


@pytest.fixture
def pg(postgres: PostgresServer) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(postgres)
    yield backend
    backend.close()


def test_unreachable_server_is_reported_at_start() -> None:
    before = failures_counted()
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens
    with pytest.raises(UserStoreUnavailable, match=r"PostgreSQL 127\.0\.0\.1"):
        PostgresUserStore(dsn, KEY, connect_timeout=2)
    assert failures_counted() == before + 1
    assert postgres_up() == 0


def test_store_recovers_after_a_server_restart(
    postgres: PostgresServer, pg: PostgresBackend
) -> None:
    store = pg.open()
    codes = generate_codes(2)
    store.replace_backup_codes("alice", codes, T0)
    assert postgres_up() == 1
    before = failures_counted()
    postgres.stop()
    try:
        with pytest.raises(UserStoreUnavailable):
            store.consume_backup_code("alice", codes[0], T0)
        with pytest.raises(UserStoreUnavailable):
            store.get_user("alice")
        assert postgres_up() == 0
        assert failures_counted() == before + 2
    finally:
        postgres.start()
    # the very first call after the restart works, on the same store object
    assert store.consume_backup_code("alice", codes[0], T0)
    assert not store.consume_backup_code("alice", codes[0], T0)
    assert postgres_up() == 1
    record = store.get_user("alice")
    assert record is not None and record.backup_codes_remaining == 1
    # restarted while idle: the pooled connections are stale, and none is used
    postgres.restart()
    assert store.consume_backup_code("alice", codes[1], T0)


def test_idle_connections_killed_by_the_server_are_replaced(pg: PostgresBackend) -> None:
    store = pg.open()
    race(4, lambda _: store.get_user("alice") is None)  # several pooled connections
    with pg.connect() as admin:
        pids = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'mfaproxy'"
        ).fetchall()
        assert len(pids) >= 2
        for (pid,) in pids:  # with a timeout, it waits until the backend has exited
            assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (
                True,
            )
    for _ in range(6):
        store.set_method("alice", "totp", T0)


def test_statement_blocked_past_its_timeout_is_unavailable(pg: PostgresBackend) -> None:
    pg.open().close()  # migrated
    store = PostgresUserStore(pg.dsn, KEY, statement_timeout=0.2)
    try:
        with pg.connect() as blocker, blocker.transaction():
            blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(UserStoreUnavailable, match="QueryCanceled"):
                store.set_method("alice", "totp", T0)
        store.set_method("alice", "totp", T0)
        assert store.list_users() == ["alice"]
    finally:
        store.close()


def test_read_only_server_is_unavailable_for_writes(pg: PostgresBackend) -> None:
    pg.open().close()  # migrated
    dsn = make_conninfo(
        pg.dsn, options=f"-c search_path={pg.schema} -c default_transaction_read_only=on"
    )
    store = PostgresUserStore(dsn, KEY)  # a standby still answers reads
    try:
        assert store.get_user("alice") is None
        with pytest.raises(UserStoreUnavailable, match="ReadOnlySqlTransaction"):
            store.set_method("alice", "totp", T0)
    finally:
        store.close()


def test_unparsable_dsn_is_refused_without_echoing_it() -> None:
    with pytest.raises(StoreError) as caught:
        PostgresUserStore("host=x password=hunter2 nonsense", KEY)
    assert "hunter2" not in str(caught.value)


def test_trust_ends_when_the_operator_says_or_the_mfa_changes(store: VersionedStore) -> None:
    """core/trust.py: no trusted reconnect rests on a pass before trust_not_before."""
    assert store.revoke_trust("nobody", 10.0) is False
    store.set_method("alice", "totp", 10.0)
    record = store.get_user("alice")
    assert record is not None and record.trust_not_before == 10.0
    assert store.revoke_trust("ALICE", 20.0) is True  # the identity, whatever the case
    record = store.get_user("alice")
    assert record is not None and record.trust_not_before == 20.0
    store.clear_mfa("alice", 30.0)
    record = store.get_user("alice")
    assert record is not None and record.trust_not_before == 30.0
