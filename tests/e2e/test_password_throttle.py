"""End to end: finding 4 (40 wrong passwords in 4.3 s, nothing recorded) against the real
daemon. Wrong passwords are counted, then refused without being checked, with their own
audit reason and metrics. The first wait is set to ten minutes so that nothing here
depends on how fast the machine is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher

from tests.support.cluster import scrape
from tests.support.daemon import Daemon
from tests.support.nas import UdpNas, access_request, exchange
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

SECRET = "throttle-e2e-secret"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    tmp: Path = tmp_path_factory.mktemp("throttle")
    users = {name: {"password_hash": FAST.hash(f"{name}-pw")} for name in ("alice", "bob")}
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    metrics = free_port()
    config: dict[str, Any] = {
        "server": {"metrics": {"listen": f"127.0.0.1:{metrics}"}},
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
        "password_throttle": {"user": {"initial_delay_seconds": 600, "lock_seconds": 900}},
    }
    with Daemon(tmp, config) as running:
        yield running, metrics


def attempt(nas: UdpNas, user: str, typed: str, station: str) -> tuple[int, str]:
    request = access_request(SECRET, user, typed, Calling_Station_Id=station)
    reply = exchange(nas, SECRET, request)
    return reply.code, reply.message


def test_wrong_passwords_are_counted_then_refused_unchecked(daemon: tuple[Daemon, int]) -> None:
    running, metrics = daemon
    nas = UdpNas(running.port)
    try:
        replies = [attempt(nas, "alice", f"guess-{i}", "203.0.113.5") for i in range(8)]
        right = attempt(nas, "alice", "alice-pw", "203.0.113.5")
        other = attempt(nas, "bob", "bob-pw", "203.0.113.5")  # same device, other user
    finally:
        nas.close()
    assert all(code == 3 for code, _ in replies)
    assert right[0] == 3 and "Try again later" in right[1]
    assert other[0] == 2
    running.wait_audit(login_name="bob", outcome="accept")
    reasons = [e["reason"] for e in running.audit(login_name="alice")]
    assert reasons == ["bad_password"] * 5 + ["password_throttled"] * 4
    throttled = running.audit(login_name="alice", reason="password_throttled")
    assert {e["password_throttle"] for e in throttled} == {"user"}
    assert all(0 < e["retry_after_seconds"] <= 600 for e in throttled)
    # One argon2 verification per checked password: the throttled ones were not.
    assert len([e for e in running.events if e.get("event") == "primary_checked"]) == 6
    found = scrape(metrics)
    assert found["mfaproxy_password_throttle_total{event=refused,scope=user}"] == 4
    assert found["mfaproxy_password_throttle_total{event=failure,scope=user}"] == 5
    assert found["mfaproxy_decisions_total{outcome=reject,reason=password_throttled}"] == 4
