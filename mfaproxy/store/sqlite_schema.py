"""The SQLite user store's schema, as ordered migrations (version N is
MIGRATIONS[N - 1], the same step as version N of the PostgreSQL store's, store/pg_schema.py),
and the statement splitter that runs a migration inside the store's own transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from mfaproxy.store.rekey import REKEY, Rekey

# Ordered: version N is MIGRATIONS[N - 1]. Append, never edit a shipped entry: each is
# literal SQL, so nothing defined elsewhere (the method names) can change one.
MIGRATIONS: tuple[str | Rekey, ...] = (
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        method TEXT CHECK (method IS NULL
            OR method IN ('totp', 'yubikey', 'email', 'sms', 'duo', 'radius')),
        configure_later INTEGER NOT NULL DEFAULT 0,
        totp_secret BLOB, totp_last_step INTEGER,
        failures INTEGER NOT NULL DEFAULT 0, locked_until REAL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL);
    CREATE TABLE enrolments (
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        method TEXT NOT NULL CHECK (method IN ('totp', 'yubikey', 'email', 'sms', 'duo', 'radius')),
        data BLOB NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (user, method));
    CREATE TABLE backup_codes (
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        code_hash BLOB NOT NULL, created_at REAL NOT NULL, used_at REAL,
        PRIMARY KEY (user, code_hash));
    CREATE TABLE reset_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        requested_at REAL NOT NULL, via TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'cleared')),
        decided_at REAL);
    -- At most one pending request per user: asking twice must not mail twice.
    CREATE UNIQUE INDEX reset_one_pending ON reset_requests(user) WHERE status = 'pending';
    """,
    # 2: the last Yubico OTP counter accepted by local validation (session << 8 | use).
    "ALTER TABLE users ADD COLUMN yubikey_counter INTEGER;",
    # 3: the method names are checked by the code (config.multifactor.METHODS), not by
    # the schema, so adding a method needs no migration. SQLite cannot drop a CHECK: the
    # two tables are rebuilt (https://sqlite.org/lang_altertable.html, "other kinds of
    # table schema changes"), with foreign keys off for the migration (see _migrate).
    """
    CREATE TABLE users_v3 (
        name TEXT PRIMARY KEY,
        method TEXT,
        configure_later INTEGER NOT NULL DEFAULT 0,
        totp_secret BLOB, totp_last_step INTEGER,
        failures INTEGER NOT NULL DEFAULT 0, locked_until REAL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL,
        yubikey_counter INTEGER);
    INSERT INTO users_v3 (name, method, configure_later, totp_secret, totp_last_step,
                          failures, locked_until, created_at, updated_at, yubikey_counter)
        SELECT name, method, configure_later, totp_secret, totp_last_step,
               failures, locked_until, created_at, updated_at, yubikey_counter FROM users;
    DROP TABLE users;
    ALTER TABLE users_v3 RENAME TO users;
    CREATE TABLE enrolments_v3 (
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        method TEXT NOT NULL,
        data BLOB NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (user, method));
    INSERT INTO enrolments_v3 (user, method, data, updated_at)
        SELECT user, method, data, updated_at FROM enrolments;
    DROP TABLE enrolments;
    ALTER TABLE enrolments_v3 RENAME TO enrolments;
    """,
    # 4: every user re-keyed by the one user-name normaliser (store/rekey.py).
    REKEY,
    # 5: the operator's inline-enrolment window (`users allow-enrolment`).
    "ALTER TABLE users ADD COLUMN enrol_until REAL;",
    # 6: trusted reconnects end for passes before this time (`users forget-trust`).
    "ALTER TABLE users ADD COLUMN trust_not_before REAL;",
)


def statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT first; split so a migration runs in our transaction.
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                yield buffer.strip()
            buffer = ""
