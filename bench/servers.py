"""The servers the benchmark drives, and the users they know.

- `Mfaproxy`: the real daemon (`python -m mfaproxy serve`), JSON logs at `warning` (no
  log line per request); ready when it answers a Status-Server.
- FreeRADIUS and slapd come from tests/support (real processes on loopback).

Users share a small set of passwords (one hash per password and cost), because hashing
thousands of passwords at a production cost would take minutes; the verify cost per
request does not depend on it.
"""

from __future__ import annotations

import base64
import crypt
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from argon2 import PasswordHasher

from mfaproxy.directory.local import DEFAULT_COST, hasher_for
from mfaproxy.store.crypto import load_or_create_key
from mfaproxy.store.users import UserStore
from tests.support.freeradius import status_server_answered
from tests.support.ports import free_udp_port
from tests.support.slapd import LdapTestUser

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SECRET = "bench-shared-secret"
DISTINCT_PASSWORDS = 32
TOTP_PERIOD = 15  # the shortest period the configuration allows: more logins per user

# `default`: what `mfaproxy users hash-password` writes (the production cost);
# `cheap`: the cheapest argon2id there is (t=1, 8 KiB): what is left is the proxy.
PROFILES: dict[str, PasswordHasher] = {
    "default": hasher_for(DEFAULT_COST),
    "cheap": PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
}


def make_users(count: int, prefix: str = "bench-user") -> dict[str, str]:
    passwords = [
        f"bench-pw-{i:02d}-{random.Random(i).getrandbits(40):010x}"
        for i in range(DISTINCT_PASSWORDS)
    ]
    return {f"{prefix}-{i:05d}": passwords[i % DISTINCT_PASSWORDS] for i in range(count)}


def workload(users: dict[str, str], count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = sorted(users)
    return [(name, users[name]) for name in rng.choices(names, k=count)]


def _hash_distinct(passwords: set[str], hasher: Any) -> dict[str, str]:
    distinct = sorted(passwords)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(distinct, pool.map(hasher, distinct), strict=True))


def argon2_hashes(users: dict[str, str], profile: str) -> dict[str, str]:
    hashes = _hash_distinct(set(users.values()), PROFILES[profile].hash)
    return {name: hashes[password] for name, password in users.items()}


def sha512_crypt(password: str) -> str:
    """`$6$` (SHA-512 crypt, 5000 rounds): what FreeRADIUS operators store."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def crypt_hashes(users: dict[str, str]) -> dict[str, str]:
    hashes = _hash_distinct(set(users.values()), sha512_crypt)
    return {name: hashes[password] for name, password in users.items()}


def write_users_file(path: Path, hashes: dict[str, str]) -> None:
    users = {
        name: {"password_hash": value, "groups": ["vpn-users"]} for name, value in hashes.items()
    }
    path.write_text(yaml.safe_dump({"users": users}), encoding="utf-8")


def ldap_users(users: dict[str, str]) -> list[LdapTestUser]:
    return [LdapTestUser(name, password, ("vpn-users",)) for name, password in users.items()]


def totp_secrets(users: list[str]) -> dict[str, str]:
    rng = random.Random(6238)
    return {name: base64.b32encode(rng.randbytes(20)).decode() for name in users}


def enrol_totp(state_dir: Path, key_file: Path, secrets: dict[str, str]) -> None:
    """Enrol every user in TOTP in the daemon's SQLite store, before it starts.

    Written on tmpfs (fsync is free there), then copied to `state_dir`: the daemon
    then runs on a disk file, as in production."""
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="mfaproxy-bench-enrol-", dir="/dev/shm") as tmp:
        path = Path(tmp) / "users.sqlite3"
        store = UserStore(path, load_or_create_key(key_file))
        try:
            for name, secret in secrets.items():
                store.set_totp_secret(name, secret, now)
                store.set_method(name, "totp", now)
        finally:
            store.close()
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy2(path, state_dir / "users.sqlite3")


class Mfaproxy:
    """The real daemon with the given configuration sections (server.* merged)."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        log_level: str = "warning",
        repo: Path = REPO,
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.repo = repo  # the tree whose mfaproxy runs (an older commit, for a baseline)
        self.port = free_udp_port(HOST)
        self.config_path = workdir / "mfaproxy.yaml"
        self.log_path = workdir / "mfaproxy.log"
        server = {
            "listen": [f"{HOST}:{self.port}"],
            "log": {"format": "json", "level": log_level},
            "state_dir": str(workdir / "state"),
            **config.pop("server", {}),
        }
        document = {
            "server": server,
            "clients": [{"name": "bench", "address": [f"{HOST}/32"], "secret": SECRET}],
            **config,
        }
        self.config_path.write_text(yaml.safe_dump(document), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 240.0) -> None:
        argv = [sys.executable, "-m", "mfaproxy", "serve", "--config", str(self.config_path)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.repo, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if status_server_answered(HOST, self.port, SECRET, wait=0.1):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mfaproxy did not become ready:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> Mfaproxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
