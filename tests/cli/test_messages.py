"""Messages an operator reads: each says what really happened (issue 12, item 5)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from argon2 import PasswordHasher

from tests.support.daemon import REPO, Daemon
from tests.support.nas import UdpNas, access_request
from tests.support.ports import free_udp_port
from tests.support.radclient import radclient

DEMO = REPO / "config" / "mfaproxy.yaml"
SECRET = "messages-test-secret"


def mfaproxy(*args: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfaproxy", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        check=False,
        timeout=60,
    )


def config_for(tmp: Path, **server: object) -> Path:
    users = {"users": {"alice": {"password_hash": PasswordHasher(1, 8, 1).hash("pw")}}}
    (tmp / "users.yaml").write_text(yaml.safe_dump(users))
    config = {
        "server": {"state_dir": str(tmp / "state"), **server},
        "clients": [{"name": "vpn", "address": "127.0.0.1", "secret": SECRET}],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }
    path = tmp / "mfaproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", str(DEMO), "check-config"],
        ["check-config", "--config", str(DEMO)],
        ["--config", "/nonexistent.yaml", "check-config", "--config", str(DEMO)],
    ],
    ids=["before", "after", "after-wins"],
)
def test_config_is_accepted_before_or_after_the_subcommand(argv: list[str]) -> None:
    done = mfaproxy(*argv)
    assert done.returncode == 0, done.stderr
    assert f"configuration {DEMO} is valid" in done.stdout


def test_config_before_a_users_subcommand(tmp_path: Path) -> None:
    path = config_for(tmp_path)
    done = mfaproxy("--config", str(path), "users", "list")
    assert done.returncode == 0, done.stderr


def test_a_closed_pipe_ends_quietly() -> None:
    # `check-config | head -1`: the reader is gone before we write. The read end is
    # closed before the child starts, so every write fails (no race with the reader).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = mfaproxy("check-config", "--config", str(DEMO), stdout=write_end)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141  # as a program killed by SIGPIPE (`yes | head`)


def test_address_in_use_names_the_address(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        other = free_udp_port()
        path = config_for(tmp_path, listen=[f"127.0.0.1:{other}", f"127.0.0.1:{port}"])
        done = mfaproxy("serve", "--config", str(path))
    assert done.returncode == 3
    assert f"UDP 127.0.0.1:{port}: Address already in use" in done.stderr, done.stderr


@pytest.mark.e2e
def test_the_debug_log_shows_the_packet_type(tmp_path: Path) -> None:
    config = yaml.safe_load(config_for(tmp_path).read_text())
    with Daemon(tmp_path, config) as daemon:
        nas = UdpNas(daemon.port)
        try:
            nas.send(access_request(SECRET, "alice", "pw").RequestPacket())
            nas.receive()
        finally:
            nas.close()
        received = daemon.wait_for(lambda e: e.get("event") == "request_received")
    assert received["packet_type"] == "Access-Request"
    assert "[redacted]" not in str(received)


@pytest.mark.e2e
def test_a_shared_secret_of_128_octets_works_with_radclient(tmp_path: Path) -> None:
    # The warning asks for long secrets (16 octets or more): the longest a NAS commonly
    # takes must work end to end, with FreeRADIUS's own client as the NAS.
    secret = "S" * 64 + "e" * 63 + "!"
    config = yaml.safe_load(config_for(tmp_path).read_text())
    config["clients"][0]["secret"] = secret
    with Daemon(tmp_path, config) as daemon:
        result = radclient(
            daemon.port,
            secret,
            {"User-Name": "alice", "User-Password": "pw", "Message-Authenticator": "0x00"},
        )
        warned = [e for e in daemon.events if e.get("warning") == "short_shared_secret"]
    assert len(secret.encode()) == 128
    assert result.code == "Access-Accept", result.output
    assert warned == []
