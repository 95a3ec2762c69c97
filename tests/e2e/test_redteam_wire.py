"""Red team, end to end: a hostile network peer against the real daemon. It reads what
crosses the wire (RADIUS is clear text but for User-Password), spoofs UDP sources, and
sends packets of its own; it does not know the shared secret.

Each test states the attack, and the defence that stops it (or the fix, when it once
succeeded).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
import yaml
from argon2 import PasswordHasher
from pyrad import packet as pyrad_packet

from mfaproxy.config.schema import load_config
from mfaproxy.store.factory import open_user_store
from tests.support.cluster import scrape
from tests.support.daemon import Daemon
from tests.support.nas import DICTIONARY, Reply, UdpNas, access_request, exchange
from tests.support.ports import free_port, free_udp_port

pytestmark = pytest.mark.e2e

SECRET = "wire-redteam-secret"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SIGNING, UNSIGNED, SIGNING_TOO = "127.0.0.1", "127.0.0.2", "127.0.0.4"
STATUS_SERVER = 12
DUPLICATE_WINDOW = 1.0  # server.duplicate_cache_seconds, short: one test waits it out


@dataclass
class Setup:
    daemon: Daemon
    metrics: int
    acct_port: int
    totp: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("wire")
    users = {name: {"password_hash": FAST.hash(f"{name}-pw")} for name in ("alice", "bob")}
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    metrics, acct_port = free_port(), free_udp_port()
    config: dict[str, Any] = {
        "server": {
            "metrics": {"listen": f"127.0.0.1:{metrics}"},
            "duplicate_cache_seconds": DUPLICATE_WINDOW,
            "accounting": {"listen": [f"127.0.0.1:{acct_port}"]},
        },
        "clients": [
            {"name": "vpn", "address": [SIGNING, SIGNING_TOO], "secret": SECRET},
            {
                "name": "legacy",
                "address": [UNSIGNED],
                "secret": SECRET,
                "require_message_authenticator": False,
            },
        ],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_required"}},
        "multifactor": {"enabled": ["totp"], "default": "totp"},
    }
    daemon = Daemon(tmp, config)
    store = open_user_store(load_config(daemon.config_path))
    secret = pyotp.random_base32()
    store.set_totp_secret("alice", secret, 0)
    store.set_method("alice", "totp", 0)
    store.close()
    with daemon:
        yield Setup(daemon, metrics, acct_port, secret)


def dropped(setup: Setup, reason: str) -> float:
    return scrape(setup.metrics).get(f"mfaproxy_packets_dropped_total{{reason={reason}}}", 0.0)


def barrier(setup: Setup, tag: str) -> None:
    """A request whose audit event comes after every earlier request's (one by one)."""
    nas = UdpNas(setup.daemon.port)
    try:
        exchange(nas, SECRET, access_request(SECRET, "bob", "wrong", NAS_Identifier=tag))
    finally:
        nas.close()
    setup.daemon.wait_audit(nas_identifier=tag)


# --------------------------------------------------------------------------- Status-Server


def status_server(identifier: int, authenticator: bytes, secret: bytes | None) -> bytes:
    """A Status-Server (RFC 5997) with this Identifier and Request Authenticator; signed
    with `secret` (Message-Authenticator, RFC 3579 section 3.2) unless None."""
    attributes = b"" if secret is None else bytes([80, 18]) + bytes(16)
    header = struct.pack("!BBH", STATUS_SERVER, identifier, 20 + len(attributes))
    packet = header + authenticator + attributes
    if secret is None:
        return packet
    signature = hmac.new(secret, packet, hashlib.md5).digest()
    return packet[:-16] + signature


def test_a_status_server_cannot_be_turned_into_an_accept_for_a_login(setup: Setup) -> None:
    """Attack (an Accept oracle, easier than BlastRADIUS): a client that cannot sign
    sends a login with a wrong password. The peer reads its Identifier and Request
    Authenticator, and sends a Status-Server with the same two from the client's
    address. Answered with Access-Accept, that reply verifies at the client as the
    answer to the login (the Response Authenticator covers only code, Identifier,
    length, Request Authenticator, attributes and the secret), so the peer would only
    have to forward it. It is dropped: a Status-Server must be signed (RFC 5997 section
    3), even from a client exempted from signing Access-Requests."""
    victim = UdpNas(setup.daemon.port, source=UNSIGNED)
    peer = UdpNas(setup.daemon.port, source=UNSIGNED)
    try:
        login = access_request(SECRET, "alice", "not-her-password", sign=False)
        victim.send(login.RequestPacket())
        before = dropped(setup, "missing_message_authenticator")
        forged = status_server(login.id, login.authenticator, None)
        peer.send(forged)
        peer.send(status_server(login.id, login.authenticator, b"a-guessed-secret"))
        reply = Reply(victim.receive(), SECRET)
        assert reply.rejected
        assert login.VerifyReply(reply.packet, reply.raw)
        assert peer.receive_none(0.5)
        assert dropped(setup, "missing_message_authenticator") == before + 1
        assert dropped(setup, "bad_message_authenticator") >= 1
        # the control: signed with the secret, a Status-Server is answered
        signed = status_server(7, bytes(range(16)), SECRET.encode())
        peer.send(signed)
        assert peer.receive()[0] == pyrad_packet.AccessAccept
    finally:
        victim.close()
        peer.close()


# --------------------------------------------------------------------------- State


def test_a_state_read_on_the_wire_neither_works_elsewhere_nor_voids_the_login(
    setup: Setup,
) -> None:
    """Attack: the peer reads alice's Access-Challenge (its State is clear text) and
    answers it first, from another address of the same NAS entry, then under another
    user name, even with the right code (the worst case: a code seen over a shoulder).
    Both are refused `state_mismatch`; alice's own answer still logs her in (the State
    used to be taken by the refused answer, so hers then failed `unknown_state`)."""
    nas = UdpNas(setup.daemon.port, source=SIGNING)
    elsewhere = UdpNas(setup.daemon.port, source=SIGNING_TOO)
    try:
        first = exchange(nas, SECRET, access_request(SECRET, "alice", "alice-pw"))
        assert first.challenged and first.state is not None
        code = pyotp.TOTP(setup.totp).now()
        for sender, user in ((elsewhere, "alice"), (nas, "bob")):
            request = access_request(SECRET, user, code, sign=False)
            request.AddAttribute("State", first.state)
            request.add_message_authenticator()
            assert exchange(sender, SECRET, request).rejected
        setup.daemon.wait_audit(login_name="alice", client="vpn", reason="state_mismatch")
        setup.daemon.wait_audit(login_name="bob", reason="state_mismatch")
        answer = access_request(SECRET, "alice", code, sign=False)
        answer.AddAttribute("State", first.state)
        answer.add_message_authenticator()
        final = exchange(nas, SECRET, answer)
        assert final.accepted, final.message
    finally:
        nas.close()
        elsewhere.close()


# --------------------------------------------------------------------------- replays


def replayed_first_rounds(setup: Setup, tag: str, wait: float) -> list[dict[str, Any]]:
    """A login's first round as the NAS sent it, replayed by the peer from another
    port `wait` seconds later; the audit events of the requests with that datagram."""
    nas, peer = UdpNas(setup.daemon.port), UdpNas(setup.daemon.port)
    try:
        request = access_request(SECRET, "alice", "alice-pw", NAS_Identifier=tag)
        data = request.RequestPacket()
        nas.send(data)
        assert Reply(nas.receive(), SECRET).challenged
        time.sleep(wait)  # the replay comes later: time passing, not a synchronisation
        peer.send(data)
        peer.receive_none(0.5)
    finally:
        nas.close()
        peer.close()
    barrier(setup, f"{tag}-end")
    return setup.daemon.audit(nas_identifier=tag)


def test_a_request_replayed_from_another_port_is_not_processed_again(setup: Setup) -> None:
    """Attack: replay a captured login from another source port (a second challenge;
    a second push in auto or append mode). The duplicate table keys on the port, so
    this was processed again; the replay window (issue 10 item 9) drops it."""
    before = dropped(setup, "replayed")
    events = replayed_first_rounds(setup, "replay-port", 0.0)
    assert len(events) == 1, events
    assert dropped(setup, "replayed") == before + 1


def test_a_request_replayed_after_the_duplicate_window_is_not_processed_again(
    setup: Setup,
) -> None:
    """Attack: replay a captured login once `server.duplicate_cache_seconds` has passed
    and the reply cache forgot it: the replay window lasts the challenge lifetime."""
    before = dropped(setup, "replayed")
    events = replayed_first_rounds(setup, "replay-late", DUPLICATE_WINDOW + 0.2)
    assert len(events) == 1, events
    assert dropped(setup, "replayed") == before + 1


# --------------------------------------------------------------------------- accounting


def accounting(session: str, secret: str = SECRET) -> pyrad_packet.AcctPacket:
    packet = pyrad_packet.AcctPacket(secret=secret.encode(), dict=DICTIONARY)
    for name, value in {
        "User-Name": "alice",
        "Acct-Status-Type": "Stop",
        "Acct-Session-Id": session,
        "Acct-Input-Octets": 1000,
    }.items():
        packet.AddAttribute(name, value)
    return packet


def accounting_events(setup: Setup, session: str) -> list[dict[str, Any]]:
    with setup.daemon._cond:
        return [
            e
            for e in setup.daemon.events
            if e.get("event") == "accounting_record" and e.get("session_id") == session
        ]


def accounting_barrier(setup: Setup, session: str) -> None:
    nas = UdpNas(setup.acct_port)
    try:
        nas.send(accounting(session).RequestPacket())
        nas.receive()
    finally:
        nas.close()
    setup.daemon.wait_for(
        lambda e: e.get("event") == "accounting_record" and e.get("session_id") == session
    )


def test_a_forged_or_edited_accounting_record_is_dropped(setup: Setup) -> None:
    """Attack: forge a Stop without the secret, or edit a captured one (its counters):
    the Request Authenticator (RFC 2866 section 3) no longer verifies."""
    nas = UdpNas(setup.acct_port)
    try:
        nas.send(accounting("forged", secret="not-the-secret").RequestPacket())
        data = bytearray(accounting("edited").RequestPacket())
        data[-1] ^= 0x01  # the last octet of Acct-Input-Octets
        nas.send(bytes(data))
        assert nas.receive_none(0.5)
    finally:
        nas.close()
    accounting_barrier(setup, "forged-end")
    assert accounting_events(setup, "forged") == []
    assert accounting_events(setup, "edited") == []
    assert dropped(setup, "bad_request_authenticator") >= 2


def test_an_accounting_record_replayed_from_another_port_is_logged_once(setup: Setup) -> None:
    """Attack: replay a captured Stop (or Start) from another source port, to put a
    session or its counters into the accounting trail twice. The duplicate table used
    to key on the port as well, so the copy was logged and forwarded again. Fixed: the
    copy is answered from the cache (the same Accounting-Response), not recorded."""
    nas, peer = UdpNas(setup.acct_port), UdpNas(setup.acct_port)
    try:
        data = accounting("replayed").RequestPacket()
        nas.send(data)
        first = nas.receive()
        peer.send(data)
        assert peer.receive() == first
    finally:
        nas.close()
        peer.close()
    accounting_barrier(setup, "replayed-end")
    assert len(accounting_events(setup, "replayed")) == 1
