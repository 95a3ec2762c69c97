"""Reload, in process with the real Server and a real notify socket: the slow part runs
off the event loop (requests are answered while it is blocked), READY=1 always follows
RELOADING=1 (a build that fails included), and it says what changed and which changes
wait for a restart, compared with what is running."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from mfaproxy.adapters.sdnotify import SystemdNotifier
from mfaproxy.config.schema import Config, load_config
from mfaproxy.daemon import reload as reload_module
from mfaproxy.daemon import server as server_module
from mfaproxy.daemon.changes import changed_settings, restart_required
from mfaproxy.daemon.server import Server
from mfaproxy.observability import metrics
from tests.auth.harness import FAST
from tests.support.nas import UdpNas, access_request
from tests.support.ports import free_udp_port

SECRET = "reload-secret"


class Notifications:
    """The socket systemd would listen on; collects every message in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path

    def keys(self) -> list[str]:
        out: list[str] = []
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except BlockingIOError:
                return out
            out += [line.split("=", 1)[0] for line in data.splitlines() if "=" in line]


def config_data(tmp: Path, port: int) -> dict[str, Any]:
    users = {"dave": {"password_hash": FAST.hash("dave-pw")}}
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    return {
        "server": {
            "listen": [f"127.0.0.1:{port}"],
            "state_dir": str(tmp / "state"),
            "reject_delay": 0,
        },
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    sink = Notifications(tmp_path / "notify.sock")
    yield sink
    sink.sock.close()


@pytest.fixture
async def running(
    tmp_path: Path, notifications: Notifications
) -> AsyncIterator[tuple[Server, dict[str, Any]]]:
    data = config_data(tmp_path, free_udp_port())
    write(tmp_path / "mfaproxy.yaml", data)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(notifications.path)})
    server = Server(load_config(tmp_path / "mfaproxy.yaml"), notifier)
    await server.start()
    assert notifications.keys() == ["READY", "STATUS"]
    yield server, data
    await server.shutdown()


async def login(server: Server, user: str, password: str) -> int:
    """One exchange from a NAS socket, without blocking the loop the server runs on."""

    def exchange() -> int:
        nas = UdpNas(server.bound[0][1], timeout=30)
        try:
            nas.send(access_request(SECRET, user, password).RequestPacket())
            return nas.receive()[0]
        finally:
            nas.close()

    return await asyncio.to_thread(exchange)


async def test_serving_goes_on_while_a_reload_reads_and_builds(
    running: tuple[Server, dict[str, Any]],
    notifications: Notifications,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _ = running
    entered, release = threading.Event(), threading.Event()
    real_prepare = reload_module.prepare

    def slow_prepare(config: Config) -> Any:
        entered.set()
        release.wait(30)  # blocks its thread, as a slow disk or a big users file would
        return real_prepare(config)

    monkeypatch.setattr(server_module, "prepare", slow_prepare)
    users = {
        "dave": {"password_hash": FAST.hash("dave-pw")},
        "erin": {"password_hash": FAST.hash("erin-pw")},
    }
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    reload = asyncio.create_task(server.reload())
    await asyncio.to_thread(entered.wait, 30)
    # The reload is inside its blocking part: the loop still answers requests.
    assert await login(server, "dave", "dave-pw") == 2
    assert not reload.done()
    release.set()
    assert await reload is True
    assert await login(server, "erin", "erin-pw") == 2
    assert notifications.keys() == ["RELOADING", "MONOTONIC_USEC", "READY"]


async def test_ready_follows_reloading_when_the_build_fails(
    running: tuple[Server, dict[str, Any]], notifications: Notifications, tmp_path: Path
) -> None:
    server, data = running
    failures = (
        metrics.REGISTRY.get_sample_value("mfaproxy_config_reloads_total", {"result": "failure"})
        or 0.0
    )
    # Valid for the schema, refused when the factor is built (issue 11: no READY=1).
    broken = {
        **data,
        "multifactor": {
            "enabled": ["radius"],
            "default": "radius",
            "radius": {
                "server": {"host": "127.0.0.1", "port": 1812, "secret": "s"},
                "nas_identifier": "n" * 300,
            },
        },
    }
    write(tmp_path / "mfaproxy.yaml", broken)
    with capture_logs() as logs:
        assert await server.reload() is False
    assert notifications.keys() == ["RELOADING", "MONOTONIC_USEC", "READY"]
    assert [e for e in logs if e["event"] == "reload_failed"]
    assert (
        metrics.REGISTRY.get_sample_value("mfaproxy_config_reloads_total", {"result": "failure"})
        == failures + 1
    )
    assert await login(server, "dave", "dave-pw") == 2  # the old configuration serves


async def test_reload_says_what_changed_and_what_waits_for_a_restart(
    running: tuple[Server, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, data = running
    # Keep structlog as capture_logs set it (a reload re-applies the log settings).
    monkeypatch.setattr(server_module, "apply_log_config", lambda _settings: None)
    changed = {
        **data,
        "server": {**data["server"], "listen": ["127.0.0.1:1"], "max_queue_wait": 1.5},
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": "a-new-secret"}],
    }
    write(tmp_path / "mfaproxy.yaml", changed)
    changes = []
    for _ in range(2):  # the second reload warns again: compared with what runs
        with capture_logs() as logs:
            assert await server.reload() is True
        warned = [e["setting"] for e in logs if e["event"] == "reload_restart_required"]
        assert warned == ["server.listen"]
        changes.append(next(e for e in logs if e["event"] == "reloaded")["changed"])
    assert changes == [["clients.vpn.secret", "server.listen", "server.max_queue_wait"], []]
    assert "a-new-secret" not in str(changes)
    assert server.dispatcher.runtime.limits.max_queue_wait == 1.5


def test_changed_settings_names_paths_and_compares_secrets() -> None:
    base = {
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": "one"}],
        "directory": {"backend": "local", "local": {"users_file": "/dev/null"}},
    }
    other = {**base, "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": "two"}]}
    other["server"] = {"metrics": {"listen": "127.0.0.1:9999"}, "reject_delay": 2}
    old, new = Config.model_validate(base), Config.model_validate(other)
    paths = changed_settings(old, new)
    assert "clients" in paths and "server.reject_delay" in paths
    assert "server.metrics" in paths
    assert [r["setting"] for r in restart_required(old, new)] == ["server.metrics"]
    assert restart_required(old, new)[0]["running"] == "off"
    assert paths == sorted(paths)
