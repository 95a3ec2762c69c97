"""Red team 2, end to end: the daemon killed (SIGKILL: no drain, no goodbye) in the
middle of logins and started again on the same files, with the state store on the
host's SQLite file and in a real redis-server (the memory store forgets every
challenge by design: the answer is then `unknown_state`, and nothing else changes).

What must hold across the crash, each checked here:
- the State issued before the crash is answered after it exactly once: accepted once,
  then `unknown_state`, never a second Accept;
- the TOTP step used after the restart is still single-use (a new login with the same
  code is a wrong code, not an Accept);
- failures counted before the crash still count: the lockout starts at the configured
  number of wrong codes in total, not per process lifetime;
- a State the previous process accepted is still used up.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.e2e.methods_common import SECRET, answer, daemon_config, open_store, password
from tests.support.daemon import Daemon
from tests.support.nas import Reply, UdpNas, access_request, exchange
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

MAX_FAILURES = 3


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def state_store(backend: str, redis: RedisServer) -> dict[str, Any]:
    if backend == "redis":
        return {"backend": "redis", "url": redis.url}
    return {"backend": "sqlite"}


class Restartable:
    """One daemon's configuration and files; `start()` runs it again on the same
    port, `crash()` kills it with SIGKILL."""

    def __init__(self, tmp: Path, store: dict[str, Any]) -> None:
        multifactor = {
            "enabled": ["totp"],
            "default": "totp",
            "lockout": {"max_failures": MAX_FAILURES, "lockout_seconds": 900},
        }
        users: dict[str, dict[str, Any]] = {"alice": {}, "bob": {}, "carol": {}}
        self.tmp = tmp
        self.config = daemon_config(tmp, users, multifactor, server={"state_store": store})
        self.port: int | None = None
        self.daemon: Daemon | None = None
        self.keys: dict[str, str] = {}

    def enrol(self) -> None:
        probe = Daemon(self.tmp, self.config)  # writes the config file; not started
        self.port = probe.port
        store = open_store(probe)
        for user in ("alice", "bob", "carol"):
            self.keys[user] = pyotp.random_base32()
            store.set_totp_secret(user, self.keys[user], 0)
            store.set_method(user, "totp", 0)
        store.close()

    def start(self) -> Daemon:
        daemon = Daemon(self.tmp, self.config)
        assert self.port is not None
        daemon.port = self.port  # the config names the first port: a NAS keeps using it
        self.daemon = daemon.start()
        return daemon

    def crash(self) -> None:
        assert self.daemon is not None and self.daemon.proc is not None
        self.daemon.proc.send_signal(signal.SIGKILL)
        assert self.daemon.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def code(self, user: str) -> str:
        return pyotp.TOTP(self.keys[user]).now()


@pytest.fixture(params=["sqlite", "redis"])
def node(
    request: pytest.FixtureRequest, tmp_path: Path, redis: RedisServer
) -> Iterator[Restartable]:
    restartable = Restartable(tmp_path, state_store(str(request.param), redis))
    restartable.enrol()
    try:
        yield restartable
    finally:
        restartable.stop()


def first_round(nas: UdpNas, user: str) -> Reply:
    reply = exchange(nas, SECRET, access_request(SECRET, user, password(user)))
    assert reply.challenged, reply.message
    return reply


def test_a_challenge_open_at_the_crash_is_answered_once_after_it(node: Restartable) -> None:
    before = node.start()
    nas = UdpNas(before.port)
    try:
        open_at_crash = first_round(nas, "alice")
        carol = first_round(nas, "carol")
        carol_code = node.code("carol")
        assert answer(nas, carol, "carol", carol_code).accepted  # used before the crash
        # bob: wrong codes up to one short of the lockout, before the crash
        for _ in range(MAX_FAILURES - 1):
            retry = answer(nas, first_round(nas, "bob"), "bob", "000000")
            assert retry.challenged, retry.message  # "wrong code, try again"
        node.crash()

        after = node.start()
        # a State used before the crash stays used (with the code that was right)
        assert answer(nas, carol, "carol", carol_code).rejected
        after.wait_audit(login_name="carol", reason="unknown_state")
        code = node.code("alice")
        assert answer(nas, open_at_crash, "alice", code).accepted
        assert answer(nas, open_at_crash, "alice", code).rejected  # used up now
        assert len(after.audit(login_name="alice", reason="unknown_state")) == 1
        # the TOTP step used after the restart is single-use: a new login with it fails
        again = answer(nas, first_round(nas, "alice"), "alice", code)
        assert again.challenged and "Wrong code" in again.message, again.message
        # bob's failures from before the crash count: one more wrong code locks him out
        locked = answer(nas, first_round(nas, "bob"), "bob", "000000")
        assert locked.rejected, locked.message
        after.wait_audit(login_name="bob", reason="locked_out")
        refused = exchange(nas, SECRET, access_request(SECRET, "bob", password("bob")))
        assert refused.rejected  # even his next first round
    finally:
        nas.close()
    assert len(after.audit(login_name="alice", outcome="accept")) == 1
    assert after.audit(login_name="carol", outcome="accept") == []
    assert "Traceback" not in after.output
