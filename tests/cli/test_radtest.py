"""`mfaproxy radtest` against a real FreeRADIUS: accept, reject, challenge, dead server."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfaproxy.cli.radtest import _server_address
from tests.support.freeradius import Challenge, FreeRadiusServer, UserSpec
from tests.support.ports import free_udp_port

SECRET = "radtest-secret"
USERS = {
    "alice": UserSpec("alice-pw", reply={"Class": b"vpn-users", "Filter-Id": "staff"}),
    "carol": UserSpec("carol-pw", reply={"Class": b"otp-ok"}, challenge=Challenge("123456")),
    "erin": UserSpec("erin-pw", reply={"Class": b"\x00\x01\xfe-binary"}),
}


@pytest.fixture(scope="module")
def radius() -> Iterator[FreeRadiusServer]:
    with FreeRadiusServer(USERS, secret=SECRET) as server:
        yield server


def radtest(
    *argv: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfaproxy", "radtest", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def target(radius: FreeRadiusServer) -> list[str]:
    return ["--server", f"{radius.host}:{radius.port}", "--secret", SECRET]


def test_accept_prints_the_reply_attributes(radius: FreeRadiusServer) -> None:
    done = radtest(*target(radius), "--user", "alice", "--password", "alice-pw")
    assert done.returncode == 0, done.stderr
    assert f"Received Access-Accept from {radius.host}:{radius.port}" in done.stdout
    assert 'Class = "vpn-users"' in done.stdout  # octets, shown as text when they are text
    assert 'Filter-Id = "staff"' in done.stdout


def test_binary_octets_are_shown_in_hex(radius: FreeRadiusServer) -> None:
    done = radtest(*target(radius), "--user", "erin", "--password", "erin-pw")
    assert done.returncode == 0, done.stderr
    assert "Class = 0x0001fe2d62696e617279" in done.stdout  # b"\x00\x01\xfe-binary"


def test_wrong_password_exits_1(radius: FreeRadiusServer) -> None:
    done = radtest(*target(radius), "--user", "alice", "--password", "wrong")
    assert done.returncode == 1
    assert "Received Access-Reject" in done.stdout


def test_challenge_is_answered_from_answer_options(radius: FreeRadiusServer) -> None:
    done = radtest(
        *target(radius), "--user", "carol", "--password", "carol-pw", "--answer", "123456"
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Received Access-Challenge" in out
    assert 'Reply-Message = "Enter your code"' in out
    assert 'State = "fr-test-state"' in out
    assert out.index("Access-Challenge") < out.index("answer to the challenge")
    assert out.index("answer to the challenge") < out.index("Received Access-Accept")
    assert 'Class = "otp-ok"' in out


def test_password_and_answer_read_from_stdin(radius: FreeRadiusServer, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    server = ["--server", f"{radius.host}:{radius.port}", "--secret-file", str(secret_file)]
    done = radtest(*server, "--user", "carol", stdin="carol-pw\n123456\n")
    assert done.returncode == 0, done.stderr
    assert "Received Access-Accept" in done.stdout


def test_wrong_answer_is_rejected(radius: FreeRadiusServer) -> None:
    server = ["--server", f"{radius.host}:{radius.port}", "--secret-env", "RADTEST_SECRET"]
    done = radtest(
        *server,
        "--user",
        "carol",
        "--password",
        "carol-pw",
        "--answer",
        "000000",
        env={"RADTEST_SECRET": SECRET},
    )
    assert done.returncode == 1
    assert "Received Access-Reject" in done.stdout


def test_challenge_without_an_answer_is_an_input_error(radius: FreeRadiusServer) -> None:
    done = radtest(*target(radius), "--user", "carol", "--password", "carol-pw")
    assert done.returncode == 1
    assert "Received Access-Challenge" in done.stdout
    assert "no input left" in done.stderr


def test_dead_server_exits_3() -> None:
    dead = f"127.0.0.1:{free_udp_port()}"
    done = radtest(
        "--server",
        dead,
        "--secret",
        "x",
        "--user",
        "alice",
        "--password",
        "pw",
        "--timeout",
        "0.2",
        "--retries",
        "0",
    )
    assert done.returncode == 3
    assert "no valid answer" in done.stderr


def test_wrong_secret_exits_3_and_says_why(radius: FreeRadiusServer) -> None:
    server = ["--server", f"{radius.host}:{radius.port}", "--secret", "not-the-secret"]
    done = radtest(
        *server, "--user", "alice", "--password", "alice-pw", "--timeout", "0.5", "--retries", "0"
    )
    # FreeRADIUS drops a request whose Message-Authenticator does not verify: silence.
    assert done.returncode == 3
    assert "check the address, port and shared secret" in done.stderr


def test_missing_secret_variable_is_an_input_error() -> None:
    done = radtest(
        "--server",
        "127.0.0.1",
        "--secret-env",
        "RADTEST_UNSET_VARIABLE",
        "--user",
        "a",
        "--password",
        "pw",
    )
    assert done.returncode == 1 and "shared secret is empty" in done.stderr


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1", ("127.0.0.1", 1812)),
        ("127.0.0.1:1645", ("127.0.0.1", 1645)),
        ("[::1]:1645", ("::1", 1645)),
        ("::1", ("::1", 1812)),
    ],
)
def test_server_address_forms(text: str, address: tuple[str, int]) -> None:
    assert _server_address(text) == address


@pytest.mark.parametrize("text", ["127.0.0.1:0", "127.0.0.1:x", "[::1]x", "no-such-host.invalid"])
def test_bad_server_addresses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _server_address(text)
