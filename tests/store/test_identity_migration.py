"""Migration 4 (store/rekey.py) on both user stores: users stored under the old key
(`strip().lower()`) are re-keyed by the one normaliser with their secrets re-sealed, and
names that would share an identity are reported and never merged.

Old rows are written raw, as a version-3 store wrote them: sealed under the old name,
backup codes MACed with it. The stores are opened just before the step
(`migrate_to=3`), then normally.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.core.identity import normalise
from mfaproxy.errors import IdentityCollisionError
from mfaproxy.otp.backup_codes import BackupCodeHasher, generate_codes
from mfaproxy.store.crypto import SecretBox
from mfaproxy.store.postgres_users import PostgresUserStore
from mfaproxy.store.records import UserRepository
from mfaproxy.store.rekey import REKEY_VERSION, plan_rekey
from mfaproxy.store.sqlite_schema import MIGRATIONS
from mfaproxy.store.users import UserStore
from tests.store.test_user_store_contract import (
    KEY,
    T0,
    Backend,
    PostgresBackend,
    SqliteBackend,
)
from tests.support.postgres_server import PostgresServer

BOX = SecretBox(KEY)
HASHER = BackupCodeHasher.from_master_key(KEY)
OLD = REKEY_VERSION - 1
LATEST = len(MIGRATIONS)  # the re-key is followed by later steps


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


def open_at(backend: Backend, version: int | None) -> UserRepository:
    store: UserRepository
    if isinstance(backend, SqliteBackend):
        store = UserStore(backend.path, KEY, migrate_to=version)
    else:
        assert isinstance(backend, PostgresBackend)
        store = PostgresUserStore(backend.dsn, KEY, migrate_to=version)
    backend._opened.append(store)  # closed with the backend
    return store


def raw(backend: Backend, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A statement in SQLite's dialect (`?`, column `user`), translated for PostgreSQL."""
    if isinstance(backend, SqliteBackend):
        conn = sqlite3.connect(backend.path, isolation_level=None)
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()
    assert isinstance(backend, PostgresBackend)
    statement = statement.replace("?", "%s").replace("user,", "user_name,")
    statement = statement.replace("user =", "user_name =")
    with psycopg.connect(backend.dsn, autocommit=True) as pg:
        cursor = pg.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def write_old_user(backend: Backend, name: str, secret: str | None = None) -> list[str]:
    """A user as a version-3 store kept it under `name`; returns its backup codes."""
    sealed = BOX.seal(f"{name}:totp", secret.encode()) if secret else None
    raw(
        backend,
        "INSERT INTO users (name, method, totp_secret, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (name, "totp" if secret else None, sealed, T0, T0),
    )
    data = BOX.seal(f"{name}:email", b'{"address":"x@example.org"}')
    raw(
        backend,
        "INSERT INTO enrolments (user, method, data, updated_at) VALUES (?, ?, ?, ?)",
        (name, "email", data, T0),
    )
    codes = generate_codes(2)
    for code in codes:
        digest = HASHER.digest(name, code)
        raw(
            backend,
            "INSERT INTO backup_codes (user, code_hash, created_at) VALUES (?, ?, ?)",
            (name, digest, T0),
        )
    raw(
        backend,
        "INSERT INTO reset_requests (user, requested_at, via, status) VALUES (?, ?, ?, ?)",
        (name, T0, "cli", "pending"),
    )
    return codes


def old_store(backend: Backend) -> None:
    open_at(backend, OLD).close()


def version(backend: Backend) -> int:
    return int(raw(backend, "SELECT version FROM schema_version")[0][0])


# --------------------------------------------------------------------------- re-keying


def test_renamed_user_keeps_secrets_enrolments_and_resets(backend: Backend) -> None:
    old_store(backend)
    write_old_user(backend, "stra\u00dfe", secret="JBSWY3DPEHPK3PXP")
    alice_codes = write_old_user(backend, "alice", secret="KRSXG5CTMVRXEZLU")

    store = backend.open()
    assert version(backend) == LATEST
    assert store.list_users() == ["alice", "strasse"]
    for spelling in ("Stra\u00dfe", "STRASSE", "strasse"):
        record = store.get_user(spelling)
        assert record is not None and record.name == "strasse"
    assert store.get_totp_secret("strasse") == "JBSWY3DPEHPK3PXP"
    assert store.get_enrolment("strasse", "email") == {"address": "x@example.org"}
    assert sorted((r.user, r.status) for r in store.list_resets()) == [
        ("alice", "pending"),
        ("strasse", "pending"),
    ]
    # The renamed user's codes were MACed with the old name: void, never half-valid.
    record = store.get_user("strasse")
    assert record is not None and record.backup_codes_remaining == 0
    # An unchanged user keeps everything, codes included.
    assert store.get_totp_secret("alice") == "KRSXG5CTMVRXEZLU"
    assert store.consume_backup_code("alice", alice_codes[0], T0 + 1)
    # Nothing is left under the old name, and the rows still hang together.
    assert raw(backend, "SELECT COUNT(*) FROM enrolments WHERE user = ?", ("stra\u00dfe",)) == [
        (0,)
    ]
    assert store.delete_user("strasse")
    assert raw(backend, "SELECT COUNT(*) FROM reset_requests WHERE user = ?", ("strasse",)) == [
        (0,)
    ]


def test_a_secret_sealed_under_another_name_stays_unusable(backend: Backend) -> None:
    old_store(backend)
    write_old_user(backend, "\uff53am")
    moved = BOX.seal("mallory:totp", b"ATTACKERSECRET22")  # copied in from another user
    raw(backend, "UPDATE users SET totp_secret = ? WHERE name = ?", (moved, "\uff53am"))
    store = backend.open()
    record = store.get_user("sam")
    assert record is not None and record.name == "sam"
    with pytest.raises(Exception, match="does not decrypt"):
        store.get_totp_secret("sam")


# --------------------------------------------------------------------------- collisions


@pytest.mark.parametrize(
    "names",
    [("stra\u00dfe", "strasse"), ("\uff53am", "sam"), ("\u017fam", "sam", "sam\u0020x")],
)
def test_colliding_users_refuse_the_migration_and_nothing_changes(
    backend: Backend, names: tuple[str, ...]
) -> None:
    old_store(backend)
    for name in names:
        write_old_user(backend, name, secret="JBSWY3DPEHPK3PXP")
    before = sorted(raw(backend, "SELECT name, totp_secret FROM users"))

    with pytest.raises(IdentityCollisionError) as caught:
        backend.open()
    shared = {n for n in names if normalise(n) == normalise(names[0])}
    assert caught.value.collisions == {normalise(names[0]): tuple(sorted(shared))}
    assert "mfaproxy users collisions" in str(caught.value)
    assert version(backend) == OLD
    assert sorted(raw(backend, "SELECT name, totp_secret FROM users")) == before


def test_a_collision_resolved_by_deleting_one_record_then_migrates(backend: Backend) -> None:
    old_store(backend)
    write_old_user(backend, "stra\u00dfe", secret="JBSWY3DPEHPK3PXP")
    write_old_user(backend, "strasse", secret="KRSXG5CTMVRXEZLU")
    repair = open_at(backend, OLD)
    assert repair.schema_version() == OLD
    assert repair.stored_record("stra\u00dfe") is not None
    assert repair.delete_stored("strasse")
    repair.close()

    store = backend.open()
    assert version(backend) == LATEST
    assert store.list_users() == ["strasse"]
    assert store.get_totp_secret("Stra\u00dfe") == "JBSWY3DPEHPK3PXP"


def test_a_new_store_has_nothing_to_rekey(backend: Backend) -> None:
    store = backend.open()
    store.set_method("Stra\u00dfe", "totp", T0)
    assert store.list_users() == ["strasse"]
    assert version(backend) == LATEST


# --------------------------------------------------------------------------- the plan


@given(st.lists(st.text(min_size=1, max_size=6), max_size=12, unique=True))
def test_plan_renames_or_reports_every_name_never_merges(names: list[str]) -> None:
    plan = plan_rekey(names)
    reported = {n for group in plan.collisions.values() for n in group}
    for name in names:
        key = normalise(name)
        if name in reported:
            assert name not in plan.renames
            assert len(plan.collisions[key]) > 1 or not key
        elif key != name:
            assert plan.renames[name] == key
        else:
            assert name not in plan.renames
    # After the renames, no two stored users share a key.
    final = [plan.renames.get(n, n) for n in names if n not in reported]
    assert len(final) == len(set(final))
    assert all(normalise(n) == n for n in final)
