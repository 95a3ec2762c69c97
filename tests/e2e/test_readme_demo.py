"""README "Try it", walked as written: the shipped config/mfaproxy.yaml served by the real
daemon, and each shell command of the section run as a newcomer would (radclient,
`users enroll`, `radtest` answering at its prompt, `users allow-enrolment`).

The commands are read from the README itself, so the section cannot drift from what
works. Only the port, the configuration path and the venv path are substituted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
import yaml

from mfaproxy.config.schema import load_config
from mfaproxy.store.factory import open_user_store
from tests.support.daemon import REPO, Daemon

pytestmark = pytest.mark.e2e

EXPECTED = [
    "echo 'User-Name=alice,User-Password=demo-password,Message-Authenticator=0x00'"
    " | radclient -x 127.0.0.1:1812 auth testing123",
    ".venv/bin/mfaproxy users enroll bob totp --config config/mfaproxy.yaml",
    ".venv/bin/mfaproxy radtest --server 127.0.0.1:1812 --secret testing123 --user bob",
    ".venv/bin/mfaproxy users allow-enrolment alice --for 1h --config config/mfaproxy.yaml",
    ".venv/bin/mfaproxy radtest --server 127.0.0.1:1812 --secret testing123 --user alice",
]
PASSWORDS = {"alice": "demo-password", "bob": "bob-password"}


def try_it_commands() -> list[str]:
    """The shell commands of README "Try it", continuation lines joined, comments cut."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            command = line.split("   #", 1)[0].strip()
            if command:
                commands.append(re.sub(r"\s+", " ", command))
    return commands


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    config: dict[str, Any] = yaml.safe_load((REPO / "config/mfaproxy.yaml").read_text())
    config["directory"]["local"]["users_file"] = str(REPO / "config/users.yaml")
    for key in ("listen", "log", "state_dir"):
        config["server"].pop(key)
    with Daemon(tmp_path, config) as running:
        yield running


def localised(command: str, daemon: Daemon) -> str:
    return (
        command.replace("127.0.0.1:1812", f"127.0.0.1:{daemon.port}")
        .replace("--config config/mfaproxy.yaml", f"--config {daemon.config_path}")
        .replace(".venv/bin/mfaproxy", f"{shlex.quote(sys.executable)} -m mfaproxy")
    )


def shell(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, shell=True, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def radtest(command: str, user: str, key: str | None = None) -> tuple[int, str]:
    """Run `radtest` as at a terminal: the password, then at each challenge the code of
    `key` (or of the key the challenge shows, for an inline enrolment)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        command,
        shell=True,
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(PASSWORDS[user] + "\n")
    proc.stdin.flush()
    output: list[str] = []
    challenged = False
    for line in proc.stdout:
        output.append(line)
        if line.startswith("Received Access-Challenge"):
            challenged = True
        if "Reply-Message = " in line and challenged:
            message = json.loads(line.split(" = ", 1)[1])
            shown = re.search(r"app \(6 digits, 30s\): ([A-Z2-7 ]+) then", message)
            secret = shown.group(1).replace(" ", "") if shown else key
            assert secret is not None, message
            proc.stdin.write(pyotp.TOTP(secret).now() + "\n")
            proc.stdin.flush()
            challenged = False
    return proc.wait(timeout=60), "".join(output)


def test_the_readme_try_it_section_works_as_written(daemon: Daemon) -> None:
    commands = try_it_commands()
    assert commands == EXPECTED  # a README change must come with this walk-through
    alice, enrol_bob, radtest_bob, window, radtest_alice = (localised(c, daemon) for c in commands)

    accepted = shell(alice)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Access-Accept" in accepted.stdout and 'Filter-Id = "vpn-users"' in accepted.stdout

    # before the operator enrols him, bob's password alone gets nowhere
    code, output = radtest(radtest_bob, "bob")
    assert code == 1 and "Access-Reject" in output and "not set up" in output

    enrolled = shell(enrol_bob)
    assert enrolled.returncode == 0, enrolled.stderr
    uri = next(line for line in enrolled.stdout.splitlines() if line.startswith("otpauth://"))
    key = parse_qs(urlparse(uri).query)["secret"][0]
    code, output = radtest(radtest_bob, "bob", key)
    assert code == 0, output
    assert "Access-Challenge" in output and "Access-Accept" in output
    assert 'Class = "admins"' in output or "Class = 0x61646d696e73" in output
    assert 'Filter-Id = "full-access"' in output

    opened = shell(window)
    assert opened.returncode == 0 and "may enrol" in opened.stdout, opened.stderr
    code, output = radtest(radtest_alice, "alice")
    assert code == 0, output
    assert "Add this key" in output and "Access-Accept" in output
    daemon.wait_audit(user="alice", reason="mfa_enrolled")
    store = open_user_store(load_config(daemon.config_path))
    try:
        record = store.get_user("alice")
    finally:
        store.close()
    # alice now has TOTP, and the window is used up
    assert record is not None and "totp" in record.enrolled and record.enrol_until is None
