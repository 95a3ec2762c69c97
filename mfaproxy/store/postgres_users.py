"""The durable user store on PostgreSQL (psycopg 3), for several daemons sharing one store.

`PostgresUserStore` keeps the `UserRepository` contract of the SQLite `UserStore`: the
same tables, the same sealing of secrets (`SecretBox` with record ids ``"<user>:totp"``
and ``"<user>:<method>"``), the same peppered backup-code hashes, the same answers. The
contract suite in tests/store/test_user_store_contract.py runs against both.

Atomicity across daemons. Every check-and-set is one SQL statement (a conditional
``UPDATE`` whose row count is the answer, or an upsert), so two daemons accepting the
same TOTP step, Yubico OTP counter or backup code cannot both win: under READ COMMITTED
the second writer waits for the first's row lock, then re-checks the condition against
the committed row. Operations of several statements (approving a reset and clearing the
user's MFA, replacing the backup codes...) are one transaction, so a crash between steps
leaves nothing half done; they lock the user's row first, the one lock order that keeps
them from deadlocking each other, and one rolled back by a deadlock or serialisation
failure anyway (nothing of it was written) is run again.

Schema. ``schema_version`` holds one row; `MIGRATIONS` are applied in order, in one
transaction, under a transaction-scoped advisory lock, so two daemons starting together
neither race nor apply a step twice. Version N here is the same step as version N of the
SQLite store's migrations. The tables live in the first schema of the connection's
``search_path`` (``options=-csearch_path=NAME`` in the DSN picks another one).

Availability: store/pg_database.py (timeouts, reused connections, `UserStoreUnavailable`,
the up/down metrics).

Durability is the server's: a committed write is durable as configured there (keep
``fsync`` and ``synchronous_commit`` on). Methods block; the daemon calls them through
`AsyncUserStore`'s thread pool. The store is thread-safe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import psycopg

from mfaproxy.config.multifactor import METHODS, Method
from mfaproxy.core.identity import identity_key
from mfaproxy.errors import StoreError
from mfaproxy.otp.backup_codes import BackupCodeHasher
from mfaproxy.store.crypto import SecretBox
from mfaproxy.store.pg_database import UNAVAILABLE, Connection, PgDatabase
from mfaproxy.store.pg_schema import MIGRATIONS
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
from mfaproxy.store.rekey import POSTGRES, Rekey, rekey_identities

# Transaction-scoped advisory lock serialising migrations ("mfaproxy" as a bigint).
MIGRATION_LOCK = int.from_bytes(b"mfaproxy", "big")
_SELECT_RECORD = (
    "SELECT u.method, u.configure_later, u.totp_secret IS NOT NULL, u.totp_last_step,"
    " u.failures, u.locked_until, u.created_at, u.updated_at,"
    " ARRAY(SELECT e.method FROM enrolments e WHERE e.user_name = u.name),"
    " (SELECT count(*) FROM backup_codes b"
    "  WHERE b.user_name = u.name AND b.used_at IS NULL), u.enrol_until, u.trust_not_before,"
    " r.id, r.user_name, r.requested_at, r.via, r.status, r.decided_at"
    " FROM users u LEFT JOIN LATERAL (SELECT * FROM reset_requests"
    "  WHERE user_name = u.name ORDER BY id DESC LIMIT 1) r ON true"
    " WHERE u.name = %s"
)
# The same on a store opened short of migration 5 (a repair before the re-key).
_SELECT_RECORD_BEFORE_WINDOWS = _SELECT_RECORD.replace("u.enrol_until", "NULL").replace(
    "u.trust_not_before", "NULL"
)

_LOCK_USER = (
    "INSERT INTO users (name, created_at, updated_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (name) DO UPDATE SET name = excluded.name WHERE false"
)

_SELECT_RESETS = "SELECT id, user_name, requested_at, via, status, decided_at FROM reset_requests"


class PostgresUserStore:
    """`UserRepository` on PostgreSQL; see the module docstring for the guarantees.

    `dsn` is a libpq connection string or URI; `connect_timeout` (whole seconds, at least
    2, as libpq counts them) bounds each connection attempt and `statement_timeout` each
    statement. Raises `UserStoreUnavailable` when the server cannot be reached, also from
    the constructor, which applies pending migrations.
    """

    def __init__(
        self,
        dsn: str,
        key: bytes,
        *,
        connect_timeout: float = 5.0,
        statement_timeout: float = 5.0,
        max_idle: int = 8,
        migrate_to: int | None = None,
    ) -> None:
        self._box = SecretBox(key)
        self._hasher = BackupCodeHasher.from_master_key(key)
        self._db = PgDatabase(
            dsn,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            max_idle=max_idle,
        )
        self.server = self._db.server
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
        def migrate(conn: Connection) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            # Nothing is written when the schema is current, so a read-only server (a
            # standby) can still serve reads.
            exists = conn.execute("SELECT to_regclass('schema_version')").fetchone()
            if exists is None or exists[0] is None:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            current = 0 if row is None else int(row[0])
            if current >= target and current <= len(MIGRATIONS):
                return
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"PostgreSQL {self.server}: schema version {current} is newer than this"
                    f" mfaproxy ({len(MIGRATIONS)}); upgrade mfaproxy"
                )
            for version, script in enumerate(MIGRATIONS[current:target], start=current + 1):
                try:
                    if isinstance(script, Rekey):
                        rekey_identities(conn, POSTGRES, self._box)
                    else:
                        conn.execute(script)
                except UNAVAILABLE:
                    raise
                except psycopg.Error as exc:
                    raise StoreError(
                        f"PostgreSQL {self.server}: migration {version} failed: {exc}"
                    ) from exc
            conn.execute("UPDATE schema_version SET version = %s", (target,))

        self._db.transaction(migrate)

    def schema_version(self) -> int:
        row = self._db.one("SELECT version FROM schema_version", ())
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        """Close the idle connections; those in use close when their call returns."""
        self._db.close()

    # ----------------------------------------------------------------- users

    def get_user(self, user: str) -> UserRecord | None:
        return self.stored_record(identity_key(user))

    def stored_record(self, name: str) -> UserRecord | None:
        """The record stored under exactly `name` (for repairs: no normalisation)."""
        query = _SELECT_RECORD if self._enrolment_windows else _SELECT_RECORD_BEFORE_WINDOWS
        row = self._db.one(query, (name,))  # one statement: one snapshot
        if row is None:
            return None
        methods = set(row[8])
        if row[2]:
            methods.add("totp")
        return UserRecord(
            name=name,
            method=row[0],
            configure_later=bool(row[1]),
            enrolled=frozenset(cast(set[Method], methods)),
            totp_last_step=row[3],
            backup_codes_remaining=int(row[9]),
            failures=int(row[4]),
            locked_until=row[5],
            last_reset=None if row[12] is None else ResetRequest(*row[12:]),
            created_at=row[6],
            updated_at=row[7],
            enrol_until=row[10],
            trust_not_before=row[11],
        )

    def list_users(self) -> list[str]:
        # COLLATE "C": byte order whatever the database's locale, as SQLite sorts
        return [n for (n,) in self._db.all('SELECT name FROM users ORDER BY name COLLATE "C"', ())]

    def delete_user(self, user: str) -> bool:
        return self.delete_stored(identity_key(user))

    def delete_stored(self, name: str) -> bool:
        """Delete the user stored under exactly `name` (the children cascade)."""
        return self._db.rowcount("DELETE FROM users WHERE name = %s", (name,)) == 1

    def set_method(
        self, user: str, method: Method | None, now: float, *, configure_later: bool = False
    ) -> None:
        """Set the user's method (None: the server default); enrolment data is kept."""
        if method is not None and method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        name = identity_key(user)

        def set_it(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO users (name, method, configure_later, created_at, updated_at)"
                " VALUES (%(name)s, %(method)s, %(later)s, %(now)s, %(now)s)"
                " ON CONFLICT (name) DO UPDATE SET method = excluded.method,"
                " configure_later = excluded.configure_later, updated_at = excluded.updated_at",
                {"name": name, "method": method, "later": configure_later, "now": now},
            )
            self._end_trust(conn, name, now)

        self._db.transaction(set_it)

    def clear_mfa(self, user: str, now: float) -> bool:
        """Forget method, TOTP secret, enrolments and backup codes (the lost-device fix)."""
        name = identity_key(user)

        def clear(conn: Connection) -> bool:
            cleared = self._clear_mfa(conn, name, now)
            self._end_trust(conn, name, now)
            return cleared

        return self._db.transaction(clear)

    @staticmethod
    def _clear_mfa(conn: Connection, name: str, now: float) -> bool:
        cursor = conn.execute(  # the user's row first: the common lock order
            "UPDATE users SET method = NULL, totp_secret = NULL, totp_last_step = NULL,"
            " updated_at = %s WHERE name = %s",
            (now, name),
        )
        conn.execute("DELETE FROM enrolments WHERE user_name = %s", (name,))
        conn.execute("DELETE FROM backup_codes WHERE user_name = %s", (name,))
        return cursor.rowcount == 1

    # ----------------------------------------------------------------- TOTP

    def set_totp_secret(self, user: str, secret: str, now: float) -> None:
        """Store a new TOTP key (sealed); the replay marker restarts with it."""
        name = identity_key(user)
        sealed = self._box.seal(f"{name}:totp", secret.encode("utf-8"))
        self._db.rowcount(
            "INSERT INTO users (name, totp_secret, created_at, updated_at)"
            " VALUES (%(name)s, %(sealed)s, %(now)s, %(now)s)"
            " ON CONFLICT (name) DO UPDATE SET totp_secret = excluded.totp_secret,"
            " totp_last_step = NULL, updated_at = excluded.updated_at",
            {"name": name, "sealed": sealed, "now": now},
        )

    def get_totp_secret(self, user: str) -> str | None:
        name = identity_key(user)
        row = self._db.one("SELECT totp_secret FROM users WHERE name = %s", (name,))
        if row is None or row[0] is None:
            return None
        return self._box.open(f"{name}:totp", bytes(row[0])).decode("utf-8")

    def accept_totp_step(self, user: str, step: int) -> bool:
        """Record `step` as used; False if it is not newer than the last one (a replay).
        Committed without waiting for the WAL flush (`_unsynced`), like SQLite's."""
        return (
            self._db.unsynced(
                "UPDATE users SET totp_last_step = %(step)s WHERE name = %(name)s"
                " AND totp_secret IS NOT NULL"
                " AND (totp_last_step IS NULL OR totp_last_step < %(step)s)",
                {"step": step, "name": identity_key(user)},
            )
            == 1
        )

    # ----------------------------------------------------------------- other methods

    def set_enrolment(self, user: str, method: Method, data: Mapping[str, Any], now: float) -> None:
        """Store a method's enrolment data (YubiKey ids, email, phone...) as sealed JSON."""
        if method not in METHODS or method == "totp":
            raise ValueError(f"no enrolment data for {method!r} (TOTP: set_totp_secret)")
        name = identity_key(user)
        plain = json.dumps(dict(data), sort_keys=True, separators=(",", ":")).encode()
        sealed = self._box.seal(f"{name}:{method}", plain)

        def write(conn: Connection) -> None:
            # A new key counts from its own counters, which the old key's marker would
            # reject: (re)binding a YubiKey restarts the counter.
            conn.execute(
                "INSERT INTO users (name, created_at, updated_at)"
                " VALUES (%(name)s, %(now)s, %(now)s)"
                " ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at,"
                " yubikey_counter = CASE WHEN %(rebind)s THEN NULL"
                " ELSE users.yubikey_counter END",
                {"name": name, "now": now, "rebind": method == "yubikey"},
            )
            conn.execute(
                "INSERT INTO enrolments (user_name, method, data, updated_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (user_name, method)"
                " DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                (name, method, sealed, now),
            )

        self._db.transaction(write)

    def get_enrolment(self, user: str, method: Method) -> dict[str, Any] | None:
        name = identity_key(user)
        row = self._db.one(
            "SELECT data FROM enrolments WHERE user_name = %s AND method = %s", (name, method)
        )
        if row is None:
            return None
        opened = self._box.open(f"{name}:{method}", bytes(row[0]))
        return cast(dict[str, Any], json.loads(opened))

    def clear_enrolment(self, user: str, method: Method, now: float) -> bool:
        name = identity_key(user)

        def clear(conn: Connection) -> int:
            conn.execute("UPDATE users SET updated_at = %s WHERE name = %s", (now, name))
            if method == "totp":
                return conn.execute(
                    "UPDATE users SET totp_secret = NULL, totp_last_step = NULL"
                    " WHERE name = %s AND totp_secret IS NOT NULL",
                    (name,),
                ).rowcount
            return conn.execute(
                "DELETE FROM enrolments WHERE user_name = %s AND method = %s", (name, method)
            ).rowcount

        return self._db.transaction(clear) == 1

    def accept_yubikey_counter(self, user: str, counter: int) -> bool:
        """Record a Yubico OTP counter as used; False unless it is newer than the last."""
        return (
            self._db.rowcount(
                "UPDATE users SET yubikey_counter = %(counter)s WHERE name = %(name)s"
                " AND (yubikey_counter IS NULL OR yubikey_counter < %(counter)s)"
                " AND EXISTS (SELECT 1 FROM enrolments"
                " WHERE enrolments.user_name = users.name AND enrolments.method = 'yubikey')",
                {"counter": counter, "name": identity_key(user)},
            )
            == 1
        )

    # ----------------------------------------------------------------- backup codes

    def replace_backup_codes(self, user: str, codes: Sequence[str], now: float) -> None:
        """Make `codes` the user's only backup codes (a new set voids the old one)."""
        name = identity_key(user)
        digests = {self._hasher.digest(name, code) for code in codes}
        if None in digests:
            raise ValueError("not a backup code")

        def replace(conn: Connection) -> None:
            conn.execute(_LOCK_USER, (name, now, now))
            conn.execute("DELETE FROM backup_codes WHERE user_name = %s", (name,))
            conn.execute(
                "INSERT INTO backup_codes (user_name, code_hash, created_at)"
                " SELECT %s, code_hash, %s FROM unnest(%s::bytea[]) AS code_hash",
                (name, now, sorted(cast(set[bytes], digests))),
            )

        self._db.transaction(replace)

    def consume_backup_code(self, user: str, code: str, now: float) -> bool:
        """Use up `code`; True at most once per code, even under concurrent calls."""
        name = identity_key(user)
        digest = self._hasher.digest(name, code)
        if digest is None:
            return False
        return (
            self._db.rowcount(
                "UPDATE backup_codes SET used_at = %s WHERE user_name = %s AND code_hash = %s"
                " AND used_at IS NULL",
                (now, name, digest),
            )
            == 1
        )

    # ----------------------------------------------------------------- resets

    def request_reset(self, user: str, via: str, now: float) -> bool:
        """File a reset request; False when one is already pending (send no new email)."""
        name = identity_key(user)

        def request(conn: Connection) -> int:
            conn.execute(_LOCK_USER, (name, now, now))
            return conn.execute(
                "INSERT INTO reset_requests (user_name, requested_at, via, status)"
                " VALUES (%s, %s, %s, 'pending')"
                " ON CONFLICT (user_name) WHERE status = 'pending' DO NOTHING",
                (name, now, via),
            ).rowcount

        return self._db.transaction(request) == 1

    def approve_reset(self, user: str, now: float) -> bool:
        """Approve the pending request and clear the user's MFA, in one transaction."""
        name = identity_key(user)

        def approve(conn: Connection) -> bool:
            conn.execute("SELECT 1 FROM users WHERE name = %s FOR UPDATE", (name,))
            if not self._decide(conn, name, "approved", now):
                return False
            self._clear_mfa(conn, name, now)
            self._end_trust(conn, name, now)
            return True

        return self._db.transaction(approve)

    def clear_reset(self, user: str, now: float) -> bool:
        """Dismiss the pending request without touching the user's MFA."""
        name = identity_key(user)
        return self._db.run(lambda conn: self._decide(conn, name, "cleared", now))

    @staticmethod
    def _decide(conn: Connection, name: str, status: ResetStatus, now: float) -> bool:
        cursor = conn.execute(
            "UPDATE reset_requests SET status = %s, decided_at = %s"
            " WHERE user_name = %s AND status = 'pending'",
            (status, now, name),
        )
        return cursor.rowcount == 1

    def list_resets(self, status: ResetStatus | None = "pending") -> list[ResetRequest]:
        if status is None:
            rows = self._db.all(_SELECT_RESETS + " ORDER BY id", ())
        else:
            rows = self._db.all(_SELECT_RESETS + " WHERE status = %s ORDER BY id", (status,))
        return [ResetRequest(*row) for row in rows]

    # ----------------------------------------------------------------- lockout

    def lock_state(self, user: str, now: float) -> LockState:
        row = self._db.one(
            "SELECT failures, locked_until FROM users WHERE name = %s", (identity_key(user),)
        )
        return LockState(0, None, False) if row is None else lock_view(row[0], row[1], now)

    def record_failure(
        self, user: str, now: float, max_failures: int, lockout_seconds: float
    ) -> LockState:
        """Count one failed attempt; lock for `lockout_seconds` at `max_failures`.

        One upsert: a lockout in force is kept (failures during it count but do not
        extend it), an expired one restarts the count, and reaching `max_failures`
        starts a lockout. The SET expressions all read the row as it was.
        """
        check_lockout_arguments(max_failures, lockout_seconds)
        row = self._db.one(
            "INSERT INTO users AS u (name, created_at, updated_at, failures, locked_until)"
            " VALUES (%(name)s, %(now)s, %(now)s, 1, CASE WHEN 1 >= %(max)s"
            "  AND %(seconds)s > 0 THEN %(now)s + %(seconds)s END)"
            " ON CONFLICT (name) DO UPDATE SET"
            " failures = CASE WHEN u.locked_until <= %(now)s THEN 1 ELSE u.failures + 1 END,"
            " locked_until = CASE WHEN u.locked_until > %(now)s THEN u.locked_until"
            "  WHEN (CASE WHEN u.locked_until <= %(now)s THEN 1 ELSE u.failures + 1 END)"
            "   >= %(max)s AND %(seconds)s > 0 THEN %(now)s + %(seconds)s END"
            " RETURNING failures, locked_until",
            {
                "name": identity_key(user),
                "now": float(now),
                "max": max_failures,
                "seconds": float(lockout_seconds),
            },
        )
        assert row is not None  # an upsert with RETURNING returns its row
        return lock_view(row[0], row[1], now)

    def reset_failures(self, user: str) -> None:
        """Forget failures and any lockout (after a success, or by an operator); not
        waiting for the WAL flush: a reset lost in a server crash errs on the strict side."""
        self._db.unsynced(
            "UPDATE users SET failures = 0, locked_until = NULL WHERE name = %s",
            (identity_key(user),),
        )

    # ----------------------------------------------------------------- enrolment windows

    def revoke_trust(self, user: str, now: float) -> bool:
        """End the user's trusted reconnects (core/trust.py); False when unknown."""
        return (
            self._db.rowcount(
                "UPDATE users SET trust_not_before = %s, updated_at = %s WHERE name = %s",
                (now, now, identity_key(user)),
            )
            == 1
        )

    def _end_trust(self, conn: Connection, name: str, now: float) -> None:
        """In the transaction that changes the user's MFA (a store short of migration 6,
        opened for a repair, has no trust to end)."""
        if self._trust_column:
            conn.execute("UPDATE users SET trust_not_before = %s WHERE name = %s", (now, name))

    def open_enrolment(self, user: str, until: float, now: float) -> None:
        """Let `user` enrol inside the RADIUS flow until `until` (replaces any window)."""
        self._db.rowcount(
            "INSERT INTO users (name, enrol_until, created_at, updated_at)"
            " VALUES (%(name)s, %(until)s, %(now)s, %(now)s)"
            " ON CONFLICT (name) DO UPDATE SET enrol_until = excluded.enrol_until,"
            " updated_at = excluded.updated_at",
            {"name": identity_key(user), "until": until, "now": now},
        )

    def close_enrolment(self, user: str, now: float) -> bool:
        """Close the user's window; False when none was open."""
        return (
            self._db.rowcount(
                "UPDATE users SET enrol_until = NULL, updated_at = %s WHERE name = %s"
                " AND enrol_until IS NOT NULL",
                (now, identity_key(user)),
            )
            == 1
        )

    # ----------------------------------------------------------------- attempts

    def reserve_attempt(
        self, user: str, now: float, max_failures: int, lockout_seconds: float
    ) -> Reservation:
        """May `user` try a code now? Answered and counted in one transaction that holds
        the user's row lock from its first statement (records.reserved is the rule, the
        same as SQLite's), so reservations from every daemon are serialised."""
        check_lockout_arguments(max_failures, lockout_seconds)
        name = identity_key(user)

        def reserve(conn: Connection) -> Reservation:
            conn.execute(_LOCK_USER, (name, now, now))
            row = conn.execute(
                "SELECT failures, locked_until FROM users WHERE name = %s", (name,)
            ).fetchone()
            assert row is not None  # created and locked just above
            reservation = reserved(row[0], row[1], now, max_failures, lockout_seconds)
            if reservation.granted:
                conn.execute(
                    "UPDATE users SET failures = %s, locked_until = %s WHERE name = %s",
                    (reservation.lock.failures, reservation.lock.locked_until, name),
                )
            return reservation

        return self._db.transaction(reserve)

    def release_attempt(self, user: str, now: float, max_failures: int) -> None:
        """Give back a reserved attempt whose result was not the user's fault."""
        name = identity_key(user)

        def release(conn: Connection) -> None:
            row = conn.execute(
                "SELECT failures, locked_until FROM users WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            after = None if row is None else released(row[0], row[1], now, max_failures)
            if after is not None:
                conn.execute(
                    "UPDATE users SET failures = %s, locked_until = %s WHERE name = %s",
                    (after.failures, after.locked_until, name),
                )

        self._db.transaction(release)
