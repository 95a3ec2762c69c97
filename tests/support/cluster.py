"""Pieces shared by the cluster end-to-end tests (tests/e2e/test_cluster*.py).

A cluster here is several mfaproxy daemons (or one supervisor and its workers) that
share one real redis-server (`server.state_store`), one real PostgreSQL schema
(`server.user_store`), one master key file (`server.secrets_key_file`, so each can open
the secrets the others sealed), one local users file and one fake Duo.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyotp
import yaml
from argon2 import PasswordHasher
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mfaproxy.config.schema import load_config
from mfaproxy.store.factory import open_user_store
from mfaproxy.store.records import UserRepository
from tests.support.daemon import Daemon
from tests.support.duo_fake import FakeDuo
from tests.support.nas import Reply, UdpNas, access_request, exchange
from tests.support.ports import free_ports
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer

T = TypeVar("T")

SECRET = "cluster-secret"
APPEND_SOURCE = "127.0.0.3"  # the `legacy` client: second factor appended to the password
# Cheap argon2 parameters: these tests are about the cluster, not hash strength.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
POLL_INTERVAL = 0.05


def password(user: str) -> str:
    return f"{user}-pw"


def new_schema(server: PostgresServer, name: str) -> str:
    """A fresh schema on `server`; the DSN selects it through search_path."""
    with server.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return make_conninfo(server.dsn, options=f"-c search_path={name}")


@dataclass
class Cluster:
    """What every instance shares; `daemon()` makes one more instance of it."""

    tmp: Path
    redis: RedisServer
    dsn: str
    duo: FakeDuo
    users: list[str]
    totp: dict[str, str]
    store: UserRepository | None = None

    @property
    def key_file(self) -> Path:
        return self.tmp / "master.key"

    @property
    def users_file(self) -> Path:
        return self.tmp / "users.yaml"

    def config(self, **server: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "secrets_key_file": str(self.key_file),
            "state_store": {"backend": "redis", "url": self.redis.url},
            "user_store": {"backend": "postgres", "dsn": self.dsn},
            "shutdown_grace_seconds": 2,
            **server,
        }
        return {
            "server": settings,
            "clients": [
                {"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET},
                {
                    "name": "legacy",
                    "address": [APPEND_SOURCE],
                    "secret": SECRET,
                    "second_factor": "append",
                },
            ],
            "directory": {"backend": "local", "local": {"users_file": str(self.users_file)}},
            "multifactor": {
                "enabled": ["totp", "duo"],
                "default": "totp",
                "duo": {
                    "integration_key": self.duo.ikey,
                    "secret_key": self.duo.skey,
                    "api_hostname": self.duo.api_hostname,
                    "ca_file": str(self.duo.ca_file),
                    "timeout": 30,
                },
            },
        }

    def daemon(self, name: str, **server: Any) -> Daemon:
        """A daemon (not started) in its own directory, sharing everything else."""
        workdir = self.tmp / name
        workdir.mkdir()
        return Daemon(workdir, self.config(**server))

    def setup(self, duo_users: tuple[str, ...] = ()) -> None:
        """Write the users file and enrol TOTP for every user but `duo_users` (Duo)."""
        entries = {u: {"password_hash": FAST.hash(password(u))} for u in self.users}
        self.users_file.write_text(yaml.safe_dump({"users": entries}), encoding="utf-8")
        probe = self.tmp / "probe"
        probe.mkdir()
        probe_config = probe / "mfaproxy.yaml"
        probe_config.write_text(yaml.safe_dump(self.config(state_dir=str(probe))))
        # The store creates the shared key file and the schema before any daemon runs.
        self.store = open_user_store(load_config(probe_config))
        for user in self.users:
            if user in duo_users:
                self.store.set_method(user, "duo", 0)
            else:
                self.totp[user] = pyotp.random_base32()
                self.store.set_totp_secret(user, self.totp[user], 0)
                self.store.set_method(user, "totp", 0)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def code(self, user: str) -> str:
        return pyotp.TOTP(self.totp[user]).now()


def answer(nas: UdpNas, user: str, reply: Reply, text: str) -> Reply:
    """Answer the challenge `reply` (from any instance) through `nas`."""
    assert reply.challenged and reply.state is not None, reply.message
    request = access_request(SECRET, user, text)
    request.AddAttribute("State", reply.state)
    return exchange(nas, SECRET, request)


def first_round(nas: UdpNas, user: str, text: str | None = None) -> Reply:
    return exchange(nas, SECRET, access_request(SECRET, user, text or password(user)))


# --------------------------------------------------------------------------- metrics


def scrape(port: int) -> dict[str, float]:
    """Every sample of a /metrics page, keyed `name{label=value,...}` (labels sorted)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(port: int, prefix: str) -> float:
    """The sum of the samples whose key starts with `prefix` (0 when none yet)."""
    return sum(v for k, v in scrape(port).items() if k.startswith(prefix))


def free_port_pair() -> int:
    """A TCP port p with p + 1 free as well (worker i serves metrics on p + i)."""
    return free_ports(2)


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 20) -> T:
    """Bounded polling for a condition that has no event (a metric, a recovery)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_INTERVAL)  # polling interval, not a synchronisation delay


def count_events(daemon: Daemon, event: str, at_least: int, timeout: float = 30) -> None:
    """Wait until `daemon` (and its workers: one stream) logged `event` `at_least` times."""

    def enough(e: dict[str, Any]) -> bool:
        seen = sum(1 for x in daemon.events if x.get("event") == event)
        return e.get("event") == event and seen >= at_least

    daemon.wait_for(enough, timeout)


def wait_new(daemon: Daemon, mark: int, event: str, timeout: float = 30, **fields: Any) -> None:
    """Wait for `event` (with `fields`) logged after the first `mark` events."""

    def new(e: dict[str, Any]) -> bool:
        if e.get("event") != event or any(e.get(k) != v for k, v in fields.items()):
            return False
        return any(x is e for x in daemon.events[mark:])

    daemon.wait_for(new, timeout)
