"""The daemon run as systemd runs it: notify socket, watchdog, reload, metrics, stop."""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher
from prometheus_client.parser import text_string_to_metric_families
from pyrad import packet as pyrad_packet

from tests.support.daemon import Daemon
from tests.support.nas import DICTIONARY, UdpNas, access_request
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

# Cheap argon2 parameters: these tests send many requests, not test hash strength.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SECRET = "service-secret"


class NotifySocket:
    """The socket systemd would listen on (NOTIFY_SOCKET), collecting messages."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)

    def next_message(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)

    def wait_for(self, key: str) -> dict[str, str]:
        while True:
            message = self.next_message()
            if key in message:
                return message


def write_users(path: Path, users: dict[str, str]) -> None:
    path.write_text(
        yaml.safe_dump(
            {"users": {u: {"password_hash": FAST_HASHER.hash(p)} for u, p in users.items()}}
        )
    )


def make_config(tmp: Path, metrics_port: int, syslog_port: int) -> dict[str, Any]:
    return {
        "server": {
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "shutdown_grace_seconds": 5,
            "log": {
                "format": "json",
                "level": "debug",
                "syslog": {"address": f"127.0.0.1:{syslog_port}", "facility": "authpriv"},
            },
        },
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def auth(nas: UdpNas, user: str, password: str) -> int:
    request = access_request(SECRET, user, password)
    nas.send(request.RequestPacket())
    while True:
        raw = nas.receive()
        if raw[1] == request.id:
            return raw[0]


class SyslogCollector:
    """A UDP syslog receiver on loopback (what rsyslog or a SIEM agent would be)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port: int = self.sock.getsockname()[1]

    def next_event(self) -> tuple[int, dict[str, Any]]:
        """(priority, JSON event) of the next message."""
        data = self.sock.recv(65536).decode()
        priority, _, rest = data.partition(">")
        return int(priority.lstrip("<")), json.loads(rest[rest.index("{") :])


@pytest.fixture
def syslog() -> Iterator[SyslogCollector]:
    collector = SyslogCollector()
    yield collector
    collector.sock.close()


@pytest.fixture
def service(tmp_path: Path, syslog: SyslogCollector) -> Iterator[tuple[Daemon, NotifySocket, int]]:
    notify = NotifySocket(tmp_path / "notify.sock")
    metrics_port = free_port()
    write_users(tmp_path / "users.yaml", {"dave": "dave-pw"})
    daemon = Daemon(
        tmp_path,
        make_config(tmp_path, metrics_port, syslog.port),
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"},
    )
    daemon.start()
    try:
        yield daemon, notify, metrics_port
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        notify.sock.close()


def test_ready_watchdog_metrics_and_graceful_stop(
    service: tuple[Daemon, NotifySocket, int],
) -> None:
    daemon, notify, metrics_port = service
    assert notify.wait_for("READY")["READY"] == "1"
    assert notify.wait_for("WATCHDOG")["WATCHDOG"] == "1"
    assert http_status(metrics_port, "/healthz") == 200
    assert http_status(metrics_port, "/readyz") == 200
    nas = UdpNas(daemon.port)
    try:
        assert auth(nas, "dave", "dave-pw") == 2
        assert auth(nas, "dave", "wrong") == 3
        nas.send(b"\x01\x02\x00\x05garbage")
        data = access_request(SECRET, "dave", "dave-pw").RequestPacket()
        nas.send(data)
        first = nas.receive()
        nas.send(data)
        assert nas.receive() == first
    finally:
        nas.close()
    samples = scrape(metrics_port)
    # the retransmission is not a new request
    assert samples["mfaproxy_requests_total{client=vpn,code=access_request}"] == 3
    assert samples["mfaproxy_decisions_total{outcome=accept,reason=mfa_skipped}"] == 2
    assert samples["mfaproxy_decisions_total{outcome=reject,reason=bad_password}"] == 1
    assert samples["mfaproxy_packets_dropped_total{reason=malformed}"] == 1
    assert samples["mfaproxy_duplicates_total{action=answered_from_cache}"] == 1
    assert samples["mfaproxy_request_duration_seconds_count{code=access_request}"] == 3
    assert samples["mfaproxy_build_info{version=0.1.0}"] == 1
    assert daemon.stop() == 0
    assert notify.wait_for("STOPPING")["STOPPING"] == "1"
    assert "stopped" in daemon.output


def test_reload_applies_new_users_and_keeps_the_old_config_on_error(
    service: tuple[Daemon, NotifySocket, int], tmp_path: Path
) -> None:
    daemon, notify, metrics_port = service
    notify.wait_for("READY")
    nas = UdpNas(daemon.port)
    try:
        assert auth(nas, "erin", "erin-pw") == 3
        write_users(tmp_path / "users.yaml", {"dave": "dave-pw", "erin": "erin-pw"})
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        assert "RELOADING" in notify.wait_for("RELOADING")
        notify.wait_for("READY")
        daemon.wait_for(lambda e: e.get("event") == "reloaded")
        assert auth(nas, "erin", "erin-pw") == 2
        # a broken file: the reload fails, the running configuration stays
        daemon.config_path.write_text(daemon.config_path.read_text() + "bogus_key: 1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        failed = daemon.wait_for(lambda e: e.get("event") == "reload_failed")
        assert any("bogus_key" in p for p in failed["problems"])
        assert auth(nas, "erin", "erin-pw") == 2
    finally:
        nas.close()
    samples = scrape(metrics_port)
    assert samples["mfaproxy_config_reloads_total{result=success}"] == 1
    assert samples["mfaproxy_config_reloads_total{result=failure}"] == 1


def test_no_request_is_lost_during_reloads(service: tuple[Daemon, NotifySocket, int]) -> None:
    daemon, notify, _ = service
    notify.wait_for("READY")
    answered: list[int] = []
    errors: list[BaseException] = []
    reloads_done = threading.Event()
    first_answer = threading.Event()

    def stream() -> None:
        nas = UdpNas(daemon.port)
        try:
            # keep a steady stream until the reloads are over, then a few more
            while not reloads_done.is_set() or len(answered) < 5:
                answered.append(auth(nas, "dave", "dave-pw"))
                first_answer.set()
        except BaseException as exc:  # a lost reply shows up as a socket timeout
            errors.append(exc)
            first_answer.set()
        finally:
            nas.close()

    sender = threading.Thread(target=stream)
    sender.start()
    first_answer.wait(30)
    assert daemon.proc is not None
    for _ in range(3):
        daemon.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING")
        notify.wait_for("READY")
    reloads_done.set()
    sender.join(60)
    assert not errors
    assert len(answered) >= 5
    assert set(answered) == {2}

    # READY comes on the notify socket, the log line on stderr: wait for the third one.
    def reloads() -> int:
        return sum(1 for e in daemon.events if e.get("event") == "reloaded")

    daemon.wait_for(lambda _e: reloads() >= 3)
    assert reloads() == 3


def hanging_upstream_daemon(tmp: Path, grace: float) -> tuple[Daemon, socket.socket]:
    """A daemon whose upstream RADIUS server never answers: requests stay in flight."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    config = {
        "server": {"shutdown_grace_seconds": grace},
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}],
        "directory": {
            "backend": "radius",
            "radius": {
                "servers": [{"host": "127.0.0.1", "port": silent.getsockname()[1], "secret": "x"}],
                "timeout": 60,
                "retries": 0,
            },
        },
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }
    return Daemon(tmp, config).start(), silent


def upstream_accept(raw: bytes) -> bytes:
    """The upstream's Access-Accept (signed) for a request it received."""
    request = pyrad_packet.AuthPacket(packet=raw, secret=b"x", dict=DICTIONARY)
    reply = request.CreateReply(message_authenticator=True)
    reply.code = pyrad_packet.AccessAccept
    return bytes(reply.ReplyPacket())


def send_and_wait_in_flight(daemon: Daemon, silent: socket.socket) -> UdpNas:
    nas = UdpNas(daemon.port)
    nas.send(access_request(SECRET, "dave", "dave-pw").RequestPacket())
    silent.settimeout(30)
    silent.recv(4096)  # the daemon has forwarded it upstream: it is in flight
    return nas


def test_drain_waits_for_requests_in_flight_up_to_the_grace(tmp_path: Path) -> None:
    daemon, silent = hanging_upstream_daemon(tmp_path, grace=1)
    nas = send_and_wait_in_flight(daemon, silent)
    try:
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0
        expired = daemon.wait_for(lambda e: e.get("event") == "shutdown_grace_expired")
        assert expired["unanswered"] == 1  # the log says how many answers were lost
    finally:
        nas.close()
        silent.close()


def test_sigterm_with_requests_in_flight_sends_their_answers(tmp_path: Path) -> None:
    """The sockets stay open through the drain: answers computed after SIGTERM (here,
    the upstream answers only then) still reach the NAS."""
    daemon, upstream = hanging_upstream_daemon(tmp_path, grace=60)
    nas = UdpNas(daemon.port)
    try:
        requests = [access_request(SECRET, f"user{i}", "pw") for i in range(5)]
        for request in requests:
            nas.send(request.RequestPacket())
        upstream.settimeout(30)
        forwarded = [upstream.recvfrom(4096) for _ in requests]  # all five in flight
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_for(lambda e: e.get("event") == "stopping")
        for raw, peer in forwarded:
            upstream.sendto(upstream_accept(raw), peer)
        replies: dict[int, int] = {}
        while len(replies) < len(requests):
            raw = nas.receive()
            replies[raw[1]] = raw[0]
        assert replies == {request.id: 2 for request in requests}
        assert daemon.proc.wait(30) == 0
        stopped = daemon.wait_for(lambda e: e.get("event") == "stopped")
        assert stopped["unanswered"] == 0
        assert not any(e.get("event") == "shutdown_grace_expired" for e in daemon.events)
    finally:
        nas.close()
        upstream.close()


def test_second_signal_exits_at_once_while_draining(tmp_path: Path) -> None:
    daemon, silent = hanging_upstream_daemon(tmp_path, grace=120)
    nas = send_and_wait_in_flight(daemon, silent)
    try:
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_for(lambda e: e.get("event") == "stopping")  # signals do not queue
        daemon.proc.send_signal(signal.SIGTERM)
        # without the second signal it would wait for the upstream (60 s) or the grace
        assert daemon.proc.wait(30) == 130
    finally:
        nas.close()
        silent.close()


def test_audit_events_go_to_syslog(
    service: tuple[Daemon, NotifySocket, int], syslog: SyslogCollector
) -> None:
    daemon, notify, _ = service
    notify.wait_for("READY")
    nas = UdpNas(daemon.port)
    try:
        assert auth(nas, "dave", "wrong") == 3
    finally:
        nas.close()
    priority, event = syslog.next_event()
    assert priority == 10 * 8 + 6  # authpriv.info (RFC 5424 section 6.2.1)
    assert event["event"] == "auth_decision"
    assert (event["login_name"], event["outcome"], event["reason"]) == (
        "dave",
        "reject",
        "bad_password",
    )
    assert event["user"] is None  # who dave is, the directory has not said
    assert "dave-pw" not in json.dumps(event) and "wrong" not in json.dumps(event)
