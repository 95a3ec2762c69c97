"""Enrolment that cannot be taken over (issue 10, item 8): inside the RADIUS flow a new
authenticator is bound only in an operator's window or after a code sent to the
address on file, optionally only from configured networks, never for administrators
unless configured. A password alone binds nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyotp

from mfaproxy.core.answer import Answer, Outcome
from tests.auth.harness import Harness, password
from tests.support.smtp import SmtpServer

ACCEPT, REJECT, CHALLENGE = Outcome.ACCEPT, Outcome.REJECT, Outcome.CHALLENGE
HOUR = 3600.0
UNCONFIGURED: dict[str, Any] = {"multifactor": {"enrol_unconfigured_users": True}}


def totp_key(prompt: str | None) -> str:
    assert prompt is not None and "authenticator app" in prompt
    return prompt.split(": ", 1)[1].split(" then")[0].replace(" ", "")


async def enrol(h: Harness, user: str, first: Answer, **options: Any) -> Answer:
    """Finish an enrolment whose key `first` shows; the answer to the first code."""
    assert first.outcome is CHALLENGE
    key = totp_key(first.reply_message)
    return await h.send(user, pyotp.TOTP(key).at(h.clock.now), first.state, **options)


async def test_a_password_alone_never_binds_an_authenticator(tmp_path: Path) -> None:
    async with Harness(tmp_path, UNCONFIGURED) as h:
        reply = await h.send("carol", password("carol"))
        assert (reply.outcome, reply.reason) == (REJECT, "enrolment_not_allowed")
        assert h.last_audit["enrolment_gate"] == "enrolment_closed"
        assert reply.state is None and "not set up" in (reply.reply_message or "")
        record = h.store.get_user("carol")
        assert record is None or not record.enrolled


async def test_configure_later_without_a_window_binds_nothing(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.store.set_method("carol", "totp", h.clock.now, configure_later=True)
        reply = await h.send("carol", password("carol"))
        assert (reply.outcome, reply.reason) == (REJECT, "enrolment_not_allowed")


async def test_an_operator_window_lets_the_user_enrol_once(tmp_path: Path) -> None:
    async with Harness(tmp_path, UNCONFIGURED) as h:
        h.store.open_enrolment("carol", h.clock.now + HOUR, h.clock.now)
        first = await h.send("carol", password("carol"))
        assert h.last_audit["enrolment_gate"] == "enrolment_window"
        done = await enrol(h, "carol", first)
        assert (done.outcome, done.reason) == (ACCEPT, "mfa_enrolled")
        record = h.store.get_user("carol")
        assert record is not None and "totp" in record.enrolled
        assert record.enrol_until is None  # used up
        again = await h.send("carol", password("carol"))
        assert again.outcome is CHALLENGE and "authenticator app" in (again.reply_message or "")
        assert "Add this key" not in (again.reply_message or "")  # a code, not a new key


async def test_a_window_under_optional_per_user_enrols_a_user_without_a_method(
    tmp_path: Path,
) -> None:
    optional = {"access_policies": {"mfa": {"default_action": "mfa_optional_per_user"}}}
    async with Harness(tmp_path, optional) as h:
        assert (await h.send("carol", password("carol"))).outcome is ACCEPT  # no method
        now = h.clock.now
        await h.write(lambda s: s.open_enrolment("carol", now + HOUR, now))
        done = await enrol(h, "carol", await h.send("carol", password("carol")))
        assert done.outcome is ACCEPT


async def test_an_expired_or_closed_window_binds_nothing(tmp_path: Path) -> None:
    async with Harness(tmp_path, UNCONFIGURED) as h:
        h.store.open_enrolment("carol", h.clock.now + HOUR, h.clock.now)
        h.clock.advance(HOUR)
        expired = await h.send("carol", password("carol"))
        assert (expired.outcome, expired.reason) == (REJECT, "enrolment_not_allowed")
        now = h.clock.now
        await h.write(lambda s: s.open_enrolment("carol", now + HOUR, now))
        await h.write(lambda s: s.close_enrolment("carol", now))
        closed = await h.send("carol", password("carol"))
        assert (closed.outcome, closed.reason) == (REJECT, "enrolment_not_allowed")


async def test_closing_the_window_voids_an_enrolment_in_progress(tmp_path: Path) -> None:
    # the operator closes the window after the key was shown (a login they did not
    # expect): the first code no longer binds the key
    async with Harness(tmp_path, UNCONFIGURED) as h:
        h.store.open_enrolment("carol", h.clock.now + HOUR, h.clock.now)
        first = await h.send("carol", password("carol"))
        now = h.clock.now
        await h.write(lambda s: s.close_enrolment("carol", now))
        late = await enrol(h, "carol", first)
        assert (late.outcome, late.reason) == (REJECT, "enrolment_window_closed")
        record = h.store.get_user("carol")
        assert record is not None and "totp" not in record.enrolled


async def test_administrators_never_enrol_inline_unless_configured(tmp_path: Path) -> None:
    async with Harness(tmp_path, UNCONFIGURED) as h:  # bob is in mfa-admins
        h.store.open_enrolment("bob", h.clock.now + HOUR, h.clock.now)
        refused = await h.send("bob", password("bob"))
        assert (refused.outcome, refused.reason) == (REJECT, "enrolment_not_allowed")
        assert h.last_audit["enrolment_gate"] == "enrolment_administrator"
    admins: dict[str, Any] = {
        "multifactor": {
            "enrol_unconfigured_users": True,
            "inline_enrolment": {"administrators": True},
        }
    }
    (tmp_path / "admins").mkdir()
    async with Harness(tmp_path / "admins", admins) as h:
        h.store.open_enrolment("bob", h.clock.now + HOUR, h.clock.now)
        assert (await enrol(h, "bob", await h.send("bob", password("bob")))).outcome is ACCEPT


async def test_inline_enrolment_only_from_configured_networks(tmp_path: Path) -> None:
    networks = {
        "multifactor": {
            "enrol_unconfigured_users": True,
            "inline_enrolment": {"networks": ["192.0.2.0/24"]},
        }
    }
    async with Harness(tmp_path, networks) as h:
        h.store.open_enrolment("carol", h.clock.now + HOUR, h.clock.now)
        outside: list[dict[str, Any]] = [
            {},
            {"Calling_Station_Id": "198.51.100.7"},
            {"Calling_Station_Id": "aa-bb-cc-dd-ee-ff"},
        ]
        for where in outside:
            reply = await h.send("carol", password("carol"), **where)
            assert (reply.outcome, reply.reason) == (REJECT, "enrolment_not_allowed"), where
            assert h.last_audit["enrolment_gate"] == "enrolment_network"
        inside: dict[str, Any] = {"Calling_Station_Id": "192.0.2.7"}
        first = await h.send("carol", password("carol"), **inside)
        assert (await enrol(h, "carol", first, **inside)).outcome is ACCEPT


def sent_code(smtp: SmtpServer, count: int) -> str:
    body = smtp.wait_for(count)[count - 1].body
    found = re.search(r"\b(\d{6})\b", body)
    assert found is not None
    return found.group(1)


async def test_a_code_sent_to_the_address_on_file_comes_before_the_key(tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        overrides = {
            "smtp": {"host": "127.0.0.1", "port": smtp.port},
            "multifactor": {
                "enrol_unconfigured_users": True,
                "inline_enrolment": {"allow": ["email_code"]},
            },
        }
        async with Harness(tmp_path, overrides) as h:  # alice has an address on file
            first = await h.send("alice", password("alice"))
            assert first.outcome is CHALLENGE and h.last_audit["mfa_plan"] == "enrol_after_email"
            assert "confirm your address" in (first.reply_message or "")
            assert "Add this key" not in (first.reply_message or "")  # no key yet
            mail = smtp.wait_for(1)[0]
            assert mail.recipients == ["alice@example.com"]
            wrong = await h.send("alice", "000000", first.state)
            assert (wrong.outcome, wrong.reason) == (CHALLENGE, "retry")
            proven = await h.send("alice", sent_code(smtp, 1), wrong.state)
            # the mailbox is proven: now, and only now, the key; the login is not accepted
            assert proven.outcome is CHALLENGE
            done = await enrol(h, "alice", proven)
            assert (done.outcome, done.reason) == (ACCEPT, "mfa_enrolled")
            # carol has no address on file: nothing to prove it with
            nobody = await h.send("carol", password("carol"))
            assert (nobody.outcome, nobody.reason) == (REJECT, "enrolment_not_allowed")


async def test_an_email_code_is_no_second_factor_for_the_login(tmp_path: Path) -> None:
    # typing the emailed code twice, or answering the key prompt with it, accepts nothing
    with SmtpServer() as smtp:
        overrides = {
            "smtp": {"host": "127.0.0.1", "port": smtp.port},
            "multifactor": {
                "enrol_unconfigured_users": True,
                "inline_enrolment": {"allow": ["email_code"]},
            },
        }
        async with Harness(tmp_path, overrides) as h:
            first = await h.send("alice", password("alice"))
            code = sent_code(smtp, 1)
            proven = await h.send("alice", code, first.state)
            assert proven.outcome is CHALLENGE
            reused = await h.send("alice", code, proven.state)
            assert reused.outcome is not ACCEPT
            record = h.store.get_user("alice")
            assert record is None or "totp" not in record.enrolled
