"""`mfaproxy users allow-enrolment USER --for 24h`, `users close-enrolment USER`, the
window in `users show`, and `set-method --configure-later` opening one."""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import pytest

from mfaproxy.cli.enrolment_window import duration
from mfaproxy.cli.main import main
from mfaproxy.store.records import UserRepository
from tests.cli.test_users_cli import _HASH, Runner, config_path, run, store

__all__ = ["config_path", "run", "store"]  # fixtures used by name below


def test_allow_enrolment_opens_a_durable_window_shown_by_show(
    run: Runner, store: UserRepository
) -> None:
    before = time.time()
    code, out, _ = run("users", "allow-enrolment", "Alice", "--for", "2h")
    assert code == 0 and "alice: may enrol" in out and "open until" in out
    record = store.get_user("alice")
    assert record is not None and record.enrol_until is not None
    assert before + 7200 <= record.enrol_until <= time.time() + 7200
    code, out, _ = run("users", "show", "alice")
    assert code == 0 and "enrolment window:" in out and "open until" in out
    code, out, _ = run("users", "list")
    assert "(enrolment window open)" in out


def test_close_enrolment_closes_it(run: Runner, store: UserRepository) -> None:
    run("users", "allow-enrolment", "alice")
    code, out, _ = run("users", "close-enrolment", "alice")
    assert code == 0 and "closed" in out
    record = store.get_user("alice")
    assert record is not None and record.enrol_until is None
    assert "enrolment window:    closed" in run("users", "show", "alice")[1]
    code, _, err = run("users", "close-enrolment", "alice")
    assert code == 1 and "no enrolment window" in err


def test_the_default_window_is_a_day(run: Runner, store: UserRepository) -> None:
    run("users", "allow-enrolment", "alice")
    record = store.get_user("alice")
    assert record is not None and record.enrol_until is not None
    assert abs(record.enrol_until - time.time() - 86400) < 60


def test_configure_later_opens_a_window(run: Runner, store: UserRepository) -> None:
    code, out, _ = run("users", "set-method", "bob", "totp", "--configure-later", "--for", "30m")
    assert code == 0 and "window open until" in out
    record = store.get_user("bob")
    assert record is not None and record.configure_later and record.enrol_until is not None
    assert record.enrol_until <= time.time() + 1800


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), (" 2H ", 7200)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "31d", "1w", "-1h", "1.5h", "forever"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_a_bad_duration_is_a_usage_error(run: Runner) -> None:
    with pytest.raises(SystemExit) as exited:
        run("users", "allow-enrolment", "alice", "--for", "forever")
    assert exited.value.code == 2


# --------------------------------------------------------------------------- administrators

ADMIN_CONFIG = """
server: {state_dir: ./state}
clients: [{name: vpn, address: ["127.0.0.1/32"], secret: s3cret-s3cret-s3cret}]
directory: {backend: local, local: {users_file: users.yaml}}
multifactor:
  enabled: [totp]
  default: totp
  administrators: {group: MFA-Admins}
  inline_enrolment: {allow: [operator_window], administrators: %s}
"""
ADMIN_USERS = (
    f"users:\n  alice: {{password_hash: '{_HASH}', groups: [vpn-users]}}\n"
    f"  bob: {{password_hash: '{_HASH}', groups: [vpn-users, mfa-admins]}}\n"
)


def allow(tmp_path: Path, user: str, administrators: str = "false") -> tuple[int, str]:
    (tmp_path / "users.yaml").write_text(ADMIN_USERS, encoding="utf-8")
    config = tmp_path / "mfaproxy.yaml"
    config.write_text(ADMIN_CONFIG % administrators, encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["users", "allow-enrolment", user, "--config", str(config)])
    return code, err.getvalue()


def test_an_administrators_window_says_it_lets_them_enrol_nothing(tmp_path: Path) -> None:
    # bob is in the administrators group (spelt otherwise in the file): his window is
    # recorded, but the login would refuse it (enrolment_administrator).
    code, err = allow(tmp_path, "bob")
    assert code == 0
    assert "bob is in 'MFA-Admins' (an administrator)" in err
    assert "multifactor.inline_enrolment.administrators" in err
    assert "mfaproxy users enroll bob METHOD" in err


def test_no_administrator_warning_for_other_users(tmp_path: Path) -> None:
    code, err = allow(tmp_path, "alice")
    assert code == 0
    assert "administrator" not in err
    assert "used up by the first enrolment" in err


def test_no_administrator_warning_when_administrators_may_enrol(tmp_path: Path) -> None:
    code, err = allow(tmp_path, "bob", administrators="true")
    assert code == 0 and "administrator" not in err


def test_a_directory_without_groups_makes_every_window_useless(tmp_path: Path) -> None:
    config = tmp_path / "mfaproxy.yaml"
    config.write_text(
        ADMIN_CONFIG.replace(
            "directory: {backend: local, local: {users_file: users.yaml}}",
            "directory: {backend: radius, radius: {servers: [{host: 127.0.0.1, secret: x}]}}",
        )
        % "false",
        encoding="utf-8",
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["users", "allow-enrolment", "carol", "--config", str(config)])
    assert code == 0
    assert "every user counts as an administrator" in err.getvalue()
