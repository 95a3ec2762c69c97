"""What one identity costs: the typed-name checks and the normaliser per request, and
the identity migration (store/rekey.py) of a store written by an older version.

    .venv/bin/python -m bench.identity [--names 50000] [--users 20000]

Per request: `check_login_name` (the checks, the realm rules) plus `normalise`, on a mix
of ASCII, accented and realm-form names, microseconds per name, one thread. Migration:
a SQLite store at schema version 3 with `--users` users, one in 100 under a name the new
normaliser changes (each with a sealed TOTP secret and an enrolment to re-seal), opened
by this version: seconds for the whole migration. Reported in bench/README.md, never
asserted.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from mfaproxy.config.directory import RealmRule
from mfaproxy.core.identity import check_login_name, normalise
from mfaproxy.store.crypto import SecretBox
from mfaproxy.store.rekey import REKEY_VERSION
from mfaproxy.store.users import UserStore

KEY = bytes(range(32))
REALMS = [
    RealmRule(format="prefix", realms=["EXAMPLE"]),
    RealmRule(format="suffix", realms=["example.org"]),
]
SAMPLES = ["alice", "Bob.Smith", "EXAMPLE\\carol", "dave@example.org", "J\u00fcrgen", "stra\u00dfe"]


def per_name(count: int) -> float:
    names = [f"{SAMPLES[i % len(SAMPLES)]}{i}" for i in range(count)]
    started = time.perf_counter()
    for name in names:
        login = check_login_name(name, REALMS)
        if not isinstance(login, str):
            normalise(login.user)
    return (time.perf_counter() - started) / count * 1e6


def old_store(path: Path, users: int) -> None:
    UserStore(path, KEY, migrate_to=REKEY_VERSION - 1).close()
    box = SecretBox(KEY)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for i in range(users):
        name = f"stra\u00dfe{i}" if i % 100 == 0 else f"user{i}"
        secret = box.seal(f"{name}:totp", b"JBSWY3DPEHPK3PXP")
        conn.execute(
            "INSERT INTO users (name, method, totp_secret, created_at, updated_at)"
            " VALUES (?, 'totp', ?, 0, 0)",
            (name, secret),
        )
        data = box.seal(f"{name}:email", b'{"address":"x@example.org"}')
        conn.execute(
            "INSERT INTO enrolments (user, method, data, updated_at) VALUES (?, 'email', ?, 0)",
            (name, data),
        )
    conn.execute("COMMIT")
    conn.close()


def migration(users: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "users.sqlite3"
        old_store(path, users)
        started = time.perf_counter()
        UserStore(path, KEY).close()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=20_000)
    args = parser.parse_args()
    print(f"check_login_name + normalise: {per_name(args.names):.2f} us per name")
    renamed = args.users // 100
    took = migration(args.users)
    print(f"migration of {args.users} users ({renamed} renamed, re-sealed): {took:.2f} s")


if __name__ == "__main__":
    main()
