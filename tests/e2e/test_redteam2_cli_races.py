"""Red team 2, end to end: an operator's `mfaproxy users` commands (real CLI processes
on the same SQLite user store) while the daemon checks second factors for the same
users. Every login still gets its right answer (no `store_unavailable` from a lock
the CLI held, no Accept for a spent code), and every command succeeds.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfaproxy.otp.backup_codes import generate_codes
from tests.e2e.methods_common import SECRET, daemon_config, open_store, password
from tests.support.daemon import REPO, Daemon
from tests.support.nas import UdpNas, login

pytestmark = pytest.mark.e2e

COMMANDS = [
    ["unlock", "alice"],
    ["backup-codes", "bob"],
    ["forget-trust", "alice"],
    ["allow-enrolment", "bob", "--for", "1h"],
    ["set-method", "bob", "totp"],
    ["show", "alice"],
]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    multifactor = {"enabled": ["totp"], "default": "totp", "alternate": ["backup_codes"]}
    running = Daemon(tmp_path, daemon_config(tmp_path, {"alice": {}, "bob": {}}, multifactor))
    store = open_store(running)
    for user in ("alice", "bob"):
        store.set_totp_secret(user, "JBSWY3DPEHPK3PXPJBSWY3DP", 0)
        store.set_method(user, "totp", 0)
    store.close()
    with running:
        yield running


def test_users_commands_beside_code_checks_cost_no_login(daemon: Daemon) -> None:
    codes = generate_codes(400)
    store = open_store(daemon)
    store.replace_backup_codes("alice", codes, 0)
    store.close()
    failures: list[str] = []

    def operator() -> None:
        config = ["--config", str(daemon.config_path)]
        for command in COMMANDS:
            done = subprocess.run(
                [sys.executable, "-m", "mfaproxy", "users", *command, *config],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                failures.append(f"{command}: {done.stderr.strip()}")

    busy = threading.Thread(target=operator)
    busy.start()
    nas = UdpNas(daemon.port)
    used: list[str] = []
    try:
        for code in codes:  # one backup-code login after another while the CLI runs
            if not busy.is_alive() and len(used) >= 3:
                break
            reply = login(nas, SECRET, "alice", password("alice"), "backup", code)
            assert reply.accepted, reply.message
            used.append(code)
        spent = login(nas, SECRET, "alice", password("alice"), "backup", used[0])
        assert not spent.accepted
    finally:
        nas.close()
        busy.join(120)
    assert failures == []
    assert daemon.audit(reason="store_unavailable") == []
    assert len(daemon.audit(login_name="alice", reason="mfa_backup_code_ok")) == len(used)
    assert "Traceback" not in daemon.output
