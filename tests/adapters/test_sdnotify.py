"""SystemdNotifier against real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from mfaproxy.adapters.sdnotify import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket, published as NOTIFY_SOCKET like systemd does."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram queued so far. A local datagram send is complete when sendto()
    returns, so whatever was sent is already here: no waiting needed."""
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def test_each_call_sends_its_exact_datagram(listener: socket.socket) -> None:
    notifier = SystemdNotifier()
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("serving 2 listeners")
    assert notifier.watchdog()
    assert notifier.reloading(123456789)
    assert notifier.stopping()
    assert notifier.notify(READY=1, STATUS="reloaded")
    assert received(listener) == [
        b"READY=1",
        b"STATUS=serving 2 listeners",
        b"WATCHDOG=1",
        b"RELOADING=1\nMONOTONIC_USEC=123456789",
        b"STOPPING=1",
        b"READY=1\nSTATUS=reloaded",
    ]


def test_reloading_defaults_to_the_monotonic_clock(listener: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert SystemdNotifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [datagram] = received(listener)
    first, second = datagram.split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_a_newline_in_a_value_cannot_forge_another_assignment(listener: socket.socket) -> None:
    assert SystemdNotifier().status("bad\nREADY=1")
    assert received(listener) == [b"STATUS=bad READY=1"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"mfaproxy-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert SystemdNotifier().ready()
        assert received(sock) == [b"READY=1"]


def test_environment_is_read_at_construction(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = SystemdNotifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.ready()
    assert not SystemdNotifier().ready()
    assert received(listener) == [b"READY=1"]


@pytest.mark.parametrize("value", [None, "", "relative/notify.sock", "vsock:2:1234"])
def test_no_op_without_a_usable_socket(value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()


@pytest.fixture
def default_structlog() -> Iterator[None]:
    """structlog's defaults (no level filter), whatever the daemon's setup configured."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("default_structlog")
def test_send_errors_are_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    with capture_logs() as logs:
        assert not SystemdNotifier().ready()
    assert [(e["event"], e["log_level"], e["fields"]) for e in logs] == [
        ("sd_notify failed", "debug", ["READY"])
    ]


def test_a_full_receive_queue_drops_instead_of_blocking(listener: socket.socket) -> None:
    # Nobody reads the listener: after net.unix.max_dgram_qlen datagrams the queue is
    # full. A blocking send would hang the event loop here; ours must give up at once.
    notifier = SystemdNotifier()
    results = [notifier.watchdog() for _ in range(2000)]
    assert results[0]
    assert not all(results)
    assert received(listener)[0] == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<other>"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "garbage"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pids = {"<self>": str(os.getpid()), "<other>": str(os.getpid() + 1)}
    environ = {key: pids.get(value, value) for key, value in env.items()}
    assert SystemdNotifier(environ).watchdog_interval() == expected
