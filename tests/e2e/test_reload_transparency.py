"""A reload, through the real daemon process and SIGHUP, tells the operator what it did:
the new file's dangerous-setting warnings, as at start and each once (one worker of
several logs them); what changed, by section and by client name, never a secret value;
each restart-only setting that differs from what runs, with the running and the
configured value, at every reload until a restart; and a refused reload names each
problem with its dotted path while the old configuration goes on serving."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher

from tests.support.daemon import Daemon, LogEvent
from tests.support.nas import UdpNas, access_request
from tests.support.ports import free_port, free_udp_port

pytestmark = pytest.mark.e2e

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SECRET = "reload-old-secret-value"
NEW_SECRET = "reload-new-secret-value"
OTHER_SECRET = "reload-third-secret-value"
# The fields of a config_warning line, at start and after a reload alike.
WARNING_FIELDS = {"warning", "where", "line", "detail", "risk", "fix"}


def base_config(tmp: Path) -> dict[str, Any]:
    users = {"dave": {"password_hash": FAST_HASHER.hash("dave-pw")}}
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    return {
        # A warning from the start, still there after each reload.
        "server": {"store_failmode": "safe"},
        "clients": [
            {"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET},
            {"name": "old-nas", "address": ["192.0.2.1"], "secret": OTHER_SECRET},
        ],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }


def rewrite(daemon: Daemon, change: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(daemon.config_path.read_text())
    change(data)
    daemon.config_path.write_text(yaml.safe_dump(data))
    return data


def reload(daemon: Daemon, answers: int = 1) -> list[LogEvent]:
    """SIGHUP; the events logged until `answers` reloads have ended (reloaded or refused)."""
    mark = len(daemon.events)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)

    def ended() -> int:
        ends = ("reloaded", "reload_failed")
        return sum(1 for e in daemon.events[mark:] if e.get("event") in ends)

    daemon.wait_for(lambda _e: ended() >= answers)
    return daemon.events[mark:]


def named(events: list[LogEvent], event: str) -> list[LogEvent]:
    return [e for e in events if e.get("event") == event]


def accepted(port: int, secret: str) -> bool:
    nas = UdpNas(port)
    try:
        nas.send(access_request(secret, "dave", "dave-pw").RequestPacket())
        return nas.receive()[0] == 2
    finally:
        nas.close()


def test_a_reload_logs_its_warnings_changes_and_what_waits_for_a_restart(
    tmp_path: Path,
) -> None:
    with Daemon(tmp_path, base_config(tmp_path)) as daemon:
        at_start = named(daemon.events, "config_warning")
        assert [e["warning"] for e in at_start] == ["store_failmode_safe"]
        port, metrics_port, moved = daemon.port, free_port(), free_udp_port()

        def change(data: dict[str, Any]) -> None:
            data["server"]["listen"] = [f"127.0.0.1:{moved}"]
            data["server"]["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
            data["server"]["max_queue_wait"] = 1.5
            data["clients"] = [
                {"name": "vpn", "address": ["127.0.0.1"], "secret": NEW_SECRET},
                {
                    "name": "legacy",
                    "address": ["192.0.2.9"],
                    "secret": OTHER_SECRET,
                    "require_message_authenticator": False,
                },
            ]
            data["smtp"] = {"host": "127.0.0.1", "port": 2525, "password": OTHER_SECRET}

        rewrite(daemon, change)
        events = reload(daemon)
        warned = named(events, "config_warning")
        # Each warning of the new file once, with the fields it has at start.
        kinds = sorted((e["warning"], e["where"]) for e in warned)
        assert kinds == sorted(set(kinds))
        assert ("store_failmode_safe", "server.store_failmode") in kinds
        assert (
            "client_without_message_authenticator",
            "clients.1.require_message_authenticator",
        ) in kinds
        assert all(set(e) >= WARNING_FIELDS and e["level"] == "warning" for e in warned)
        assert {k for k in at_start[0] if k in WARNING_FIELDS} == WARNING_FIELDS

        restart = {e["setting"]: e for e in named(events, "reload_restart_required")}
        assert sorted(restart) == ["server.listen", "server.metrics"]
        assert restart["server.listen"]["running"] == [f"127.0.0.1:{port}"]
        assert restart["server.listen"]["configured"] == [f"127.0.0.1:{moved}"]
        assert restart["server.metrics"]["running"] == "off"
        assert "restart needed" in restart["server.listen"]["detail"]

        (done,) = named(events, "reloaded")
        assert done["clients_added"] == ["legacy"]
        assert done["clients_removed"] == ["old-nas"]
        assert done["clients_changed"] == {"vpn": ["secret"]}
        assert done["sections"] == {"server": "changed", "clients": "changed", "smtp": "added"}
        assert "server.max_queue_wait" in done["changed"] and "smtp" in done["changed"]
        assert "client vpn changed (secret)" in done["summary"]
        assert "clients removed: old-nas" in done["summary"]
        # The new secret serves at once, on the address still bound.
        assert accepted(port, NEW_SECRET)

        # Nothing changed since: nothing is listed, but what still waits for a restart
        # warns again (compared with what runs), and so does each warning.
        again = reload(daemon)
        assert named(again, "reloaded")[0]["changed"] == []
        assert named(again, "reloaded")[0]["summary"] == "no setting changed"
        assert sorted(e["setting"] for e in named(again, "reload_restart_required")) == [
            "server.listen",
            "server.metrics",
        ]
        assert sorted((e["warning"], e["where"]) for e in named(again, "config_warning")) == kinds
    for secret in (SECRET, NEW_SECRET, OTHER_SECRET):
        assert secret not in daemon.output


def test_a_refused_reload_names_each_problem_and_the_old_configuration_serves(
    tmp_path: Path,
) -> None:
    with Daemon(tmp_path, base_config(tmp_path)) as daemon:

        def break_it(data: dict[str, Any]) -> None:
            data["server"]["max_queue_wiat"] = 1  # a typo
            data["clients"][0]["secret"] = NEW_SECRET
            data["clients"][1]["address"] = ["not-an-address"]

        rewrite(daemon, break_it)
        events = reload(daemon)
        (failed,) = named(events, "reload_failed")
        problems = failed["problems"]
        assert any(
            p.startswith("server.max_queue_wiat") and "max_queue_wait" in p for p in problems
        )
        assert any(p.startswith("clients.1.address") for p in problems)
        assert "running configuration keeps serving" in failed["detail"]
        assert not named(events, "reloaded") and not named(events, "config_warning")
        assert accepted(daemon.port, SECRET)  # the old secret still serves
    assert NEW_SECRET not in daemon.output


def test_several_workers_log_each_warning_once_per_reload(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    config["server"] |= {"workers": 2, "state_store": {"backend": "sqlite"}}
    with Daemon(tmp_path, config) as daemon:
        daemon.wait_for(lambda e: e.get("event") == "workers_ready")
        assert len(named(daemon.events, "config_warning")) == 1  # the supervisor's
        events = reload(daemon, answers=2)  # each worker reloads
        assert len(named(events, "reloaded")) == 2
        assert [e["warning"] for e in named(events, "config_warning")] == ["store_failmode_safe"]


def test_a_reload_counts_the_users_file_changes_without_naming_anyone(tmp_path: Path) -> None:
    with Daemon(tmp_path, base_config(tmp_path)) as daemon:
        users = {
            "dave": {"password_hash": FAST_HASHER.hash("dave-new-pw")},  # a new password
            "erin": {"password_hash": FAST_HASHER.hash("erin-pw")},
        }
        (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": users}))
        (done,) = named(reload(daemon), "reloaded")
        assert done["users_file"] == {"users": 2, "added": 1, "removed": 0, "changed": 1}
        assert done["summary"] == "users file: 1 added, 1 changed"
        assert done["changed"] == []  # no setting of the configuration file
        assert "erin" not in str(done) and "$argon2" not in str(done)
