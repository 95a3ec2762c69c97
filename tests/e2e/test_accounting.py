"""End to end: RADIUS accounting through the real daemon, radclient and a scriptable NAS
as the client, a real FreeRADIUS as the upstream accounting server (its detail file
shows what arrived, and when a server is stopped nothing can arrive)."""

from __future__ import annotations

import hashlib
import signal
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as pyrad_packet

from tests.support.cluster import scrape, total
from tests.support.daemon import REPO, Daemon, LogEvent
from tests.support.freeradius import FreeRadiusServer
from tests.support.nas import DICTIONARY, UdpNas
from tests.support.ports import free_port, free_udp_port
from tests.support.radclient import radclient

pytestmark = pytest.mark.e2e

SECRET = "acct-testing"
UPSTREAM_SECRET = "upstream-acct"
DROPPED = "mfaproxy_packets_dropped_total"
OUTCOMES = "mfaproxy_accounting_outcomes_total"


def base_config(accounting: dict[str, Any], metrics_port: int) -> dict[str, Any]:
    return {
        "server": {"accounting": accounting, "metrics": {"listen": f"127.0.0.1:{metrics_port}"}},
        "clients": [{"name": "nas", "address": ["127.0.0.1/32", "::1/128"], "secret": SECRET}],
        "directory": {"backend": "local", "local": {"users_file": str(REPO / "config/users.yaml")}},
    }


def start_daemon(tmp: Path, **accounting: Any) -> tuple[Daemon, int, int]:
    acct_port, metrics_port = free_udp_port(), free_port()
    listen = [f"127.0.0.1:{acct_port}", f"[::1]:{acct_port}"]
    daemon = Daemon(tmp, base_config({"listen": listen, **accounting}, metrics_port)).start()
    return daemon, acct_port, metrics_port


def record(status: str, session: str, **extra: str) -> dict[str, str]:
    return {
        "User-Name": "alice",
        "Acct-Status-Type": status,
        "Acct-Session-Id": session,
        "NAS-IP-Address": "192.0.2.1",
        **extra,
    }


def audit(daemon: Daemon, session: str) -> list[LogEvent]:
    with daemon._cond:
        return [
            e
            for e in daemon.events
            if e.get("event") == "accounting_record" and e.get("session_id") == session
        ]


def wait_record(daemon: Daemon, session: str, **fields: Any) -> LogEvent:
    return daemon.wait_for(
        lambda e: (
            e.get("event") == "accounting_record"
            and e.get("session_id") == session
            and all(e.get(k) == v for k, v in fields.items())
        )
    )


def wait_drop(daemon: Daemon, reason: str) -> None:
    daemon.wait_for(lambda e: e.get("event") == "packet_dropped" and e.get("reason") == reason)


def acct_packet(session: str, secret: str = SECRET, **attrs: Any) -> pyrad_packet.AcctPacket:
    pkt = pyrad_packet.AcctPacket(secret=secret.encode(), dict=DICTIONARY)
    for name, value in {**record("Start", session), **attrs}.items():
        pkt.AddAttribute(name, value)
    return pkt


def barrier(daemon: Daemon, port: int, session: str) -> None:
    """Send one more record and wait for its audit event: the daemon logs in order, so
    every event of an earlier request has been read by then."""
    assert radclient(port, SECRET, record("Accounting-On", session), "acct").code
    wait_record(daemon, session)


def receive_for(nas: UdpNas, identifier: int) -> bytes:
    while True:
        raw = nas.receive()
        if raw[1] == identifier:
            return raw


# --------------------------------------------------------------------------- no upstream


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int, int]]:
    daemon, acct_port, metrics_port = start_daemon(tmp_path_factory.mktemp("acct"))
    try:
        yield daemon, acct_port, metrics_port
    finally:
        daemon.stop()


def test_radclient_acct_gets_an_accounting_response_and_an_audit_event(
    local: tuple[Daemon, int, int],
) -> None:
    daemon, port, metrics_port = local
    attrs = record(
        "Stop",
        "rc-1",
        **{
            "Acct-Input-Octets": "100",
            "Acct-Input-Gigawords": "1",
            "Acct-Output-Octets": "200",
            "Acct-Input-Packets": "3",
            "Acct-Output-Packets": "4",
            "Acct-Session-Time": "60",
            "Acct-Terminate-Cause": "Idle-Timeout",
            "Framed-IP-Address": "10.8.0.6",
            "Proxy-State": "0x0102",
        },
    )
    result = radclient(port, SECRET, attrs, code="acct")
    assert result.code == "Accounting-Response", result.output
    assert result.values("Proxy-State") == ["0x0102"]
    event = wait_record(daemon, "rc-1")
    assert event["logger"] == "mfaproxy.audit"
    assert (event["user"], event["client"], event["status_type"]) == ("alice", "nas", "stop")
    assert (event["input_octets"], event["output_octets"]) == (2**32 + 100, 200)
    assert (event["input_packets"], event["output_packets"], event["session_time"]) == (3, 4, 60)
    assert event["terminate_cause"] == "Idle-Timeout"
    assert event["framed_ip_address"] == "10.8.0.6" and event["outcome"] == "recorded"
    samples = scrape(metrics_port)
    assert samples["mfaproxy_accounting_records_total{client=nas,status_type=stop}"] >= 1
    assert samples[f"{OUTCOMES}{{outcome=recorded,status_type=stop}}"] >= 1


def test_ipv6_listener_and_signed_requests(local: tuple[Daemon, int, int]) -> None:
    daemon, port, _ = local
    attrs = record("Start", "rc-v6", **{"Message-Authenticator": "0x00"})
    result = radclient(port, SECRET, attrs, code="acct", host="[::1]")
    assert result.code == "Accounting-Response", result.output
    assert result.attributes[0][0] == "Message-Authenticator"  # radclient verified it
    assert wait_record(daemon, "rc-v6")["nas_address"] == "::1"


def test_status_server_on_the_accounting_port(local: tuple[Daemon, int, int]) -> None:
    _, port, _ = local
    result = radclient(port, SECRET, {"Message-Authenticator": "0x00"}, code="status")
    assert result.code == "Accounting-Response", result.output


def test_wrong_secret_is_dropped_and_counted(local: tuple[Daemon, int, int]) -> None:
    daemon, port, metrics_port = local
    before = total(metrics_port, f"{DROPPED}{{reason=bad_request_authenticator")
    result = radclient(port, "not-the-secret", record("Start", "bad"), code="acct", timeout=1)
    assert result.code is None
    wait_drop(daemon, "bad_request_authenticator")
    assert total(metrics_port, f"{DROPPED}{{reason=bad_request_authenticator") >= before + 1
    assert audit(daemon, "bad") == []


def test_requests_on_the_wrong_port_are_dropped_and_counted(
    local: tuple[Daemon, int, int],
) -> None:
    daemon, port, metrics_port = local
    auth = {"User-Name": "alice", "User-Password": "x", "Message-Authenticator": "0x00"}
    assert radclient(port, SECRET, auth, timeout=1).code is None
    wait_drop(daemon, "access_on_accounting_port")
    acct = record("Start", "wrong-port")
    assert radclient(daemon.port, SECRET, acct, code="acct", timeout=1).code is None
    wait_drop(daemon, "accounting_on_auth_port")
    samples = scrape(metrics_port)
    assert samples[f"{DROPPED}{{reason=access_on_accounting_port}}"] >= 1
    assert samples[f"{DROPPED}{{reason=accounting_on_auth_port}}"] >= 1
    assert audit(daemon, "wrong-port") == []


def test_a_retransmission_is_answered_from_the_cache_and_logged_once(
    local: tuple[Daemon, int, int],
) -> None:
    daemon, port, metrics_port = local
    cached = "mfaproxy_duplicates_total{action=answered_from_cache}"
    before = total(metrics_port, cached)
    request = acct_packet("dup-1")
    raw = request.RequestPacket()
    nas = UdpNas(port)
    try:
        replies = []
        for _ in range(3):
            nas.send(raw)
            replies.append(receive_for(nas, request.id))
    finally:
        nas.close()
    assert replies[0] == replies[1] == replies[2]
    assert request.VerifyReply(
        pyrad_packet.AcctPacket(secret=SECRET.encode(), dict=DICTIONARY, packet=replies[0]),
        replies[0],
    )
    assert total(metrics_port, cached) == before + 2
    barrier(daemon, port, "dup-1-barrier")
    assert len(audit(daemon, "dup-1")) == 1


def test_hostile_datagrams_are_dropped_and_counted_never_a_traceback(
    local: tuple[Daemon, int, int],
) -> None:
    """Random datagrams and authentic packets with arbitrary attributes, sent without
    waiting; then a valid record is still answered and nothing failed internally."""
    daemon, port, metrics_port = local
    dropped_before = total(metrics_port, DROPPED)
    nas = UdpNas(port)
    sent = 0

    @settings(max_examples=300, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=10).map(
                authentic
            ),
        )
    )
    def send(data: bytes) -> None:
        nonlocal sent
        nas.send(data)
        sent += 1

    try:
        send()
        request = acct_packet("after-fuzz")
        nas.send(request.RequestPacket())
        receive_for(nas, request.id)
    finally:
        nas.close()
    wait_record(daemon, "after-fuzz")
    samples = scrape(metrics_port)
    assert samples.get(f"{DROPPED}{{reason=internal_error}}", 0) == 0
    assert total(metrics_port, DROPPED) > dropped_before
    assert "Traceback" not in daemon.output
    assert not [e for e in daemon.events if e.get("event") == "accounting_request_failed"]


def authentic(attrs: list[tuple[int, bytes]]) -> bytes:
    """An Accounting-Request with a valid Request Authenticator (RFC 2866 section 3)."""
    body = b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)
    header = bytes([4, len(body) % 256]) + struct.pack("!H", 20 + len(body))
    return header + hashlib.md5(header + bytes(16) + body + SECRET.encode()).digest() + body


# --------------------------------------------------------------------------- forwarding


@pytest.fixture
def upstreams() -> Iterator[tuple[FreeRadiusServer, FreeRadiusServer]]:
    """Two FreeRADIUS accounting servers on fixed ports (so they can come back)."""
    first = FreeRadiusServer({}, UPSTREAM_SECRET, port=free_udp_port(), acct_port=free_udp_port())
    second = FreeRadiusServer({}, UPSTREAM_SECRET, port=free_udp_port(), acct_port=free_udp_port())
    with first, second:
        yield first, second


def upstream_config(*servers: FreeRadiusServer, answer: str = "after_upstream") -> dict[str, Any]:
    return {
        "upstream": {
            "servers": [
                {"host": s.host, "port": s.acct_port, "secret": UPSTREAM_SECRET} for s in servers
            ],
            "timeout": 0.5,
            "retries": 1,
            "answer": answer,
        }
    }


def sessions(server: FreeRadiusServer) -> list[str]:
    return [r.get("Acct-Session-Id", "") for r in server.detail_records()]


def test_records_are_forwarded_with_failover_and_never_twice(
    tmp_path: Path, upstreams: tuple[FreeRadiusServer, FreeRadiusServer]
) -> None:
    first, second = upstreams
    daemon, port, metrics_port = start_daemon(tmp_path, **upstream_config(first, second))
    try:
        # Acknowledged by the first server: it holds the record, answered after it.
        result = radclient(port, SECRET, record("Start", "fw-1", **{"Proxy-State": "0x07"}), "acct")
        assert result.code == "Accounting-Response", result.output
        assert result.values("Proxy-State") == ["0x07"]
        assert sessions(first) == ["fw-1"] and sessions(second) == []
        forwarded = first.detail_records()[0]
        assert (forwarded["User-Name"], forwarded["NAS-IP-Address"]) == ("alice", "192.0.2.1")
        label = f"{first.host}:{first.acct_port}"
        assert wait_record(daemon, "fw-1")["upstream"] == label

        # A retransmission is answered from the cache: the upstream sees it once.
        request = acct_packet("fw-dup")
        raw = request.RequestPacket()
        nas = UdpNas(port)
        try:
            nas.send(raw)
            one = receive_for(nas, request.id)
            nas.send(raw)
            two = receive_for(nas, request.id)
        finally:
            nas.close()
        assert one == two
        assert sessions(first).count("fw-dup") == 1
        barrier(daemon, port, "fw-dup-barrier")
        assert len(audit(daemon, "fw-dup")) == 1

        # The first server stops: the second takes the record.
        first.stop()
        result = radclient(port, SECRET, record("Interim-Update", "fw-2"), "acct", timeout=10)
        assert result.code == "Accounting-Response", result.output
        assert sessions(second) == ["fw-2"]
        assert wait_record(daemon, "fw-2")["upstream"] == f"{second.host}:{second.acct_port}"
        samples = scrape(metrics_port)
        assert samples[f"{OUTCOMES}{{outcome=forwarded,status_type=interim_update}}"] == 1
        up = "mfaproxy_upstream_up{server=%s,service=accounting}"
        assert samples[up % label] == 0
    finally:
        daemon.stop()


def test_after_upstream_with_every_upstream_down_the_nas_gets_no_answer(
    tmp_path: Path, upstreams: tuple[FreeRadiusServer, FreeRadiusServer]
) -> None:
    first, _ = upstreams
    daemon, port, metrics_port = start_daemon(tmp_path, **upstream_config(first))
    first.stop()
    request = acct_packet("down-1")
    raw = request.RequestPacket()
    nas = UdpNas(port)
    try:
        nas.send(raw)
        wait_record(daemon, "down-1", outcome="upstream_unavailable")
        daemon.wait_for(lambda e: e.get("event") == "accounting_upstream_unavailable")
        assert nas.receive_none(0.5)  # the record was not acknowledged: no answer
        nas.sock.settimeout(10)
        key = f"{OUTCOMES}{{outcome=upstream_unavailable,status_type=start}}"
        assert scrape(metrics_port)[key] == 1

        # The upstream comes back; the NAS's retransmission of the same packet is
        # processed afresh (not silenced by the duplicate table), forwarded and answered.
        first.start()
        nas.send(raw)
        reply = receive_for(nas, request.id)
    finally:
        nas.close()
        daemon.stop()
    assert reply[0] == 5
    assert sessions(first) == ["down-1"]


def test_a_reload_moves_forwarding_to_the_new_upstream(
    tmp_path: Path, upstreams: tuple[FreeRadiusServer, FreeRadiusServer]
) -> None:
    first, second = upstreams
    daemon, port, _ = start_daemon(tmp_path, **upstream_config(first))
    try:
        assert radclient(port, SECRET, record("Start", "rl-1"), "acct").code
        config = yaml.safe_load(daemon.config_path.read_text(encoding="utf-8"))
        config["server"]["accounting"].update(upstream_config(second))
        daemon.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda e: e.get("event") == "reloaded")
        assert radclient(port, SECRET, record("Stop", "rl-2"), "acct").code
    finally:
        daemon.stop()
    assert sessions(first) == ["rl-1"] and sessions(second) == ["rl-2"]
