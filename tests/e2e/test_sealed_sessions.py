"""End to end: finding 5. Someone with write access to Redis edits a challenge session
between the two rounds of a login; the real daemon must reject the answer
(`unknown_state`) and count it, where it used to accept the edited session: an
enrolment with the attacker's secret, or the admin group in the Access-Accept.

The edits are made in the real redis-server the daemon uses, through the ciphertext
(tests/store/test_sealed_state.py shows each edit yields exactly the intended
plaintext when the tag is not checked). An untouched session is accepted, so each
test can fail.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
import yaml
from argon2 import PasswordHasher

from mfaproxy.config.schema import load_config
from mfaproxy.core.session import is_well_formed_state, session_key
from mfaproxy.store.factory import open_user_store
from mfaproxy.store.records import UserRepository
from tests.store.test_sealed_state import blob_of, flip, with_blob
from tests.support.cluster import scrape
from tests.support.daemon import Daemon
from tests.support.nas import Reply, UdpNas, access_request, exchange
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

SECRET = "sealed-e2e-secret"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
ATTACKER = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"


@dataclass
class Setup:
    daemon: Daemon
    redis: RedisServer
    store: UserRepository
    totp: dict[str, str]
    metrics: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("sealed")
    users = {
        name: {"password_hash": FAST.hash(f"{name}-pw"), "groups": ["staff"]}
        for name in ("alice", "bobby", "carol", "dave", "erin")
    }
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    metrics_port = free_port()
    with RedisServer() as redis:
        config: dict[str, Any] = {
            "server": {
                "state_store": {"backend": "redis", "url": redis.url, "key_prefix": "sealed"},
                "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            },
            "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}],
            "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
            "replies": {"groups": [{"group": "admin", "attributes": {"Filter-Id": "admin"}}]},
            "access_policies": {"mfa": {"default_action": "mfa_required"}},
            "multifactor": {
                "enabled": ["totp"],
                "default": "totp",
                "enrol_unconfigured_users": True,
            },
        }
        daemon = Daemon(tmp, config)
        store = open_user_store(load_config(daemon.config_path))
        secrets: dict[str, str] = {}
        for user in ("alice", "carol", "dave", "erin"):
            secrets[user] = pyotp.random_base32()
            store.set_totp_secret(user, secrets[user], 0)
            store.set_method(user, "totp", 0)
        # bobby has no method: an operator's window lets him enrol inline
        store.open_enrolment("bobby", time.time() + 3600, 0)
        with daemon:
            yield Setup(daemon, redis, store, secrets, metrics_port)
        store.close()


@pytest.fixture
def nas(setup: Setup) -> Iterator[UdpNas]:
    client = UdpNas(setup.daemon.port)
    yield client
    client.close()


def first_round(nas: UdpNas, user: str) -> Reply:
    reply = exchange(nas, SECRET, access_request(SECRET, user, f"{user}-pw"))
    assert reply.challenged and reply.state is not None, reply.message
    return reply


def answer(nas: UdpNas, user: str, state: bytes, text: str) -> Reply:
    request = access_request(SECRET, user, text)
    request.AddAttribute("State", state)
    return exchange(nas, SECRET, request)


def redis_key(state: bytes) -> str:
    return f"sealed:challenge:v:{session_key(state)}"


def made_up_state(fill: int) -> bytes:
    """A State of the shape the daemon issues, that it never issued."""
    state = base64.urlsafe_b64encode(bytes(32 * [fill])).rstrip(b"=")
    assert is_well_formed_state(state)
    return state


def edit(setup: Setup, state: bytes, old: bytes, new: bytes, key: str | None = None) -> None:
    """Rewrite the stored session of `state` through its ciphertext (and store it under
    the Redis key `key` when given)."""
    client = setup.redis.client()
    try:
        raw = client.get(redis_key(state))
        assert raw is not None
        stored = json.loads(raw)
        key_file = setup.daemon.workdir / "state" / "master.key"
        master = key_file.read_bytes()
        stored["value"] = with_blob(flip(blob_of(stored["value"]), old, new, master))
        client.set(key or redis_key(state), json.dumps(stored), px=120_000)
    finally:
        client.close()


def rejected(setup: Setup, reason: str) -> float:
    found = scrape(setup.metrics)
    return found.get(f"mfaproxy_state_rejected_total{{namespace=challenge,reason={reason}}}", 0.0)


def test_an_untouched_session_is_accepted(setup: Setup, nas: UdpNas) -> None:
    first = first_round(nas, "alice")
    assert first.state is not None
    final = answer(nas, "alice", first.state, pyotp.TOTP(setup.totp["alice"]).now())
    assert final.accepted, final.message
    assert final.values("Filter-Id") == []


def test_the_admin_group_cannot_be_added(setup: Setup, nas: UdpNas) -> None:
    first = first_round(nas, "carol")
    assert first.state is not None
    before = rejected(setup, "unauthentic")
    edit(setup, first.state, b'"groups":["staff"]', b'"groups":["admin"]')
    final = answer(nas, "carol", first.state, pyotp.TOTP(setup.totp["carol"]).now())
    assert final.rejected and final.values("Filter-Id") == []
    setup.daemon.wait_audit(login_name="carol", reason="unknown_state")
    assert rejected(setup, "unauthentic") == before + 1


def test_an_enrolment_cannot_get_the_attackers_secret(setup: Setup, nas: UdpNas) -> None:
    first = first_round(nas, "bobby")  # not enrolled: inline TOTP enrolment
    assert first.state is not None
    secret = first.message.split("s): ")[1].split(" then")[0].replace(" ", "")
    assert len(secret) == len(ATTACKER)
    stored = setup.redis.client()
    try:
        assert secret.encode() not in (stored.get(redis_key(first.state)) or b"")
    finally:
        stored.close()
    edit(setup, first.state, secret.encode(), ATTACKER.encode())
    final = answer(nas, "bobby", first.state, pyotp.TOTP(ATTACKER).now())
    assert final.rejected
    setup.daemon.wait_audit(login_name="bobby", reason="unknown_state")
    assert setup.store.get_totp_secret("bobby") is None


def test_a_code_session_cannot_become_another_users(setup: Setup, nas: UdpNas) -> None:
    first = first_round(nas, "dave")
    assert first.state is not None
    edit(setup, first.state, b'"user":"dave"', b'"user":"erin"')
    final = answer(nas, "erin", first.state, pyotp.TOTP(setup.totp["erin"]).now())
    assert final.rejected
    setup.daemon.wait_audit(login_name="erin", reason="unknown_state")


def test_a_session_moved_to_another_state_is_rejected(setup: Setup, nas: UdpNas) -> None:
    first = first_round(nas, "erin")
    assert first.state is not None
    other = made_up_state(0x41)
    before = rejected(setup, "unauthentic")
    edit(setup, first.state, b'"stage":"code"', b'"stage":"code"', key=redis_key(other))
    final = answer(nas, "erin", other, pyotp.TOTP(setup.totp["erin"]).now())
    assert final.rejected
    assert rejected(setup, "unauthentic") == before + 1


def test_a_session_written_into_redis_is_rejected(setup: Setup, nas: UdpNas) -> None:
    """The finding as reported: a session made up in Redis, in the format the daemon
    used to store, enrolling the attacker's secret for alice with the admin group."""
    state = made_up_state(0x42)
    session = {
        "user": "alice",
        "login_name": "alice",
        "client": "vpn",
        "nas": "127.0.0.1",
        "stage": "enrol",
        "method": "totp",
        "pending": {"secret": ATTACKER},
        "attempts": 0,
        "primary": {"backend": "local", "groups": ["admin"], "reply_attributes": []},
        "email": None,
        "mobile": None,
        "prompt": "",
    }
    client = setup.redis.client()
    try:
        client.set(redis_key(state), json.dumps({"expires": 2e9, "value": session}), px=60_000)
    finally:
        client.close()
    before = rejected(setup, "malformed")
    final = answer(nas, "alice", state, pyotp.TOTP(ATTACKER).now())
    assert final.rejected and final.values("Filter-Id") == []
    assert rejected(setup, "malformed") == before + 1
    assert setup.store.get_totp_secret("alice") == setup.totp["alice"]
