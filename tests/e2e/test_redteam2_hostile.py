"""Red team 2, end to end: raw attribute soups at the live daemon, below pyrad's
dictionary (test_hostile_requests.py sends well-formed requests with hostile values).
Each datagram is built octet by octet: any attribute type, duplicated User-Name,
User-Password, State and Message-Authenticator, CHAP-Password and EAP-Message,
overlong and empty values, Proxy-State floods, codes other than Access-Request, signed
with the right secret (so it gets past the Message-Authenticator) or not.

Every datagram gets exactly one of two fates, and which one is observable: a reply
that verifies against its request and fits in 4,096 octets, or a drop counted in
`mfaproxy_packets_dropped_total` (a silent loss would be neither). No traceback, no
`internal_error`; the daemon keeps serving a normal login afterwards. And the status
port: one host holding all its connections does not lock a readiness probe out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfaproxy.radius.constants import MAX_LENGTH
from tests.e2e.methods_common import SECRET, daemon_config, open_store, password
from tests.support.cluster import scrape
from tests.support.daemon import Daemon
from tests.support.nas import UdpNas, access_request, exchange
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

KEY = SECRET.encode()
UNSIGNED_SOURCE = "127.0.0.2"  # a client exempted from require_message_authenticator
MESSAGE_AUTHENTICATOR, USER_PASSWORD = 80, 2
POLL_SECONDS = 0.05  # how long each look at the socket waits before the metrics are read
FATE_TIMEOUT = 20.0


@dataclass
class Target:
    daemon: Daemon
    metrics: int


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("soup")
    metrics = free_port()
    multifactor = {"enabled": ["totp"], "default": "totp", "alternate": ["backup_codes"]}
    config = daemon_config(
        tmp,
        {"alice": {}, "bob": {}},
        multifactor,
        server={"metrics": {"listen": f"127.0.0.1:{metrics}"}},
    )
    config["clients"].append(
        {
            "name": "unsigned",
            "address": [UNSIGNED_SOURCE],
            "secret": SECRET,
            "require_message_authenticator": False,
        }
    )
    # Hypothesis sends many wrong passwords; throttling has its own tests.
    config["password_throttle"] = {"enabled": False}
    daemon = Daemon(tmp, config)
    store = open_store(daemon)
    store.set_totp_secret("alice", "JBSWY3DPEHPK3PXPJBSWY3DP", 0)
    store.set_method("alice", "totp", 0)
    store.close()
    with daemon:
        yield Target(daemon, metrics)


@pytest.fixture(scope="module")
def sockets(target: Target) -> Iterator[dict[bool, UdpNas]]:
    pair = {
        False: UdpNas(target.daemon.port, timeout=POLL_SECONDS),
        True: UdpNas(target.daemon.port, timeout=POLL_SECONDS, source=UNSIGNED_SOURCE),
    }
    yield pair
    for sock in pair.values():
        sock.close()


def hide(password: bytes, authenticator: bytes) -> bytes:
    """User-Password as RFC 2865 section 5.2 hides it (under 16 octets: padded)."""
    padded = password + bytes(-len(password) % 16) if password else bytes(16)
    out, last = b"", authenticator
    for offset in range(0, len(padded), 16):
        pad = hashlib.md5(KEY + last).digest()
        last = bytes(a ^ b for a, b in zip(padded[offset : offset + 16], pad, strict=True))
        out += last
    return out


def datagram(
    code: int, identifier: int, authenticator: bytes, attrs: list[tuple[int, bytes]], sign: bool
) -> bytes:
    """The packet; with `sign`, a Message-Authenticator first (RFC 3579 section 3.2)."""
    body = b"".join(bytes([kind, len(value) + 2]) + value for kind, value in attrs)
    if sign:
        body = bytes([MESSAGE_AUTHENTICATOR, 18]) + bytes(16) + body
    header = struct.pack("!BBH", code, identifier, 20 + len(body)) + authenticator
    if not sign:
        return header + body
    mac = hmac.new(KEY, header + body, hashlib.md5).digest()
    return header + body[:2] + mac + body[18:]


NAMES = [b"alice", b"ALICE", b"bob", b"nobody", b"\xff\xfe", b"alice\x00bob", b" ", b""]
attribute = st.one_of(
    st.tuples(st.integers(1, 255), st.binary(max_size=60)),  # any type at all
    st.tuples(st.sampled_from([1, 3, 18, 24, 26, 31, 33, 60, 79, 80]), st.binary(max_size=253)),
    st.tuples(st.just(1), st.sampled_from(NAMES)),  # a second (third...) User-Name
    st.tuples(st.just(24), st.binary(min_size=1, max_size=64)),  # a State, maybe two
    st.tuples(st.just(33), st.binary(min_size=1, max_size=253)),  # Proxy-State floods
)
passwords = st.none() | st.sampled_from([b"alice-pw", b"bob-pw", b"alice-pw,123456", b"x" * 129])


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    attrs=st.lists(attribute, max_size=24),
    code=st.sampled_from([1, 1, 1, 1, 2, 4, 12, 40]),
    sign=st.booleans(),
    typed=passwords,
    unsigned_client=st.booleans(),
    where=st.integers(0, 24),
)
def test_every_datagram_is_answered_or_dropped_and_counted(
    target: Target,
    sockets: dict[bool, UdpNas],
    attrs: list[tuple[int, bytes]],
    code: int,
    sign: bool,
    typed: bytes | None,
    unsigned_client: bool,
    where: int,
) -> None:
    authenticator = os.urandom(16)
    soup = list(attrs)
    if typed is not None:
        soup.insert(min(where, len(soup)), (USER_PASSWORD, hide(typed, authenticator)[:253]))
    while sum(len(v) + 2 for _, v in soup) + 18 > MAX_LENGTH - 20:
        soup.pop()
    identifier = secrets.randbelow(256)
    packet = datagram(code, identifier, authenticator, soup, sign)
    nas = sockets[unsigned_client]
    dropped = drops(target)
    nas.send(packet)
    reply = fate(target, nas, identifier, dropped)
    if reply is None:
        assert drops(target) == dropped + 1
        return
    assert len(reply) <= MAX_LENGTH
    assert reply[1] == identifier
    # Response Authenticator (RFC 2865 section 3): MD5(Code+ID+Length+RequestAuth+Attributes+Secret)
    expected = hashlib.md5(reply[:4] + authenticator + reply[20:] + KEY).digest()
    assert hmac.compare_digest(reply[4:20], expected)
    assert reply[0] in (2, 3, 11)  # Accept (Status-Server or login), Reject, Challenge
    assert drops(target) == dropped


def drops(target: Target) -> float:
    prefix = "mfaproxy_packets_dropped_total{"
    return sum(v for k, v in scrape(target.metrics).items() if k.startswith(prefix))


def fate(target: Target, nas: UdpNas, identifier: int, dropped: float) -> bytes | None:
    """The reply to the datagram just sent, or None once its drop was counted (bounded
    polling: a drop has no event to wait for)."""
    for _ in range(int(FATE_TIMEOUT / POLL_SECONDS)):
        try:
            data = nas.receive()
        except TimeoutError:
            if drops(target) > dropped:
                return None
            continue
        if data[1] == identifier:
            return data
    raise AssertionError("the datagram got neither a reply nor a counted drop")


def test_no_traceback_no_internal_error_and_still_serving(target: Target) -> None:
    nas = UdpNas(target.daemon.port)
    try:
        reply = exchange(nas, SECRET, access_request(SECRET, "alice", password("alice")))
    finally:
        nas.close()
    assert reply.challenged, reply.message
    output = target.daemon.output
    assert "Traceback" not in output
    assert "internal_error" not in output
    samples = scrape(target.metrics)
    assert samples.get("mfaproxy_packets_dropped_total{reason=internal_error}", 0) == 0


def test_a_host_holding_status_connections_does_not_lock_the_probes_out(target: Target) -> None:
    """64 silent connections from one address (the status port's whole capacity): a
    readiness probe from another address is still answered."""
    idle = [socket.create_connection(("127.0.0.1", target.metrics), 10) for _ in range(64)]
    try:
        for sock in idle:
            sock.sendall(b"GET /readyz HTTP/1.1\r\n")  # and never the end of the head
        probe = socket.create_connection(
            ("127.0.0.1", target.metrics), 10, source_address=("127.0.0.2", 0)
        )
        with probe:
            probe.sendall(b"GET /readyz HTTP/1.1\r\n\r\n")
            answer = b""
            while chunk := probe.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        for sock in idle:
            sock.close()
