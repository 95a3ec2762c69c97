"""Hostile input through the whole engine, not only the codec: validly signed requests
with arbitrary user names, passwords, States, Proxy-State and station ids reach the
real daemon (a real FreeRADIUS behind it, so each costs milliseconds). Every one gets
an answer, no reply is over 4,096 octets, and nothing ends in a traceback or an
`internal_error`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfaproxy.config.schema import load_config
from mfaproxy.radius.constants import MAX_LENGTH, MAX_PROXY_STATE_OCTETS
from mfaproxy.store.factory import open_user_store
from tests.support.daemon import Daemon
from tests.support.freeradius import FreeRadiusServer, UserSpec
from tests.support.nas import UdpNas, access_request, exchange

pytestmark = pytest.mark.e2e

SECRET = "hostile-secret"
APPEND_SOURCE = "127.0.0.3"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("hostile")
    users = {"alice": UserSpec("alice-pw"), "bob": UserSpec("bob-pw")}
    with FreeRadiusServer(users, secret="upstream-secret") as upstream:
        config: dict[str, Any] = {
            "clients": [
                {"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET},
                {
                    "name": "legacy",
                    "address": [APPEND_SOURCE],
                    "secret": SECRET,
                    "second_factor": "append",
                },
            ],
            "directory": {
                "backend": "radius",
                "radius": {
                    "servers": [
                        {"host": upstream.host, "port": upstream.port, "secret": upstream.secret}
                    ],
                    "timeout": 2,
                    "retries": 0,
                },
            },
            "access_policies": {"mfa": {"default_action": "mfa_optional_per_user"}},
            "multifactor": {"enabled": ["totp"], "default": "totp", "alternate": ["backup_codes"]},
            # Hypothesis sends alice many wrong passwords; the later tests need her
            # challenge (throttling has its own tests: test_password_throttle.py).
            "password_throttle": {"enabled": False},
        }
        running = Daemon(tmp, config)
        store = open_user_store(load_config(running.config_path))
        store.set_totp_secret("alice", pyotp.random_base32(), 0)
        store.set_method("alice", "totp", 0)
        store.close()
        with running:
            yield running


@pytest.fixture(scope="module")
def nas(daemon: Daemon) -> Iterator[dict[str, UdpNas]]:
    sockets = {
        "challenge": UdpNas(daemon.port, timeout=5),
        "append": UdpNas(daemon.port, timeout=5, source=APPEND_SOURCE),
    }
    yield sockets
    for sock in sockets.values():
        sock.close()


def utf8_at_most(octets: int, **kwargs: Any) -> st.SearchStrategy[str]:
    return st.text(**kwargs).filter(lambda t: len(t.encode()) <= octets)


names = st.one_of(
    st.sampled_from(["alice", "ALICE", " alice", "alice ", "bob", "\talice", "\uff41lice"]),
    st.text(alphabet=" \t\r\n\x0b\x0c", min_size=1, max_size=8),  # blank in every way
    utf8_at_most(253, min_size=1, max_size=80),
)
passwords = st.one_of(
    st.sampled_from(["alice-pw", "bob-pw", "alice-pw,123456", "alice-pw,push", ""]),
    utf8_at_most(128, max_size=60),
)
proxy_states = st.lists(st.binary(min_size=1, max_size=253), max_size=8).filter(
    lambda values: sum(len(v) + 2 for v in values) <= MAX_PROXY_STATE_OCTETS
)


@settings(
    max_examples=120,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    user=names,
    password=passwords,
    state=st.none() | st.binary(min_size=1, max_size=253),
    proxies=proxy_states,
    station=st.none() | utf8_at_most(253, max_size=40),
    mode=st.sampled_from(["challenge", "append"]),
)
def test_any_signed_request_gets_an_answer_and_no_crash(
    daemon: Daemon,
    nas: dict[str, UdpNas],
    user: str,
    password: str,
    state: bytes | None,
    proxies: list[bytes],
    station: str | None,
    mode: str,
) -> None:
    request = access_request(SECRET, user, password)
    if state is not None:
        request.AddAttribute("State", state)
    if station is not None:
        request.AddAttribute("Calling-Station-Id", station)
    for value in proxies:
        request.AddAttribute("Proxy-State", value)
    reply = exchange(nas[mode], SECRET, request)  # waits for, and verifies, the answer
    assert len(reply.raw) <= MAX_LENGTH
    assert reply.values("Proxy-State") == proxies  # echoed unchanged, in order
    if not user.strip():
        assert reply.rejected


def test_no_traceback_and_no_internal_error(daemon: Daemon) -> None:
    # After the fuzz above (module order, one daemon): the log of the whole run is clean.
    events = daemon.events
    assert not [e for e in events if e.get("event") == "request_failed"]
    assert not [e for e in events if e.get("reason") == "internal_error"]
    assert "Traceback" not in daemon.output


def test_blank_user_name_is_a_counted_reject(daemon: Daemon, nas: dict[str, UdpNas]) -> None:
    for blank in (" ", "   ", "\t", " \t "):
        reply = exchange(nas["challenge"], SECRET, access_request(SECRET, blank, "alice-pw"))
        assert reply.rejected
        daemon.wait_audit(login_name=blank, outcome="reject", reason="user_name_blank")


def test_the_largest_reply_fits_in_4096_octets(daemon: Daemon, nas: dict[str, UdpNas]) -> None:
    # Proxy-State up to the cap, on a challenge (Reply-Message and State besides).
    proxies = [bytes([65 + i]) * 250 for i in range(4)]
    assert sum(len(v) + 2 for v in proxies) <= MAX_PROXY_STATE_OCTETS
    request = access_request(SECRET, "alice", "alice-pw")
    for value in proxies:
        request.AddAttribute("Proxy-State", value)
    reply = exchange(nas["challenge"], SECRET, request)
    assert reply.challenged
    assert len(reply.raw) <= MAX_LENGTH
    assert reply.values("Proxy-State") == proxies


def test_more_proxy_state_than_a_reply_can_echo_is_dropped_and_counted(
    daemon: Daemon, nas: dict[str, UdpNas]
) -> None:
    request = access_request(SECRET, "bob", "bob-pw")
    for _ in range(5):
        request.AddAttribute("Proxy-State", b"p" * 250)  # 1,260 octets
    nas["challenge"].send(request.RequestPacket())
    daemon.wait_for(
        lambda e: e.get("event") == "packet_dropped" and e.get("reason") == "proxy_state_too_long"
    )
