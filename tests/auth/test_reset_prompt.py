"""A reset asked at the prompt: the user is told what really happened (issue 12)."""

from __future__ import annotations

from pathlib import Path

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
