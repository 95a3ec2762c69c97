"""A reset asked at the prompt: the user is told what really happened (issue 12)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mfaproxy.cli.main import build_parser
from mfaproxy.core.answer import Outcome
from mfaproxy.core.second_factor import (
    MSG_RESET_EMAILED,
    MSG_RESET_PENDING,
    MSG_RESET_RECORDED,
)
from tests.auth.harness import Harness, password
from tests.support.ports import free_port
from tests.support.smtp import SmtpServer


async def reset(h: Harness, user: str) -> str:
    h.enrol_totp(user)
    reply = await h.login(user, password(user), "reset")
    assert (reply.outcome, reply.reason) == (Outcome.REJECT, "reset_requested")
    assert reply.reply_message is not None
    return reply.reply_message


async def test_without_a_mail_server_the_request_is_recorded_and_the_user_told_so(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path) as h:
        message = await reset(h, "alice")
        assert message == MSG_RESET_RECORDED and "administrators" not in message
        assert h.last_audit["mfa_result"] == "reset_recorded"
        assert [r.user for r in h.store.list_resets()] == ["alice"]
        assert await reset(h, "alice") == MSG_RESET_PENDING  # once while pending


async def test_with_a_mail_server_the_user_is_told_it_was_sent(tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        async with Harness(tmp_path, {"smtp": {"host": "127.0.0.1", "port": smtp.port}}) as h:
            assert await reset(h, "alice") == MSG_RESET_EMAILED
            assert h.last_audit["mfa_result"] == "reset_emailed"
        mail = smtp.wait_for(1)[0]
        assert mail.recipients == ["security@example.com"] and "alice" in mail.subject


async def test_a_mail_server_that_does_not_answer_is_not_claimed_to_have_sent(
    tmp_path: Path,
) -> None:
    closed = {"smtp": {"host": "127.0.0.1", "port": free_port(), "timeout": 2}}
    async with Harness(tmp_path, closed) as h:
        assert await reset(h, "alice") == MSG_RESET_RECORDED
        assert [r.user for r in h.store.list_resets()] == ["alice"]


async def test_no_recipients_configured_is_not_claimed_to_have_sent(tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        overrides = {
            "smtp": {"host": "127.0.0.1", "port": smtp.port},
            "multifactor": {"administrators": {"group": "mfa-admins", "emails": []}},
        }
        async with Harness(tmp_path, overrides) as h:
            assert await reset(h, "alice") == MSG_RESET_RECORDED
        assert smtp.messages == []


# Names a directory may hold (a users-file key, an LDAP uid, an upstream's User-Name)
# that a shell reads as more than one word, or as a command.
# (Harmless commands: the test runs the pasted line in a real shell.)
SHELL_NAMES = ["o'brien", "ann smith", "x;echo pwned", "$(echo pwned)", "a`echo pwned`", "b|c"]
SHELL_NAMES += ["-rf", 'q"uote', "c&&echo pwned"]


@pytest.mark.parametrize("user", SHELL_NAMES)
async def test_the_commands_in_the_reset_mail_name_exactly_the_user(
    tmp_path: Path, user: str
) -> None:
    """Attack: the administrators' mail tells them what to run, and they paste it into
    a root shell. A user name with shell syntax in it (`x;echo pwned`, `$(id)`) ran a
    command of the user's choosing there; an apostrophe (o'brien) broke the line.
    Fixed: each name is quoted for a POSIX shell, after `--` when it looks
    like an option (`-rf`)."""
    with SmtpServer() as smtp:
        overrides = {"smtp": {"host": "127.0.0.1", "port": smtp.port}}
        async with Harness(tmp_path, overrides, users={user: {}}) as h:
            assert await reset(h, user) == MSG_RESET_EMAILED
        body = smtp.wait_for(1)[0].body
    commands = [line.strip() for line in body.splitlines() if "mfaproxy users" in line]
    assert len(commands) == 2
    for command, action in zip(commands, ["approve", "clear"], strict=True):
        words = pasted(command)  # what a real POSIX shell makes of the pasted line
        assert words[0] == "mfaproxy"
        parsed = build_parser().parse_args(words[1:])  # and what the CLI reads then
        assert (parsed.resets_command, parsed.user) == (action, user)


def pasted(command: str) -> list[str]:
    """The words /bin/sh runs for `command`, with `mfaproxy` a function that prints
    them (one per NUL-terminated record): a `$(...)` or `;` left unquoted shows."""
    script = f'mfaproxy() {{ printf "%s\\0" mfaproxy "$@"; }}\n{command}\n'
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True, timeout=10)
    return done.stdout.decode().split("\0")[:-1]
