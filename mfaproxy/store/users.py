"""The durable per-user MFA store: method, enrolments, backup codes, resets, lockout.

`UserRepository` (store/records.py) is the contract; `UserStore` implements it on SQLite
(stdlib sqlite3), `PostgresUserStore` (store/postgres_users.py) on PostgreSQL. User names
are keys of `core.identity.normalise` (re-applied by every method: it is idempotent);
the caller passes the user's canonical identity.

Durability: WAL journal with ``synchronous=FULL`` fsyncs every commit, so a write that
returned is not lost on a crash or power cut. Secrets (TOTP key, per-method enrolment
data) are sealed with `SecretBox` under the record id ``"<user>:<method>"``; backup codes
are stored only as peppered HMACs. Timestamps are Unix seconds passed in by the caller:
nothing here reads a clock, so tests run in virtual time.

Concurrency: methods are synchronous and block on disk I/O. The asyncio engine must call
them off the event loop, e.g. ``await loop.run_in_executor(pool, store.consume_backup_code,
user, code, now)`` with a small dedicated pool. `UserStore` is thread-safe: each thread
gets its own connection, and every operation is either one SQL statement or an explicit
``BEGIN IMMEDIATE`` transaction, so its atomicity comes from SQLite's own locking. That
also holds against another process (the CLI) using the same file at the same time.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from mfaproxy.config.multifactor import METHODS, Method
from mfaproxy.core.identity import identity_key
from mfaproxy.errors import StoreError
from mfaproxy.otp.backup_codes import BackupCodeHasher
from mfaproxy.store.crypto import SecretBox
from mfaproxy.store.records import (
    ENROLMENT_WINDOWS_VERSION,
    TRUST_VERSION,
    LockState,
    Reservation,
    ResetRequest,
    ResetStatus,
    UserRecord,
    check_lockout_arguments,
    lock_view,
    released,
    reserved,
)
from mfaproxy.store.rekey import SQLITE, Rekey, rekey_identities
from mfaproxy.store.sqlite_connections import SqliteConnections
from mfaproxy.store.sqlite_schema import MIGRATIONS, statements

_SELECT_RECORD = (
    "SELECT method, configure_later, totp_secret IS NOT NULL, totp_last_step, failures,"
    " locked_until, created_at, updated_at, enrol_until, trust_not_before FROM users"
    " WHERE name = ?"
)
# The same on a store opened short of migration 5 (a repair before the re-key).
_SELECT_RECORD_BEFORE_WINDOWS = _SELECT_RECORD.replace("enrol_until", "NULL").replace(
    "trust_not_before", "NULL"
)


class UserStore:
    """`UserRepository` on a SQLite file; see the module docstring for threading."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: bytes,
        busy_timeout: float = 10.0,
        *,
        migrate_to: int | None = None,
    ) -> None:
        """Open (and create) the store, applying migrations up to `migrate_to` (default:
        all; `mfaproxy users collisions` stops before the re-key to repair)."""
        self.path = Path(path)
        self._box = SecretBox(key)
        self._hasher = BackupCodeHasher.from_master_key(key)
        self._db = SqliteConnections(self.path, busy_timeout)
        try:
            target = len(MIGRATIONS) if migrate_to is None else migrate_to
            self._migrate(target)
            # A store opened short of migration 5 (a repair) has no enrolment windows.
            self._enrolment_windows = target >= ENROLMENT_WINDOWS_VERSION
            self._trust_column = target >= TRUST_VERSION
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- plumbing

    def _migrate(self, target: int) -> None:
        # A migration may rebuild a table (DROP, then RENAME of a copy): with foreign
        # keys on, the DROP would cascade to the rows that reference it. SQLite ignores
        # this pragma inside a transaction, so it is set around it; the check before
        # COMMIT proves the rebuilt tables still hold together.
        self._db.conn().execute("PRAGMA foreign_keys = OFF")
        try:
            self._apply_migrations(target)
        finally:
            self._db.conn().execute("PRAGMA foreign_keys = ON")

    def _apply_migrations(self, target: int) -> None:
        with self._db.write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            current = 0 if row is None else int(row[0])
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path}: schema version {current} is newer than this mfaproxy "
                    f"({len(MIGRATIONS)}); upgrade mfaproxy"
                )
            for version, script in enumerate(MIGRATIONS[current:target], start=current + 1):
                try:
                    if isinstance(script, Rekey):
                        rekey_identities(conn, SQLITE, self._box)
                        continue
                    for statement in statements(script):
                        conn.execute(statement)
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.path}: migration {version} failed: {exc}") from exc
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StoreError(f"{self.path}: migration left {len(broken)} dangling rows")
            conn.execute("UPDATE schema_version SET version = ?", (max(current, target),))

    def schema_version(self) -> int:
        return int(self._db.conn().execute("SELECT version FROM schema_version").fetchone()[0])

    def change_counter(self) -> int:
        """A number that changes whenever another connection commits to the file."""
        return self._db.change_counter()

    def close(self) -> None:
        """Close every thread's connection; call once the executor using it has drained."""
        self._db.close()

    @staticmethod
    def _ensure(conn: sqlite3.Connection, user: str, now: float) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO users (name, created_at, updated_at) VALUES (?, ?, ?)",
            (user, now, now),
        )

    # ----------------------------------------------------------------- users

    def get_user(self, user: str) -> UserRecord | None:
        return self.stored_record(identity_key(user))

    def stored_record(self, name: str) -> UserRecord | None:
        """The record stored under exactly `name` (for repairs: no normalisation)."""
        conn = self._db.conn()
        conn.execute("BEGIN")  # one snapshot for the several reads below
        try:
            row = conn.execute(
                _SELECT_RECORD if self._enrolment_windows else _SELECT_RECORD_BEFORE_WINDOWS,
                (name,),
            ).fetchone()
            if row is None:
                return None
            methods = {
                m for (m,) in conn.execute("SELECT method FROM enrolments WHERE user = ?", (name,))
            }
            remaining = conn.execute(
                "SELECT count(*) FROM backup_codes WHERE user = ? AND used_at IS NULL", (name,)
            ).fetchone()[0]
            resets = self._resets(conn, "WHERE user = ? ORDER BY id DESC LIMIT 1", (name,))
        finally:
            conn.execute("COMMIT")
        if row[2]:
            methods.add("totp")
        return UserRecord(
            name=name,
            method=row[0],
            configure_later=bool(row[1]),
            enrolled=frozenset(cast(set[Method], methods)),
            totp_last_step=row[3],
            backup_codes_remaining=int(remaining),
            failures=int(row[4]),
            locked_until=row[5],
            last_reset=resets[0] if resets else None,
            created_at=row[6],
            updated_at=row[7],
            enrol_until=row[8],
            trust_not_before=row[9],
        )

    def list_users(self) -> list[str]:
        return [n for (n,) in self._db.conn().execute("SELECT name FROM users ORDER BY name")]

    def delete_user(self, user: str) -> bool:
        return self.delete_stored(identity_key(user))

    def delete_stored(self, name: str) -> bool:
        """Delete the user stored under exactly `name`, with everything of theirs."""
        with self._db.write() as conn:  # the children too: foreign keys may be off (repairs)
            for table in ("enrolments", "backup_codes", "reset_requests"):
                conn.execute(f"DELETE FROM {table} WHERE user = ?", (name,))  # noqa: S608
            cursor = conn.execute("DELETE FROM users WHERE name = ?", (name,))
        return cursor.rowcount == 1

    def set_method(
        self, user: str, method: Method | None, now: float, *, configure_later: bool = False
    ) -> None:
        """Set the user's method (None: the server default); enrolment data is kept."""
        if method is not None and method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        name = identity_key(user)
        with self._db.write() as conn:
            self._ensure(conn, name, now)
            conn.execute(
                "UPDATE users SET method = ?, configure_later = ?, updated_at = ? WHERE name = ?",
                (method, int(configure_later), now, name),
            )
            self._end_trust(conn, name, now)

    def clear_mfa(self, user: str, now: float) -> bool:
        """Forget method, TOTP secret, enrolments and backup codes (the lost-device fix)."""
        name = identity_key(user)
        with self._db.write() as conn:
            self._end_trust(conn, name, now)
            return self._clear_mfa(conn, name, now)

    @staticmethod
    def _clear_mfa(conn: sqlite3.Connection, name: str, now: float) -> bool:
        cursor = conn.execute(
            "UPDATE users SET method = NULL, totp_secret = NULL, totp_last_step = NULL,"
            " updated_at = ? WHERE name = ?",
            (now, name),
        )
        conn.execute("DELETE FROM enrolments WHERE user = ?", (name,))
        conn.execute("DELETE FROM backup_codes WHERE user = ?", (name,))
        return cursor.rowcount == 1

    # ----------------------------------------------------------------- TOTP

    def set_totp_secret(self, user: str, secret: str, now: float) -> None:
        """Store a new TOTP key (sealed); the replay marker restarts with it."""
        name = identity_key(user)
        sealed = self._box.seal(f"{name}:totp", secret.encode("utf-8"))
        with self._db.write() as conn:
            self._ensure(conn, name, now)
            conn.execute(
                "UPDATE users SET totp_secret = ?, totp_last_step = NULL, updated_at = ?"
                " WHERE name = ?",
                (sealed, now, name),
            )

    def get_totp_secret(self, user: str) -> str | None:
        name = identity_key(user)
        row = (
            self._db.conn()
            .execute("SELECT totp_secret FROM users WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None or row[0] is None:
            return None
        return self._box.open(f"{name}:totp", bytes(row[0])).decode("utf-8")

    def accept_totp_step(self, user: str, step: int) -> bool:
        """Record `step` as used; False if it is not newer than the last one (a replay).

        One conditional UPDATE is the compare-and-set: of two requests carrying the same
        code at the same moment, exactly one gets True (RFC 6238 section 5.2).
        """
        with self._db.unsynced() as conn:
            cursor = conn.execute(
                "UPDATE users SET totp_last_step = ? WHERE name = ? AND totp_secret IS NOT NULL"
                " AND (totp_last_step IS NULL OR totp_last_step < ?)",
                (step, identity_key(user), step),
            )
        return cursor.rowcount == 1

    # ----------------------------------------------------------------- other methods

    def set_enrolment(self, user: str, method: Method, data: Mapping[str, Any], now: float) -> None:
        """Store a method's enrolment data (YubiKey ids, email, phone...) as sealed JSON."""
        if method not in METHODS or method == "totp":
            raise ValueError(f"no enrolment data for {method!r} (TOTP: set_totp_secret)")
        name = identity_key(user)
        plain = json.dumps(dict(data), sort_keys=True, separators=(",", ":")).encode()
        sealed = self._box.seal(f"{name}:{method}", plain)
        with self._db.write() as conn:
            self._ensure(conn, name, now)
            conn.execute(
                "INSERT INTO enrolments (user, method, data, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user, method) DO UPDATE SET data = excluded.data,"
                " updated_at = excluded.updated_at",
                (name, method, sealed, now),
            )
            conn.execute("UPDATE users SET updated_at = ? WHERE name = ?", (now, name))
            if method == "yubikey":
                # A new key counts from its own counters, which the old key's marker would
                # reject; whoever re-binds a key then accepts the OTP used to bind it.
                conn.execute("UPDATE users SET yubikey_counter = NULL WHERE name = ?", (name,))

    def get_enrolment(self, user: str, method: Method) -> dict[str, Any] | None:
        name = identity_key(user)
        row = (
            self._db.conn()
            .execute("SELECT data FROM enrolments WHERE user = ? AND method = ?", (name, method))
            .fetchone()
        )
        if row is None:
            return None
        return cast(dict[str, Any], json.loads(self._box.open(f"{name}:{method}", row[0])))

    def clear_enrolment(self, user: str, method: Method, now: float) -> bool:
        name = identity_key(user)
        with self._db.write() as conn:
            if method == "totp":
                sql = "UPDATE users SET totp_secret = NULL, totp_last_step = NULL WHERE name = ?"
                cursor = conn.execute(sql + " AND totp_secret IS NOT NULL", (name,))
            else:
                cursor = conn.execute(
                    "DELETE FROM enrolments WHERE user = ? AND method = ?", (name, method)
                )
            conn.execute("UPDATE users SET updated_at = ? WHERE name = ?", (now, name))
        return cursor.rowcount == 1

    def accept_yubikey_counter(self, user: str, counter: int) -> bool:
        """Record a Yubico OTP counter as used; False unless it is newer than the last.

        The same single conditional UPDATE as `accept_totp_step`: of two requests with the
        same OTP, exactly one gets True. Only for users with a YubiKey enrolment.
        """
        cursor = self._db.conn().execute(
            "UPDATE users SET yubikey_counter = ? WHERE name = ?"
            " AND (yubikey_counter IS NULL OR yubikey_counter < ?)"
            " AND EXISTS (SELECT 1 FROM enrolments"
            " WHERE enrolments.user = users.name AND enrolments.method = 'yubikey')",
            (counter, identity_key(user), counter),
        )
        return cursor.rowcount == 1

    # ----------------------------------------------------------------- backup codes

    def replace_backup_codes(self, user: str, codes: Sequence[str], now: float) -> None:
        """Make `codes` the user's only backup codes (a new set voids the old one)."""
        name = identity_key(user)
        digests = {self._hasher.digest(name, code) for code in codes}
        if None in digests:
            raise ValueError("not a backup code")
        with self._db.write() as conn:
            self._ensure(conn, name, now)
            conn.execute("DELETE FROM backup_codes WHERE user = ?", (name,))
            conn.executemany(
                "INSERT INTO backup_codes (user, code_hash, created_at) VALUES (?, ?, ?)",
                [(name, digest, now) for digest in digests],
            )

    def consume_backup_code(self, user: str, code: str, now: float) -> bool:
        """Use up `code`; True at most once per code, even under concurrent calls."""
        name = identity_key(user)
        digest = self._hasher.digest(name, code)
        if digest is None:
            return False
        cursor = self._db.conn().execute(
            "UPDATE backup_codes SET used_at = ? WHERE user = ? AND code_hash = ?"
            " AND used_at IS NULL",
            (now, name, digest),
        )
        return cursor.rowcount == 1

    # ----------------------------------------------------------------- resets

    def request_reset(self, user: str, via: str, now: float) -> bool:
        """File a reset request; False when one is already pending (send no new email)."""
        name = identity_key(user)
        with self._db.write() as conn:
            self._ensure(conn, name, now)
            cursor = conn.execute(
                "INSERT OR IGNORE INTO reset_requests (user, requested_at, via, status)"
                " VALUES (?, ?, ?, 'pending')",
                (name, now, via),
            )
        return cursor.rowcount == 1

    def approve_reset(self, user: str, now: float) -> bool:
        """Approve the pending request and clear the user's MFA so they enrol again."""
        name = identity_key(user)
        with self._db.write() as conn:
            if not self._decide(conn, name, "approved", now):
                return False
            self._clear_mfa(conn, name, now)
            self._end_trust(conn, name, now)
        return True

    def clear_reset(self, user: str, now: float) -> bool:
        """Dismiss the pending request without touching the user's MFA."""
        with self._db.write() as conn:
            return self._decide(conn, identity_key(user), "cleared", now)

    @staticmethod
    def _decide(conn: sqlite3.Connection, name: str, status: ResetStatus, now: float) -> bool:
        cursor = conn.execute(
            "UPDATE reset_requests SET status = ?, decided_at = ?"
            " WHERE user = ? AND status = 'pending'",
            (status, now, name),
        )
        return cursor.rowcount == 1

    def list_resets(self, status: ResetStatus | None = "pending") -> list[ResetRequest]:
        if status is None:
            return self._resets(self._db.conn(), "ORDER BY id", ())
        return self._resets(self._db.conn(), "WHERE status = ? ORDER BY id", (status,))

    @staticmethod
    def _resets(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[ResetRequest]:
        rows = conn.execute(
            # `where` is always a literal of this module; values go through `args`.
            "SELECT id, user, requested_at, via, status, decided_at FROM reset_requests " + where,  # noqa: S608
            args,
        )
        return [ResetRequest(*row) for row in rows]

    # ----------------------------------------------------------------- lockout

    def lock_state(self, user: str, now: float) -> LockState:
        row = (
            self._db.conn()
            .execute(
                "SELECT failures, locked_until FROM users WHERE name = ?", (identity_key(user),)
            )
            .fetchone()
        )
        return LockState(0, None, False) if row is None else lock_view(row[0], row[1], now)

    def record_failure(
        self, user: str, now: float, max_failures: int, lockout_seconds: float
    ) -> LockState:
        """Count one failed attempt; lock for `lockout_seconds` at `max_failures`.

        A lockout is not extended by failures during it (a guesser cannot keep a user
        locked longer than one period per `max_failures` attempts); once it has expired
        the count starts again from zero.
        """
        check_lockout_arguments(max_failures, lockout_seconds)
        name = identity_key(user)
        with self._db.write() as conn:
            self._ensure(conn, name, now)
            failures, locked_until = conn.execute(
                "SELECT failures, locked_until FROM users WHERE name = ?", (name,)
            ).fetchone()
            state = lock_view(failures, locked_until, now)
            failures, locked_until = state.failures + 1, state.locked_until
            if locked_until is None and failures >= max_failures and lockout_seconds > 0:
                locked_until = now + lockout_seconds
            conn.execute(
                "UPDATE users SET failures = ?, locked_until = ? WHERE name = ?",
                (failures, locked_until, name),
            )
        return lock_view(failures, locked_until, now)

    def reset_failures(self, user: str) -> None:
        """Forget failures and any lockout (after a success, or by an operator). Not
        synced to disk (`_unsynced`): a reset lost in a power cut leaves a failure
        counted, which errs on the strict side."""
        with self._db.unsynced() as conn:
            conn.execute(
                "UPDATE users SET failures = 0, locked_until = NULL WHERE name = ?",
                (identity_key(user),),
            )

    # ----------------------------------------------------------------- trusted reconnects

    def revoke_trust(self, user: str, now: float) -> bool:
        """End the user's trusted reconnects (core/trust.py); False when unknown."""
        cursor = self._db.conn().execute(
            "UPDATE users SET trust_not_before = ?, updated_at = ? WHERE name = ?",
            (now, now, identity_key(user)),
        )
        return cursor.rowcount == 1

    def _end_trust(self, conn: sqlite3.Connection, name: str, now: float) -> None:
        """In the transaction that changes the user's MFA (a store short of migration 6,
        opened for a repair, has no trust to end)."""
        if self._trust_column:
            conn.execute("UPDATE users SET trust_not_before = ? WHERE name = ?", (now, name))

    # ----------------------------------------------------------------- enrolment windows

    def open_enrolment(self, user: str, until: float, now: float) -> None:
        """Let `user` enrol inside the RADIUS flow until `until` (replaces any window)."""
        name = identity_key(user)
        with self._db.write() as conn:
            self._ensure(conn, name, now)
            conn.execute(
                "UPDATE users SET enrol_until = ?, updated_at = ? WHERE name = ?",
                (until, now, name),
            )

    def close_enrolment(self, user: str, now: float) -> bool:
        """Close the user's window; False when none was open."""
        cursor = self._db.conn().execute(
            "UPDATE users SET enrol_until = NULL, updated_at = ? WHERE name = ?"
            " AND enrol_until IS NOT NULL",
            (now, identity_key(user)),
        )
        return cursor.rowcount == 1

    # ----------------------------------------------------------------- attempts

    def reserve_attempt(
        self, user: str, now: float, max_failures: int, lockout_seconds: float
    ) -> Reservation:
        """May `user` try a code now? Answered and counted in one step (records.reserved).

        BEGIN IMMEDIATE takes SQLite's write lock before the read, so concurrent
        reservations (threads, or another process on the file) are strictly serialised.
        """
        check_lockout_arguments(max_failures, lockout_seconds)
        name = identity_key(user)
        with self._db.write() as conn:
            self._ensure(conn, name, now)
            row = conn.execute(
                "SELECT failures, locked_until FROM users WHERE name = ?", (name,)
            ).fetchone()
            reservation = reserved(row[0], row[1], now, max_failures, lockout_seconds)
            if reservation.granted:
                conn.execute(
                    "UPDATE users SET failures = ?, locked_until = ? WHERE name = ?",
                    (reservation.lock.failures, reservation.lock.locked_until, name),
                )
        return reservation

    def release_attempt(self, user: str, now: float, max_failures: int) -> None:
        """Give back a reserved attempt whose result was not the user's fault."""
        name = identity_key(user)
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT failures, locked_until FROM users WHERE name = ?", (name,)
            ).fetchone()
            after = None if row is None else released(row[0], row[1], now, max_failures)
            if after is not None:
                conn.execute(
                    "UPDATE users SET failures = ?, locked_until = ? WHERE name = ?",
                    (after.failures, after.locked_until, name),
                )
