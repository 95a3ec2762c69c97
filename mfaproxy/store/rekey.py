"""Migration 4 of both user stores: re-key every user with the one user-name normaliser.

Stores before it keyed users by `strip().lower()` of the name as typed; since then every
key is `core.identity.normalise` (strip, NFKC, casefold) of the directory's identity.
The two agree on ASCII; they differ on names such as `Stra\\u00dfe` (`stra\\u00dfe` before,
`strasse` now) or a full-width letter. Each stored name is renamed to its new key, with
its enrolments, reset requests and sealed secrets (re-sealed, since the record id bound
into each ciphertext names the user). Backup codes are MACs over the user name and the
code, which is not stored, so a renamed user's codes cannot follow: they are removed and
logged (`identity_migration.backup_codes_voided`); the operator issues a new set.

Two stored names with the same new key (`stra\\u00dfe` and `strasse`: one user and an
alias someone enrolled under, and nothing says which is which) are never merged: the
migration changes nothing and raises `IdentityCollisionError`, so the daemon refuses to
start with the list, and `mfaproxy users collisions` shows the records and lets the
operator keep one (store opened with `migrate_to=REKEY_VERSION - 1`).

This step is code, not literal SQL, because SQL has no NFKC. It cannot drift: Unicode's
stability policies fix NFKC and case folding for assigned characters, and the typed-name
checks refuse unassigned ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from mfaproxy.core.identity import normalise
from mfaproxy.errors import DecryptionError, IdentityCollisionError
from mfaproxy.store.crypto import SecretBox

log = structlog.get_logger(__name__)

# The schema version this step produces, in both stores.
REKEY_VERSION = 4


# A sqlite3 or psycopg connection: both have execute(query, params) returning a cursor.
Executor = Any


class Rekey:
    """The marker for this step in a store's MIGRATIONS (the others are literal SQL)."""


REKEY = Rekey()


@dataclass(frozen=True)
class RekeyPlan:
    renames: dict[str, str]  # stored name -> its new key, for names that change
    # new key -> the stored names that would share it (two or more), or that would be
    # empty (the key ""): reported, never merged
    collisions: dict[str, tuple[str, ...]]


def plan_rekey(names: Iterable[str]) -> RekeyPlan:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(normalise(name), []).append(name)
    collisions = {
        key: tuple(sorted(members))
        for key, members in groups.items()
        if len(members) > 1 or not key
    }
    renames = {
        members[0]: key
        for key, members in groups.items()
        if key not in collisions and members[0] != key
    }
    return RekeyPlan(renames, collisions)


def collision_message(collisions: dict[str, tuple[str, ...]]) -> str:
    groups = "; ".join(
        f"{key!r} <- {', '.join(repr(n) for n in names)}"
        for key, names in sorted(collisions.items())
    )
    return (
        f"{len(collisions)} identities would be shared by several stored users under the"
        f" one user-name normaliser ({groups}); nothing was changed. Keep one record of"
        " each with `mfaproxy users collisions`"
    )


@dataclass(frozen=True)
class Dialect:
    """Where the two stores' schemas differ: the child tables' user column, the
    placeholder, and how a user row is renamed with its children in one step."""

    user_column: str  # enrolments, backup_codes, reset_requests
    placeholder: str
    rename: Callable[[Executor, str, str], None]

    def sql(self, query: str) -> str:
        return query.replace("{user}", self.user_column).replace("?", self.placeholder)


def rename_sqlite(conn: Executor, old: str, new: str) -> None:
    # Foreign keys are off during migrations (store/users.py _migrate), and checked after.
    conn.execute("UPDATE users SET name = ? WHERE name = ?", (new, old))
    for table in ("enrolments", "backup_codes", "reset_requests"):
        conn.execute(f"UPDATE {table} SET user = ? WHERE user = ?", (new, old))  # noqa: S608


def rename_postgres(conn: Executor, old: str, new: str) -> None:
    # One statement: PostgreSQL checks NO ACTION foreign keys at its end, when parent
    # and children have all moved.
    conn.execute(
        "WITH u AS (UPDATE users SET name = %(new)s WHERE name = %(old)s),"
        " e AS (UPDATE enrolments SET user_name = %(new)s WHERE user_name = %(old)s),"
        " b AS (UPDATE backup_codes SET user_name = %(new)s WHERE user_name = %(old)s)"
        " UPDATE reset_requests SET user_name = %(new)s WHERE user_name = %(old)s",
        {"new": new, "old": old},
    )


SQLITE = Dialect("user", "?", rename_sqlite)
POSTGRES = Dialect("user_name", "%s", rename_postgres)


def _reseal(box: SecretBox, old_id: str, new_id: str, blob: bytes) -> bytes | None:
    try:
        return box.seal(new_id, box.open(old_id, blob))
    except DecryptionError:
        # Unusable already (another key, altered): left as it was, and as unusable.
        log.error("identity_migration.secret_unreadable", record=old_id)
        return None


def _move_secrets(conn: Executor, dialect: Dialect, box: SecretBox, old: str, new: str) -> None:
    row = conn.execute(dialect.sql("SELECT totp_secret FROM users WHERE name = ?"), (new,))
    for (secret,) in row.fetchall():
        if secret is not None:
            sealed = _reseal(box, f"{old}:totp", f"{new}:totp", bytes(secret))
            if sealed is not None:
                update = dialect.sql("UPDATE users SET totp_secret = ? WHERE name = ?")
                conn.execute(update, (sealed, new))
    rows = conn.execute(
        dialect.sql("SELECT method, data FROM enrolments WHERE {user} = ?"), (new,)
    ).fetchall()
    for method, data in rows:
        sealed = _reseal(box, f"{old}:{method}", f"{new}:{method}", bytes(data))
        if sealed is not None:
            conn.execute(
                dialect.sql("UPDATE enrolments SET data = ? WHERE {user} = ? AND method = ?"),
                (sealed, new, method),
            )


def rekey_identities(conn: Executor, dialect: Dialect, box: SecretBox) -> RekeyPlan:
    """Rename every stored user to its normalised key, inside the caller's transaction.
    Raises IdentityCollisionError (before writing anything) when two would share one."""
    names = [name for (name,) in conn.execute("SELECT name FROM users").fetchall()]
    plan = plan_rekey(names)
    if plan.collisions:
        raise IdentityCollisionError(plan.collisions, collision_message(plan.collisions))
    for old, new in sorted(plan.renames.items()):
        dialect.rename(conn, old, new)
        _move_secrets(conn, dialect, box, old, new)
        voided = conn.execute(
            dialect.sql("DELETE FROM backup_codes WHERE {user} = ? AND used_at IS NULL"), (new,)
        ).rowcount
        conn.execute(dialect.sql("DELETE FROM backup_codes WHERE {user} = ?"), (new,))
        log.warning("identity_migration.renamed", stored=old, identity=new)
        if voided:
            log.warning("identity_migration.backup_codes_voided", user=new, count=voided)
    return plan
