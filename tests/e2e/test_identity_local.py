"""End to end, the users file: every spelling of a name reaches one MFA identity, and
the spellings that only an attacker would type are refused with their own reason.

The real daemon, a users file with `sam` and `Stra\\u00dfe`, MFA optional per user (the
policy under which a missed record would skip the second factor), `sam` enrolled in
TOTP through the real store; a scriptable NAS sends the exact octets.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
import yaml
from argon2 import PasswordHasher

from mfaproxy.config.schema import load_config
from mfaproxy.otp.totp import TotpSettings, new_secret
from mfaproxy.store.factory import open_user_store
from tests.support.daemon import REPO, Daemon
from tests.support.nas import UdpNas, access_request, exchange, login

pytestmark = pytest.mark.e2e

SECRET = "identity-secret"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORDS = {"sam": "sam-pw", "Stra\u00dfe": "strasse-pw", "mallory": "mallory-pw"}


def write_config(tmp: Path) -> dict[str, Any]:
    users = {n: {"password_hash": FAST.hash(p), "groups": ["vpn"]} for n, p in PASSWORDS.items()}
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": users}), encoding="utf-8")
    return {
        "clients": [{"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET}],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {
            "login": {
                "policies": [
                    {
                        "name": "no-mallory",
                        "rules": [{"type": "users", "users": [" MALLORY"]}],
                        "action_when_matched": "access_denied",
                    }
                ]
            },
            "mfa": {"default_action": "mfa_optional_per_user"},
        },
        "multifactor": {"enabled": ["totp"], "default": "totp"},
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("identity")
    with Daemon(tmp, write_config(tmp)) as running:
        yield running


@pytest.fixture(scope="module")
def sam_totp(daemon: Daemon) -> pyotp.TOTP:
    secret = new_secret(TotpSettings())
    store = open_user_store(load_config(daemon.config_path))
    try:
        store.set_totp_secret("sam", secret, 0.0)
        store.set_method("sam", "totp", 0.0)
    finally:
        store.close()
    return pyotp.TOTP(secret)


@pytest.fixture
def nas(daemon: Daemon) -> Iterator[UdpNas]:
    client = UdpNas(daemon.port)
    yield client
    client.close()


def send(nas: UdpNas, user: str | bytes, password: str) -> int:
    request = access_request(SECRET, "placeholder", password)
    del request["User-Name"]
    request.AddAttribute("User-Name", user)
    request.add_message_authenticator()
    return exchange(nas, SECRET, request).code


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        (" sam", "user_name_whitespace"),
        ("sam ", "user_name_whitespace"),
        ("sam\t", "user_name_whitespace"),
        ("   ", "user_name_blank"),
        ("sa\x00m", "user_name_control_characters"),
        ("sam\u200b", "user_name_control_characters"),
        ("\uff53am", "user_name_not_canonical"),
        ("\u017fam", "user_name_not_canonical"),
        (b"sa\xffm", "user_name_not_utf8"),
    ],
)
def test_alias_spellings_are_refused_with_their_reason(
    daemon: Daemon, nas: UdpNas, sam_totp: pyotp.TOTP, user: str | bytes, reason: str
) -> None:
    # The right password: the refusal is about the name, and happens before any lookup.
    assert send(nas, user, PASSWORDS["sam"]) == 3
    event = daemon.wait_audit(reason=reason)
    assert (event["outcome"], event["user"]) == ("reject", None)
    assert not daemon.audit(reason="mfa_optional_not_configured")


@pytest.mark.parametrize("spelling", ["sam", "SAM", "Sam", "sAm"])
def test_an_enrolled_user_is_asked_for_the_code_in_every_spelling(
    daemon: Daemon, nas: UdpNas, sam_totp: pyotp.TOTP, spelling: str
) -> None:
    reply = login(nas, SECRET, spelling, PASSWORDS["sam"])
    assert reply.challenged, f"{spelling!r} skipped the second factor"
    event = daemon.wait_audit(login_name=spelling, outcome="challenge")
    assert event["user"] == "sam"


@pytest.mark.parametrize("spelling", ["Stra\u00dfe", "STRASSE", "strasse", "STRA\u1e9eE"])
def test_sharp_s_spellings_are_one_user(daemon: Daemon, nas: UdpNas, spelling: str) -> None:
    assert login(nas, SECRET, spelling, PASSWORDS["Stra\u00dfe"]).accepted


@pytest.mark.parametrize("spelling", ["mallory", "MALLORY", "Mallory"])
def test_a_users_rule_denies_every_spelling(daemon: Daemon, nas: UdpNas, spelling: str) -> None:
    assert login(nas, SECRET, spelling, PASSWORDS["mallory"]).rejected
    event = daemon.wait_audit(login_name=spelling, reason="login_policy_denied")
    assert (event["user"], event["login_policy"]) == ("mallory", "no-mallory")


def test_a_users_file_with_keys_that_are_one_user_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    users = {"Stra\u00dfe": "x", "STRASSE": "y", "\uff53am": "z"}
    entries = {name: {"password_hash": FAST.hash(pw)} for name, pw in users.items()}
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": entries}), encoding="utf-8")
    (tmp_path / "mfaproxy.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    command = ["check-config", "--config", str(tmp_path / "mfaproxy.yaml")]
    result = subprocess.run(
        [sys.executable, "-m", "mfaproxy", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "the same user name as users.STRASSE ('strasse')" in result.stderr
    assert "user_name_not_canonical" in result.stderr
