"""`mfaproxy users ...` against a real SQLite store in a temporary state directory."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest

from mfaproxy.cli.main import main
from mfaproxy.config.schema import load_config
from mfaproxy.otp import totp
from mfaproxy.store.factory import open_user_store
from mfaproxy.store.records import UserRepository

CONFIG = """
server: {state_dir: ./state}
clients: [{name: vpn, address: ["127.0.0.1/32"], secret: s3cret}]
directory: {backend: local, local: {users_file: users.yaml}}
multifactor:
  enabled: [totp, email]
  default: totp
  backup_codes: {count: 4}
"""

Run = tuple[int, str, str]  # exit code, stdout, stderr
Runner = Callable[..., Run]

# The directory knows alice and bob (the CLI looks names up; a hash no password matches).
_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
USERS_FILE = f"users:\n  alice: {{password_hash: '{_HASH}'}}\n  bob: {{password_hash: '{_HASH}'}}\n"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "users.yaml").write_text(USERS_FILE, encoding="utf-8")
    path = tmp_path / "mfaproxy.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def store(config_path: Path) -> Iterator[UserRepository]:
    """The same store the CLI opens (same file, same master key)."""
    opened = open_user_store(load_config(config_path))
    yield opened
    opened.close()


@pytest.fixture
def run(config_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Runner]:
    def invoke(*argv: str) -> Run:
        code = main([*argv, "--config", str(config_path)])
        out, err = capsys.readouterr()
        return code, out, err

    yield invoke


def enroll(run: Runner, user: str = "alice", *extra: str) -> str:
    code, out, _ = run("users", "enroll", user, "totp", *extra)
    assert code == 0
    return str(out.splitlines()[0])


def uri_secret(uri: str) -> str:
    return parse_qs(urlparse(uri).query)["secret"][0]


# --------------------------------------------------------------------------- enroll


def test_enroll_prints_a_uri_whose_secret_is_stored(
    run: Runner, store: UserRepository, config_path: Path, tmp_path: Path
) -> None:
    png = tmp_path / "alice.png"
    png.write_bytes(b"old")
    png.chmod(0o644)  # an existing file must not keep a readable mode
    uri = enroll(run, "  Alice ", "--png", str(png))
    parsed = urlparse(uri)
    assert (parsed.scheme, parsed.netloc) == ("otpauth", "totp")
    assert parsed.path == "/mfaproxy:alice"
    secret = uri_secret(uri)
    assert store.get_totp_secret("alice") == secret
    settings = load_config(config_path).multifactor.totp
    code = pyotp.TOTP(secret).now()
    assert totp.verify(secret, code, time.time(), settings) is not None
    record = store.get_user("alice")
    assert record is not None and record.method == "totp" and "totp" in record.enrolled
    assert stat.S_IMODE(png.stat().st_mode) == 0o600
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_enroll_shows_a_qr_code_only_on_a_terminal(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, piped, _ = run("users", "enroll", "bob", "totp")
    assert len(piped.splitlines()) == 1  # the URI alone: easy for scripts
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    svg = tmp_path / "bob.svg"
    code, out, _ = run("users", "enroll", "bob", "totp", "--svg", str(svg))
    assert code == 0
    assert "\u2588" in out or "\u2580" in out  # block characters of the terminal QR code
    assert uri_secret(out.splitlines()[0]) in out  # and the key for manual entry
    assert stat.S_IMODE(svg.stat().st_mode) == 0o600 and b"<svg" in svg.read_bytes()


def test_reenrolment_replaces_the_secret(run: Runner, store: UserRepository) -> None:
    first = uri_secret(enroll(run))
    _, out, err = run("users", "enroll", "alice", "totp")
    assert "previous TOTP secret is replaced" in err
    assert store.get_totp_secret("alice") == uri_secret(out) != first


def test_enroll_refused_when_totp_is_not_enabled(
    run: Runner, store: UserRepository, config_path: Path
) -> None:
    config_path.write_text(
        CONFIG.replace("[totp, email]", "[email]").replace("default: totp", "default: email"),
        encoding="utf-8",
    )
    code, out, err = run("users", "enroll", "alice", "totp")
    assert code == 1 and out == ""
    assert "totp is not in multifactor.enabled" in err
    assert store.get_user("alice") is None


def test_enroll_with_an_unwritable_image_stores_nothing(
    run: Runner, store: UserRepository, tmp_path: Path
) -> None:
    bad = tmp_path / "missing-dir" / "qr.png"
    code, _, err = run("users", "enroll", "alice", "totp", "--png", str(bad))
    assert code == 1 and "cannot write" in err
    assert store.get_user("alice") is None


# --------------------------------------------------------------------------- backup codes


def test_backup_codes_print_count_codes_usable_once(run: Runner, store: UserRepository) -> None:
    code, out, _ = run("users", "backup-codes", "alice")
    assert code == 0
    codes = out.split()
    assert len(codes) == 4 and len(set(codes)) == 4
    now = time.time()
    for item in codes:
        assert store.consume_backup_code("alice", item, now)
        assert not store.consume_backup_code("alice", item, now)


def test_new_backup_codes_void_the_old_set(run: Runner, store: UserRepository) -> None:
    _, old, _ = run("users", "backup-codes", "alice")
    _, new, _ = run("users", "backup-codes", "alice")
    assert not store.consume_backup_code("alice", old.split()[0], time.time())
    assert store.consume_backup_code("alice", new.split()[0], time.time())


# --------------------------------------------------------------------------- show, list


def test_show_never_prints_secrets(run: Runner) -> None:
    secret = uri_secret(enroll(run))
    _, codes, _ = run("users", "backup-codes", "alice")
    code, out, err = run("users", "show", "ALICE")
    assert code == 0
    shown = (out + err).lower()
    assert secret.lower() not in shown
    assert not any(item in shown for item in codes.split())
    assert "method:              totp" in out
    assert "TOTP:                enrolled" in out
    assert "backup codes left:   4" in out
    assert "locked until:        not locked" in out


def test_show_and_unlock_unknown_user(run: Runner) -> None:
    for command in ("show", "unlock", "delete"):
        code, _, err = run("users", command, "nobody")
        assert code == 1 and "not in the user store" in err


def test_list_and_delete(run: Runner, store: UserRepository) -> None:
    enroll(run, "alice")
    run("users", "set-method", "bob", "email", "--configure-later")
    code, out, _ = run("users", "list")
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines == [
        ["alice", "totp"],
        ["bob", "email", "(configure", "later)", "(enrolment", "window", "open)"],
    ]
    code, _, _ = run("users", "delete", "alice")
    assert code == 0 and store.list_users() == ["bob"]


# --------------------------------------------------------------------------- set-method


def test_set_method_validates_against_enabled_methods(run: Runner, store: UserRepository) -> None:
    code, _, err = run("users", "set-method", "alice", "sms")
    assert code == 1 and "sms is not in multifactor.enabled (totp, email)" in err
    assert store.get_user("alice") is None
    with pytest.raises(SystemExit) as info:
        run("users", "set-method", "alice", "carrier-pigeon")
    assert info.value.code == 2


def test_set_method_none_and_configure_later(run: Runner, store: UserRepository) -> None:
    code, _, err = run("users", "set-method", "alice", "totp")
    assert code == 0 and "no totp enrolment yet" in err
    record = store.get_user("alice")
    assert record is not None and (record.method, record.configure_later) == ("totp", False)
    code, _, err = run("users", "set-method", "alice", "totp", "--configure-later")
    record = store.get_user("alice")
    assert code == 0 and err == ""
    assert record is not None and (record.method, record.configure_later) == ("totp", True)
    code, out, _ = run("users", "set-method", "alice", "none")
    record = store.get_user("alice")
    assert code == 0 and "server default: totp" in out
    assert record is not None and (record.method, record.configure_later) == (None, False)


# --------------------------------------------------------------------------- unlock, resets


def test_unlock_clears_a_lockout(run: Runner, store: UserRepository) -> None:
    now = time.time()
    store.record_failure("alice", now, max_failures=1, lockout_seconds=900)
    assert store.lock_state("alice", now).locked
    _, shown, _ = run("users", "show", "alice")
    assert "failures:            1" in shown and "UTC" in shown.split("locked until:")[1]
    code, out, _ = run("users", "unlock", "alice")
    assert code == 0 and "was locked until" in out
    assert store.lock_state("alice", time.time()).locked is False


def test_forget_trust_ends_a_users_trusted_reconnects(run: Runner, store: UserRepository) -> None:
    code, _, err = run("users", "forget-trust", "alice")
    assert code == 1 and "not in the user store" in err
    enroll(run, "alice")
    before = time.time()
    code, out, _ = run("users", "forget-trust", "ALICE")  # the identity a login reaches
    assert code == 0 and "alice: trusted reconnects ended" in out
    record = store.get_user("alice")
    assert record is not None and record.trust_not_before is not None
    assert record.trust_not_before >= before
    _, shown, _ = run("users", "show", "alice")
    assert "trust ended:" in shown and "UTC" in shown.split("trust ended:")[1]


def test_reset_lifecycle_request_list_approve(run: Runner, store: UserRepository) -> None:
    enroll(run, "alice")
    run("users", "backup-codes", "alice")
    code, out, _ = run("users", "resets", "request", "Alice")
    assert code == 0 and "reset request filed" in out
    _, again, _ = run("users", "resets", "request", "alice")
    assert "already pending" in again
    code, listing, _ = run("users", "resets")
    rows = [line.split() for line in listing.splitlines()[1:]]
    assert code == 0 and len(rows) == 1
    assert rows[0][0] == "alice" and rows[0][-2:] == ["cli", "pending"]
    code, out, _ = run("users", "resets", "approve", "alice")
    assert code == 0 and "reset approved" in out
    record = store.get_user("alice")
    assert record is not None and record.method is None
    assert record.enrolled == frozenset() and record.backup_codes_remaining == 0
    assert store.get_totp_secret("alice") is None
    code, _, err = run("users", "resets", "approve", "alice")
    assert code == 1 and "no pending reset request" in err
    _, listing, err = run("users", "resets")
    assert listing == "" and "no pending reset requests" in err
    _, history, _ = run("users", "resets", "--all")
    assert "approved" in history


def test_reset_clear_keeps_the_enrolment(run: Runner, store: UserRepository) -> None:
    secret = uri_secret(enroll(run, "alice"))
    run("users", "resets", "request", "alice")
    code, out, _ = run("users", "resets", "clear", "alice")
    assert code == 0 and "dismissed" in out
    record = store.get_user("alice")
    assert record is not None and record.method == "totp"
    assert record.last_reset is not None and record.last_reset.status == "cleared"
    assert store.get_totp_secret("alice") == secret
    code, _, _ = run("users", "resets", "clear", "alice")
    assert code == 1


def test_config_before_the_reset_action_is_kept(
    config_path: Path, store: UserRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["users", "resets", "--config", str(config_path), "request", "bob"]) == 0
    assert [r.user for r in store.list_resets()] == ["bob"]


# --------------------------------------------------------------------------- process


def test_module_entry_point_and_hash_password(config_path: Path) -> None:
    def cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mfaproxy", *argv, "--config", str(config_path)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    enrolled = cli("users", "enroll", "carol", "totp")
    assert enrolled.returncode == 0, enrolled.stderr
    assert enrolled.stdout.startswith("otpauth://totp/mfaproxy:carol?")
    hashed = cli("users", "hash-password", stdin="pw\n")
    assert hashed.returncode == 0 and hashed.stdout.startswith("$argon2id$")
