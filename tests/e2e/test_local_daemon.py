"""End to end: the real daemon on the shipped example config, radclient as the NAS."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyrad import packet as pyrad_packet

from tests.support.daemon import REPO, Daemon
from tests.support.nas import DICTIONARY, Reply, UdpNas, access_request, exchange, login
from tests.support.ports import free_udp_port
from tests.support.radclient import radclient

pytestmark = pytest.mark.e2e

SECRET = "testing123"


def example_config(tmp: Path) -> dict[str, Any]:
    """The shipped config, moved to a free port with JSON logs and a private state dir.
    MFA is skipped: these tests look at the RADIUS front end and the primary check."""
    config: dict[str, Any] = yaml.safe_load((REPO / "config/mfaproxy.yaml").read_text())
    config["directory"]["local"]["users_file"] = str(REPO / "config/users.yaml")
    config["server"].pop("listen")
    config["server"].pop("log")
    config["server"].pop("state_dir")
    config.setdefault("access_policies", {})["mfa"] = {"default_action": "mfa_skipped"}
    return config


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("example")
    with Daemon(tmp, example_config(tmp)) as running:
        yield running


def test_demo_user_is_accepted_with_group_attributes(daemon: Daemon) -> None:
    result = radclient(
        daemon.port,
        SECRET,
        {"User-Name": "bob", "User-Password": "bob-password", "Message-Authenticator": "0x00"},
    )
    assert result.code == "Access-Accept", result.output
    assert result.attributes[0][0] == "Message-Authenticator"
    assert sorted(result.values("Filter-Id")) == ["full-access", "vpn-users"]
    assert result.values("Class") == ["0x61646d696e73"]  # "admins"


def test_user_name_is_case_insensitive_and_groups_differ(daemon: Daemon) -> None:
    result = radclient(
        daemon.port,
        SECRET,
        {"User-Name": "ALICE", "User-Password": "demo-password", "Message-Authenticator": "0x00"},
    )
    assert result.code == "Access-Accept", result.output
    assert result.values("Filter-Id") == ["vpn-users"]
    assert result.values("Class") == []


def test_wrong_password_is_rejected_with_a_message(daemon: Daemon) -> None:
    result = radclient(
        daemon.port,
        SECRET,
        {"User-Name": "alice", "User-Password": "wrong", "Message-Authenticator": "0x00"},
    )
    assert result.code == "Access-Reject", result.output
    assert result.values("Reply-Message") == ["Authentication failed"]


def test_unknown_user_is_rejected(daemon: Daemon) -> None:
    result = radclient(
        daemon.port,
        SECRET,
        {"User-Name": "mallory", "User-Password": "x", "Message-Authenticator": "0x00"},
    )
    assert result.code == "Access-Reject"
    daemon.wait_audit(login_name="mallory", reason="no_such_user")


def test_proxy_state_is_echoed_in_order(daemon: Daemon) -> None:
    result = radclient(
        daemon.port,
        SECRET,
        {
            "User-Name": "bob",
            "User-Password": "bob-password",
            "Proxy-State": "0x01",
            "Message-Authenticator": "0x00",
        },
    )
    assert result.code == "Access-Accept", result.output
    nas = UdpNas(daemon.port)
    try:
        request = access_request(SECRET, "bob", "bob-password")
        request.AddAttribute("Proxy-State", b"first")
        request.AddAttribute("Proxy-State", b"second")
        nas.send(request.RequestPacket())
        raw = nas.receive()
    finally:
        nas.close()
    reply = pyrad_packet.Packet(secret=SECRET.encode(), dict=DICTIONARY, packet=raw)
    assert reply[33] == [b"first", b"second"]
    assert request.VerifyReply(reply, raw, enforce_ma=True)


def test_status_server_is_answered(daemon: Daemon) -> None:
    result = radclient(daemon.port, SECRET, {"Message-Authenticator": "0x00"}, code="status")
    assert result.code == "Access-Accept", result.output


def test_request_without_message_authenticator_gets_no_answer(daemon: Daemon) -> None:
    result = radclient(
        daemon.port, SECRET, {"User-Name": "alice", "User-Password": "demo-password"}, timeout=1
    )
    assert result.code is None
    daemon.wait_for(
        lambda e: (
            e.get("event") == "packet_dropped"
            and e.get("reason") == "missing_message_authenticator"
        )
    )


def test_bad_authenticator_gets_no_answer(daemon: Daemon) -> None:
    result = radclient(
        daemon.port,
        "not-the-secret",
        {"User-Name": "alice", "User-Password": "demo-password", "Message-Authenticator": "0x00"},
        timeout=1,
    )
    assert result.code is None
    daemon.wait_for(
        lambda e: (
            e.get("event") == "packet_dropped" and e.get("reason") == "bad_message_authenticator"
        )
    )


def test_unknown_source_address_gets_no_answer(daemon: Daemon) -> None:
    nas = UdpNas(daemon.port, source="127.0.0.2")  # loopback, but not a configured client
    try:
        nas.send(access_request(SECRET, "alice", "demo-password").RequestPacket())
        assert nas.receive_none(1.0)
    finally:
        nas.close()
    daemon.wait_for(
        lambda e: e.get("event") == "packet_dropped" and e.get("reason") == "unknown_client"
    )


def test_retransmission_gets_the_same_reply_and_reaches_the_backend_once(daemon: Daemon) -> None:
    nas = UdpNas(daemon.port)
    try:
        request = access_request(SECRET, "alice", "demo-password", NAS_Identifier="retransmit-test")
        data = request.RequestPacket()
        nas.send(data)
        nas.send(data)  # while the first is in flight (argon2 takes tens of ms): ignored
        first = nas.receive()
        nas.send(data)  # after the answer: served from the reply cache
        second = nas.receive()
        assert first == second
        assert nas.receive_none(0.5)  # the in-flight copy got no answer of its own
        # a marker request, so every earlier audit line has been read
        nas.send(access_request(SECRET, "bob", "x", NAS_Identifier="marker").RequestPacket())
        nas.receive()
    finally:
        nas.close()
    daemon.wait_for(
        lambda e: e.get("event") == "auth_decision" and e.get("nas_identifier") == "marker"
    )
    assert len(daemon.audit(nas_identifier="retransmit-test")) == 1


def test_hostile_datagrams_do_not_break_the_daemon(daemon: Daemon) -> None:
    nas = UdpNas(daemon.port)
    valid = access_request(SECRET, "bob", "bob-password").RequestPacket()
    try:
        rng = random.Random(2865)
        for size in range(0, 300, 3):
            nas.send(bytes(rng.getrandbits(8) for _ in range(size)))
        for cut in range(0, len(valid)):
            nas.send(valid[:cut])  # every truncation
        for index in range(20, len(valid)):
            mutated = bytearray(valid)
            mutated[index] ^= 0xFF
            nas.send(bytes(mutated))
        nas.send(valid[:2] + struct.pack("!H", 4096) + valid[4:])  # Length lies
        nas.send(os.urandom(4096))
        # still serving
        check = access_request(SECRET, "bob", "bob-password").RequestPacket()
        nas.send(check)
        raw = nas.receive()
        while raw[1] != check[1]:
            raw = nas.receive()
    finally:
        nas.close()
    assert raw[0] == 2
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_the_shipped_config_as_is(tmp_path: Path) -> None:
    """`make run` serves this: alice (no method yet) is accepted on her password; bob
    (an administrator) must give a TOTP code, and his password alone cannot enrol one
    (README "Try it" is walked step by step in test_readme_demo.py)."""
    config: dict[str, Any] = yaml.safe_load((REPO / "config/mfaproxy.yaml").read_text())
    config["directory"]["local"]["users_file"] = str(REPO / "config/users.yaml")
    for key in ("listen", "log", "state_dir"):
        config["server"].pop(key)
    with Daemon(tmp_path, config) as running:
        alice = radclient(
            running.port,
            SECRET,
            {
                "User-Name": "alice",
                "User-Password": "demo-password",
                "Message-Authenticator": "0x00",
            },
        )
        assert alice.code == "Access-Accept", alice.output
        assert alice.values("Filter-Id") == ["vpn-users"]
        nas = UdpNas(running.port)
        try:
            first = login(nas, SECRET, "bob", "bob-password")
            assert first.rejected and "not set up" in first.message
            assert first.state is None  # no key was shown to a mere password holder
            running.wait_audit(user="bob", reason="not_enrolled")
        finally:
            nas.close()


def login_answer(nas: UdpNas, previous: Reply, user: str, answer: str) -> Reply:
    request = access_request(SECRET, user, answer)
    assert previous.state is not None
    request.AddAttribute("State", previous.state)
    return exchange(nas, SECRET, request)


def test_ipv4_and_ipv6_listeners_at_once(tmp_path: Path) -> None:
    config = example_config(tmp_path)
    v6_port = free_udp_port("::1")
    v4_port = free_udp_port()
    config["server"]["listen"] = [f"127.0.0.1:{v4_port}", f"[::1]:{v6_port}"]
    with Daemon(tmp_path, config) as running:
        ma = {"Message-Authenticator": "0x00"}
        creds = {"User-Name": "alice", "User-Password": "demo-password", **ma}
        assert radclient(v4_port, SECRET, creds).code == "Access-Accept"
        v6 = radclient(v6_port, SECRET, creds, host="[::1]")
        assert v6.code == "Access-Accept", v6.output
        running.wait_audit(login_name="alice", nas_address="::1")
