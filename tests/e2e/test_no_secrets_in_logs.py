"""No password, shared secret or State value appears in any log line, at debug level,
on any path. Unique values make a leak findable by plain search."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
import yaml

from mfaproxy.config.schema import load_config
from mfaproxy.directory.local import hash_password
from mfaproxy.otp.backup_codes import generate_codes
from mfaproxy.store.factory import open_user_store
from tests.support.daemon import REPO, Daemon
from tests.support.nas import UdpNas, access_request, exchange, login
from tests.support.radclient import radclient

pytestmark = pytest.mark.e2e

SECRET = "sharedsecret-" + secrets.token_hex(8)
WRONG_SECRET = "wrongsecret-" + secrets.token_hex(8)
PASSWORD = "goodpassword-" + secrets.token_hex(8)
WRONG_PASSWORD = "badpassword-" + secrets.token_hex(8)
TOTP_SECRET = pyotp.random_base32()
BACKUP_CODES = generate_codes(2)
SENSITIVE = [SECRET, WRONG_SECRET, PASSWORD, WRONG_PASSWORD, TOTP_SECRET, *BACKUP_CODES]


def forbidden_forms(value: str) -> list[str]:
    raw = value.encode()
    return [value, raw.hex(), "0x" + raw.hex(), repr(raw)]


def assert_clean(text: str) -> None:
    for value in SENSITIVE:
        for form in forbidden_forms(value):
            assert form not in text, f"a secret leaked into the output as {form!r}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("secrets")
    users = tmp / "users.yaml"
    users.write_text(
        yaml.safe_dump(
            {
                "users": {
                    "carol": {"password_hash": hash_password(PASSWORD)},
                    "mfa-user": {"password_hash": hash_password(PASSWORD), "groups": ["mfa"]},
                }
            }
        )
    )
    config = {
        "clients": [{"name": "nas", "address": ["127.0.0.1"], "secret": SECRET}],
        "directory": {"backend": "local", "local": {"users_file": str(users)}},
        "access_policies": {
            "mfa": {
                "default_action": "mfa_skipped",
                "policies": [
                    {
                        "name": "mfa-group",
                        "rules": [{"type": "user_groups", "groups": ["mfa"]}],
                        "action_when_matched": "mfa_required",
                    }
                ],
            }
        },
        "multifactor": {"enabled": ["totp"], "alternate": ["backup_codes"]},
    }
    running = Daemon(tmp, config)
    store = open_user_store(load_config(running.config_path))
    store.set_totp_secret("mfa-user", TOTP_SECRET, 0)
    store.set_method("mfa-user", "totp", 0)
    store.replace_backup_codes("mfa-user", BACKUP_CODES, 0)
    store.close()
    with running:
        yield running


def test_every_path_at_debug_level_logs_no_secret(daemon: Daemon) -> None:
    ma = {"Message-Authenticator": "0x00"}
    assert radclient(
        daemon.port, SECRET, {"User-Name": "carol", "User-Password": PASSWORD, **ma}
    ).code == ("Access-Accept")
    assert (
        radclient(
            daemon.port, SECRET, {"User-Name": "carol", "User-Password": WRONG_PASSWORD, **ma}
        ).code
        == "Access-Reject"
    )
    assert (
        radclient(
            daemon.port, SECRET, {"User-Name": "nobody", "User-Password": WRONG_PASSWORD, **ma}
        ).code
        == "Access-Reject"
    )
    radclient(
        daemon.port,
        WRONG_SECRET,
        {"User-Name": "carol", "User-Password": PASSWORD, **ma},
        timeout=0.5,
    )
    radclient(daemon.port, SECRET, {"User-Name": "carol", "User-Password": PASSWORD}, timeout=0.5)
    nas = UdpNas(daemon.port)
    try:
        # well formed (43 base64url characters), so it reaches the state store lookup
        unknown = b"state-value-" + b"x" * 31
        data = access_request(SECRET, "carol", PASSWORD, State=unknown).RequestPacket()
        nas.send(data)
        nas.receive()
        nas.send(data)  # retransmission path
        nas.receive()
        nas.send(data[:30])  # malformed path
        nas.send(access_request(SECRET, "carol", PASSWORD, NAS_Identifier="end").RequestPacket())
        nas.receive()
    finally:
        nas.close()
    daemon.wait_for(lambda e: e.get("nas_identifier") == "end")
    assert daemon.audit(reason="unknown_state")
    output = daemon.output
    assert "debug" in output  # the daemon really logged at debug level
    assert_clean(output)
    assert "state-value" not in output


def test_config_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "clients": [
                    {"name": "nas", "address": ["not-an-ip"], "secret": SECRET, "unknown": 1}
                ],
                "directory": {
                    "backend": "radius",
                    "radius": {"servers": [{"host": "x", "secret": PASSWORD}]},
                },
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mfaproxy", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 1
    assert "clients.0.unknown" in proc.stderr
    assert_clean(proc.stdout + proc.stderr)


def test_second_factor_paths_log_no_code_state_or_key(daemon: Daemon) -> None:
    nas = UdpNas(daemon.port)
    states: list[bytes] = []
    try:
        first = login(nas, SECRET, "mfa-user", PASSWORD)
        assert first.challenged and first.state is not None
        states.append(first.state)
        wrong = login(nas, SECRET, "mfa-user", PASSWORD, "backup")
        assert wrong.challenged and wrong.state is not None
        states.append(wrong.state)
        # a backup code that is wrong, then a right one, then the right one again
        bad = access_request(SECRET, "mfa-user", "zzzz-zzzz-zzzz-zzzz")
        bad.AddAttribute("State", wrong.state)
        retry = exchange(nas, SECRET, bad)
        assert retry.state is not None
        states.append(retry.state)
        assert login(nas, SECRET, "mfa-user", PASSWORD, BACKUP_CODES[0]).accepted
        assert not login(nas, SECRET, "mfa-user", PASSWORD, BACKUP_CODES[0]).accepted
        assert login(nas, SECRET, "mfa-user", PASSWORD, pyotp.TOTP(TOTP_SECRET).now()).accepted
        end = access_request(SECRET, "carol", PASSWORD, NAS_Identifier="end-mfa")
        assert exchange(nas, SECRET, end).accepted
    finally:
        nas.close()
    daemon.wait_for(lambda e: e.get("nas_identifier") == "end-mfa")
    output = daemon.output
    assert_clean(output)
    for state in states:
        assert state.hex() not in output
