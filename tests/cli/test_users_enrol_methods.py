"""`mfaproxy users enroll USER yubikey|email|sms` against a real SQLite store, real
YubiKey OTPs (yubiotp's simulator) and, for YubiCloud, the fake verify-v2 server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mfaproxy.cli.main import main
from mfaproxy.config.multifactor import Method
from mfaproxy.config.schema import load_config
from mfaproxy.factors.base import FactorRequest, FactorResult, FactorServices, FactorUser, Verdict
from mfaproxy.factors.yubikey import build
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.factory import master_key, open_user_store
from mfaproxy.store.records import UserRepository
from mfaproxy.store.state import MemoryStateStore
from tests.support.ports import free_port
from tests.support.yubicloud import FakeYubicloud, SimulatedKey

CLIENT_ID = "4711"
API_KEY = base64.b64encode(b"shared api key 20 b.").decode()
LOCAL: dict[str, Any] = {"validation": "local"}

Run = tuple[int, str, str]  # exit code, stdout, stderr
Runner = Callable[..., Run]

# The directory knows alice and bob (the CLI looks names up; a hash no password matches).
_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
USERS_FILE = f"users:\n  alice: {{password_hash: '{_HASH}'}}\n  bob: {{password_hash: '{_HASH}'}}\n"


def write_config(
    path: Path,
    enabled: tuple[str, ...] = ("totp", "yubikey", "email", "sms"),
    yubikey: dict[str, Any] | None = None,
) -> None:
    """JSON is YAML: the configuration, with the YubiKey section given (local by default)."""
    config = {
        "server": {"state_dir": "./state"},
        "clients": [{"name": "vpn", "address": ["127.0.0.1/32"], "secret": "s3cret"}],
        "directory": {"backend": "local", "local": {"users_file": "users.yaml"}},
        "multifactor": {
            "enabled": list(enabled),
            "default": "totp",
            "yubikey": yubikey or LOCAL,
            "sms": {"provider": "email_gateway", "email_gateway": {"domain": "sms.example.net"}},
        },
    }
    path.write_text(json.dumps(config), encoding="utf-8")


def cloud_settings(*urls: str) -> dict[str, Any]:
    return {"validation": "yubicloud", "client_id": CLIENT_ID, "api_key": API_KEY, "api_urls": urls}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "users.yaml").write_text(USERS_FILE, encoding="utf-8")
    path = tmp_path / "mfaproxy.yaml"
    write_config(path)
    return path


@pytest.fixture
def store(config_path: Path) -> Iterator[UserRepository]:
    """The same store the CLI opens (same file, same master key)."""
    opened = open_user_store(load_config(config_path))
    yield opened
    opened.close()


@pytest.fixture
def run(config_path: Path, capsys: pytest.CaptureFixture[str]) -> Runner:
    def invoke(*argv: str) -> Run:
        code = main([*argv, "--config", str(config_path)])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def key() -> SimulatedKey:
    return SimulatedKey.random()


@pytest.fixture
def cloud(key: SimulatedKey) -> Iterator[FakeYubicloud]:
    with FakeYubicloud(CLIENT_ID, API_KEY, [key]) as server:
        yield server


def enrol_local(run: Runner, key: SimulatedKey, otp: str | None = None) -> Run:
    return run(
        "users",
        "enroll",
        "alice",
        "yubikey",
        "--otp",
        otp or key.otp(),
        "--aes-key",
        key.aes_key_hex,
        "--private-id",
        key.private_id_hex,
    )


def factor_check(config_path: Path, otp: str, user: str = "alice") -> FactorResult:
    """What the daemon's YubikeyFactor says of `otp`, over the store the CLI wrote."""
    config = load_config(config_path)

    async def check() -> FactorResult:
        users = AsyncUserStore(open_user_store(config))
        services = FactorServices(
            users=users,
            state=MemoryStateStore(),
            mail=None,
            dictionary=None,
            master_key=master_key(config),
        )
        made = build(config.multifactor, services)
        try:
            record = await users.run(lambda s: s.get_user(user))
            request = FactorRequest(FactorUser(user, user, record=record), "vpn", None, time.time())
            return await made.check(request, otp, {})
        finally:
            await made.close()
            await users.close()

    return asyncio.run(check())


# --------------------------------------------------------------------------- yubikey, local


def test_yubikey_local_binds_the_key_and_its_next_otp_passes(
    run: Runner, store: UserRepository, config_path: Path, key: SimulatedKey
) -> None:
    enrolment_otp = key.otp()
    code, out, err = enrol_local(run, key, enrolment_otp)
    assert code == 0, err
    assert out == f"{key.public_id}\n"
    assert f"alice enrolled with YubiKey {key.public_id}" in err
    assert store.get_enrolment("alice", "yubikey") == {
        "public_id": key.public_id,
        "aes_key": key.aes_key_hex,
        "private_id": key.private_id_hex,
    }
    record = store.get_user("alice")
    assert record is not None and record.method == "yubikey" and "yubikey" in record.enrolled
    accepted = factor_check(config_path, key.otp())
    assert (accepted.verdict, accepted.reason) == (Verdict.ACCEPT, "code_ok")
    # The OTP typed at enrolment was used up there.
    assert factor_check(config_path, enrolment_otp).reason == "replayed"


def test_yubikey_otp_is_read_from_standard_input(
    run: Runner, store: UserRepository, key: SimulatedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(key.otp() + "\n"))
    argv = ["--aes-key", key.aes_key_hex, "--private-id", key.private_id_hex]
    code, out, err = run("users", "enroll", "alice", "yubikey", *argv)
    assert code == 0, err
    assert out == f"{key.public_id}\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = run("users", "enroll", "bob", "yubikey", *argv)
    assert (code, out) == (1, "") and "no OTP given" in err
    assert store.get_user("bob") is None


def test_rebinding_names_the_replaced_key(
    run: Runner, store: UserRepository, key: SimulatedKey
) -> None:
    assert enrol_local(run, key)[0] == 0
    other = SimulatedKey.random()
    code, out, err = enrol_local(run, other)
    assert code == 0 and out == f"{other.public_id}\n"
    assert f"the previous key ({key.public_id}) no longer works" in err
    enrolment = store.get_enrolment("alice", "yubikey")
    assert enrolment is not None and enrolment["public_id"] == other.public_id


@pytest.mark.parametrize("missing", ["--aes-key", "--private-id"])
def test_yubikey_local_without_key_material_is_a_usage_error(
    run: Runner, store: UserRepository, key: SimulatedKey, missing: str
) -> None:
    given = {"--aes-key": key.aes_key_hex, "--private-id": key.private_id_hex}
    del given[missing]
    option, value = next(iter(given.items()))
    code, out, err = run("users", "enroll", "alice", "yubikey", "--otp", key.otp(), option, value)
    assert (code, out) == (2, "")
    assert "validation is local: give the key's --aes-key and --private-id" in err
    assert store.get_user("alice") is None


@pytest.mark.parametrize(
    ("otp", "aes_key", "message"),
    [
        ("not-an-otp", None, "not a YubiKey OTP"),
        (None, "00" * 16, "does not decrypt with this AES key and private id"),
        (None, "zz" * 16, "must be hexadecimal"),
        (None, "00" * 8, "the AES key is 16 bytes"),
    ],
)
def test_yubikey_local_refusals_store_nothing(
    run: Runner,
    store: UserRepository,
    key: SimulatedKey,
    otp: str | None,
    aes_key: str | None,
    message: str,
) -> None:
    code, out, err = run(
        "users",
        "enroll",
        "alice",
        "yubikey",
        "--otp",
        otp or key.otp(),
        "--aes-key",
        aes_key or key.aes_key_hex,
        "--private-id",
        key.private_id_hex,
    )
    assert (code, out) == (1, "")
    assert "cannot enrol alice:" in err and message in err
    assert store.get_user("alice") is None


# --------------------------------------------------------------------------- yubikey, cloud


def test_yubikey_cloud_verifies_the_otp_and_binds_the_public_id(
    run: Runner,
    store: UserRepository,
    config_path: Path,
    key: SimulatedKey,
    cloud: FakeYubicloud,
) -> None:
    write_config(config_path, yubikey=cloud_settings(cloud.url))
    code, out, err = run("users", "enroll", "alice", "yubikey", "--otp", key.otp())
    assert code == 0, err
    assert out == f"{key.public_id}\n" and "verified by YubiCloud" in err
    assert len(cloud.requests) == 1 and cloud.requests[0]["id"] == CLIENT_ID
    assert store.get_enrolment("alice", "yubikey") == {"public_id": key.public_id}
    record = store.get_user("alice")
    assert record is not None and record.method == "yubikey"
    accepted = factor_check(config_path, key.otp())
    assert (accepted.verdict, accepted.reason) == (Verdict.ACCEPT, "code_ok")


def test_yubikey_cloud_refusal_is_invalid(
    run: Runner, store: UserRepository, config_path: Path, cloud: FakeYubicloud
) -> None:
    write_config(config_path, yubikey=cloud_settings(cloud.url))
    unknown = SimulatedKey.random()  # the fake answers BAD_OTP for keys it does not know
    code, out, err = run("users", "enroll", "alice", "yubikey", "--otp", unknown.otp())
    assert (code, out) == (1, "")
    assert "YubiCloud refused the OTP (bad_code)" in err
    assert store.get_user("alice") is None


def test_yubikey_cloud_unreachable_is_a_runtime_failure(
    run: Runner, store: UserRepository, config_path: Path, key: SimulatedKey
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/wsapi/2.0/verify"
    write_config(config_path, yubikey=cloud_settings(dead))
    code, out, err = run("users", "enroll", "alice", "yubikey", "--otp", key.otp())
    assert (code, out) == (3, "")  # the factor's log line went to stderr, not stdout
    assert "YubiCloud did not verify the OTP (unreachable)" in err
    assert "nothing was stored" in err
    assert store.get_user("alice") is None


def test_yubikey_cloud_refuses_key_material(
    run: Runner, store: UserRepository, config_path: Path, key: SimulatedKey, cloud: FakeYubicloud
) -> None:
    write_config(config_path, yubikey=cloud_settings(cloud.url))
    code, _, err = enrol_local(run, key)
    assert code == 2 and "are for validation: local" in err
    assert cloud.requests == [] and store.get_user("alice") is None


# --------------------------------------------------------------------------- email, sms


@pytest.mark.parametrize(
    ("method", "option", "given", "stored"),
    [
        ("email", "--address", "  Alice@Example.org ", "Alice@Example.org"),
        ("sms", "--number", "+1 (555) 123-4567", "+15551234567"),
        ("sms", "--number", "0044 20 7946 0958", "+442079460958"),
    ],
)
def test_destination_is_normalised_and_stored(
    run: Runner, store: UserRepository, method: Method, option: str, given: str, stored: str
) -> None:
    code, out, err = run("users", "enroll", "alice", method, option, given)
    assert code == 0, err
    assert out == f"{stored}\n"
    assert "no code was sent" in err
    field = option.removeprefix("--")
    assert store.get_enrolment("alice", method) == {field: stored}
    record = store.get_user("alice")
    assert record is not None and record.method == method and method in record.enrolled


def test_new_destination_replaces_the_old(run: Runner, store: UserRepository) -> None:
    run("users", "enroll", "alice", "email", "--address", "old@example.org")
    code, _, err = run("users", "enroll", "alice", "email", "--address", "new@example.org")
    assert code == 0 and "replaces the previous address old@example.org" in err
    assert store.get_enrolment("alice", "email") == {"address": "new@example.org"}


@pytest.mark.parametrize(
    ("method", "option", "given"),
    [
        ("email", "--address", "alice"),
        ("email", "--address", "alice@example.org, eve@example.net"),
        ("email", "--address", "a@b.c\r\nBcc: eve@example.net"),
        ("sms", "--number", "12345"),
        ("sms", "--number", "+44 (0) 20 7946 0958 ext 2"),
        ("sms", "--number", "+0123456789"),
    ],
)
def test_invalid_destination_is_refused(
    run: Runner, store: UserRepository, method: str, option: str, given: str
) -> None:
    code, out, err = run("users", "enroll", "alice", method, option, given)
    assert (code, out) == (1, "")
    assert f"{given!r} is not a" in err
    assert store.get_user("alice") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["email"], "`enroll USER email` needs --address"),
        (["sms"], "`enroll USER sms` needs --number"),
        (["email", "--number", "+15551234567"], "--number is for `enroll USER sms`, not email"),
        (["sms", "--otp", "x"], "--otp is for `enroll USER yubikey`, not sms"),
        (["totp", "--address", "a@example.org"], "--address is for `enroll USER email`"),
        (["yubikey", "--png", "qr.png"], "--png is for `enroll USER totp`, not yubikey"),
    ],
)
def test_options_of_another_method_are_usage_errors(
    run: Runner, store: UserRepository, argv: list[str], message: str
) -> None:
    code, out, err = run("users", "enroll", "alice", *argv)
    assert (code, out) == (2, "") and message in err
    assert store.get_user("alice") is None


# --------------------------------------------------------------------------- not enabled


@pytest.mark.parametrize(
    "argv",
    [
        ["yubikey", "--otp", "c" * 44, "--aes-key", "00" * 16, "--private-id", "00" * 6],
        ["email", "--address", "alice@example.org"],
        ["sms", "--number", "+15551234567"],
    ],
)
def test_a_method_not_enabled_is_refused(
    run: Runner, store: UserRepository, config_path: Path, argv: list[str]
) -> None:
    write_config(config_path, enabled=("totp",))
    code, out, err = run("users", "enroll", "alice", *argv)
    assert (code, out) == (1, "")
    assert f"{argv[0]} is not in multifactor.enabled" in err
    assert store.get_user("alice") is None
