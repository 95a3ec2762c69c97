"""The PostgreSQL user store's schema, as ordered migrations (version N is
MIGRATIONS[N - 1], matching the SQLite store's version N)."""

from __future__ import annotations

from mfaproxy.store.rekey import REKEY, Rekey

# Ordered: version N is MIGRATIONS[N - 1]. Append, never edit a shipped entry: each is
# literal SQL, so nothing defined elsewhere (the method names) can change one.
MIGRATIONS: tuple[str | Rekey, ...] = (
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        method TEXT CHECK (method IS NULL
            OR method IN ('totp', 'yubikey', 'email', 'sms', 'duo', 'radius')),
        configure_later BOOLEAN NOT NULL DEFAULT FALSE,
        totp_secret BYTEA, totp_last_step BIGINT,
        failures INTEGER NOT NULL DEFAULT 0, locked_until DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE enrolments (
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        method TEXT NOT NULL CHECK (method IN ('totp', 'yubikey', 'email', 'sms', 'duo', 'radius')),
        data BYTEA NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (user_name, method));
    CREATE TABLE backup_codes (
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        code_hash BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION,
        PRIMARY KEY (user_name, code_hash));
    CREATE TABLE reset_requests (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        requested_at DOUBLE PRECISION NOT NULL, via TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'cleared')),
        decided_at DOUBLE PRECISION);
    CREATE INDEX reset_requests_by_user ON reset_requests (user_name, id);
    -- At most one pending request per user: asking twice must not mail twice.
    CREATE UNIQUE INDEX reset_one_pending ON reset_requests (user_name)
        WHERE status = 'pending';
    """,
    # 2: the last Yubico OTP counter accepted by local validation (session << 8 | use).
    "ALTER TABLE users ADD COLUMN yubikey_counter BIGINT;",
    # 3: the method names are checked by the code (config.multifactor.METHODS), not by
    # the schema, so adding a method needs no migration.
    """
    ALTER TABLE users DROP CONSTRAINT IF EXISTS users_method_check;
    ALTER TABLE enrolments DROP CONSTRAINT IF EXISTS enrolments_method_check;
    """,
    # 4: every user re-keyed by the one user-name normaliser (store/rekey.py).
    REKEY,
    # 5: the operator's inline-enrolment window (`users allow-enrolment`).
    "ALTER TABLE users ADD COLUMN enrol_until DOUBLE PRECISION;",
    # 6: trusted reconnects end for passes before this time (`users forget-trust`).
    "ALTER TABLE users ADD COLUMN trust_not_before DOUBLE PRECISION;",
)

# Creates the user's row if missing and row-locks it either way (ON CONFLICT DO UPDATE
# locks the conflicting row even when its WHERE rejects the update): the first step of
# every multi-statement write, so they all take their locks in the same order.
