"""Red team 2, end to end: SIGHUP while a NAS keeps logging in, each time with the
configuration or the users file broken in another way an operator (or a half-done
deploy) breaks it. Every broken reload is refused with a problem that names the file or
the dotted path, the running configuration keeps serving every login, and a good
reload afterwards still applies.

Findings this caught: an empty users file (truncated by a `>` redirect, a full disk, a
copy in progress) reloaded as "no users" and rejected everyone; a configuration file
that was not UTF-8 made `check-config` and `serve` end in a traceback, and a reload
logged a bare `UnicodeDecodeError` without the file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.methods_common import SECRET, daemon_config, password
from tests.support.daemon import REPO, Daemon, LogEvent
from tests.support.nas import UdpNas, access_request, exchange

pytestmark = pytest.mark.e2e


class Deploy:
    """The daemon, its files as first written, and a NAS logging in alice meanwhile."""

    def __init__(self, tmp: Path) -> None:
        config = daemon_config(tmp, {"alice": {}}, {"enabled": ["totp"], "default": "totp"})
        config["access_policies"] = {"mfa": {"default_action": "mfa_skipped"}}
        self.daemon = Daemon(tmp, config)
        self.users = tmp / "users.yaml"
        self.good_config = self.daemon.config_path.read_text()
        self.good_users = self.users.read_text()
        self.answers: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._stream)

    def _stream(self) -> None:
        nas = UdpNas(self.daemon.port)
        try:
            while not self._stop.is_set():
                request = access_request(SECRET, "alice", password("alice"))
                self.answers.append(exchange(nas, SECRET, request).code)
        except BaseException as exc:  # a lost reply shows up as a socket timeout
            self.errors.append(exc)
        finally:
            nas.close()

    def reload(self) -> LogEvent:
        """SIGHUP; the `reloaded` or `reload_failed` event it led to."""
        mark = len(self.daemon.events)
        assert self.daemon.proc is not None
        self.daemon.proc.send_signal(signal.SIGHUP)
        return self.daemon.wait_for(
            lambda e: (
                self.daemon.events.index(e) >= mark
                and e.get("event") in ("reloaded", "reload_failed")
            )
        )

    def restore(self) -> None:
        self.daemon.config_path.write_text(self.good_config)
        self.users.write_text(self.good_users)

    def start(self) -> None:
        self.daemon.start()
        self._sender.start()

    def stop(self) -> None:
        self._stop.set()
        self._sender.join(60)
        self.daemon.stop()


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deploy]:
    running = Deploy(tmp_path_factory.mktemp("reload"))
    running.start()
    yield running
    running.stop()


def edit_config(change: Callable[[dict[str, Any]], None]) -> Callable[[Deploy], object]:
    def apply(deploy: Deploy) -> None:
        document = yaml.safe_load(deploy.good_config)
        change(document)
        deploy.daemon.config_path.write_text(yaml.safe_dump(document))

    return apply


def missing_secret_file(document: dict[str, Any]) -> None:
    client = document["clients"][0]
    del client["secret"]
    client["secret_file"] = "/nonexistent/radius-secret"


BREAKAGES: dict[str, tuple[Callable[[Deploy], object], str]] = {
    "users file emptied": (lambda d: d.users.write_text(""), "users.yaml: empty"),
    "users file not UTF-8": (
        lambda d: d.users.write_bytes(b"users:\n  alice:\xff\n"),
        "users.yaml: not UTF-8 text (octet 15 is 0xff)",
    ),
    "config not UTF-8": (
        lambda d: d.daemon.config_path.write_bytes(b"\xff\xfe\x00garbage"),
        "mfaproxy.yaml: not UTF-8 text (octet 0 is 0xff)",
    ),
    "config emptied": (lambda d: d.daemon.config_path.write_text(""), "must be a mapping"),
    "config cut mid-write": (
        lambda d: d.daemon.config_path.write_text(d.good_config[: len(d.good_config) // 2]),
        "directory (line",
    ),
    "users file gone": (lambda d: d.users.unlink(), "users.yaml: cannot read"),
    "secret file gone": (edit_config(missing_secret_file), "clients.0"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_reload_is_refused_and_the_old_config_keeps_serving(
    deploy: Deploy, breakage: str
) -> None:
    breaks, problem = BREAKAGES[breakage]
    answered = len(deploy.answers)
    breaks(deploy)
    try:
        event = deploy.reload()
        assert event["event"] == "reload_failed", event
        assert any(problem in p for p in event["problems"]), event["problems"]
        # alice still logs in on the configuration that was running
        check = UdpNas(deploy.daemon.port)
        try:
            reply = exchange(check, SECRET, access_request(SECRET, "alice", password("alice")))
        finally:
            check.close()
        assert reply.accepted, reply.message
    finally:
        deploy.restore()
    assert deploy.reload()["event"] == "reloaded"
    assert not deploy.errors
    assert len(deploy.answers) > answered
    assert set(deploy.answers) == {2}, "a login got no Accept during the reloads"
    assert "Traceback" not in deploy.daemon.output


def test_a_users_file_that_means_no_users_still_says_so(tmp_path: Path) -> None:
    """The control: an explicit `users: {}` is a file without users, not a problem."""
    config = daemon_config(tmp_path, {}, {"enabled": ["totp"], "default": "totp"})
    (tmp_path / "mfaproxy.yaml").write_text(yaml.safe_dump(config))
    assert yaml.safe_load((tmp_path / "users.yaml").read_text()) == {"users": {}}
    checked = run_check_config(tmp_path / "mfaproxy.yaml")
    assert checked.returncode == 0, checked.stderr


def test_check_config_on_a_file_that_is_not_utf8_names_it_without_a_traceback(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mfaproxy.yaml"
    path.write_bytes(b"server:\n  listen: [\xe9]\n")  # Latin-1, as an old editor saves it
    checked = run_check_config(path)
    assert checked.returncode == 1
    assert f"{path}: not UTF-8 text (octet 19 is 0xe9)" in checked.stderr
    assert "Traceback" not in checked.stderr


def run_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfaproxy", "check-config", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
