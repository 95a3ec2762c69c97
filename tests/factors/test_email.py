"""The email method against a real SMTP server (aiosmtpd) and a real SQLite user store."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from mfaproxy.adapters.smtp import SmtpSender
from mfaproxy.config.multifactor import MultifactorConfig, SmtpConfig
from mfaproxy.errors import ConfigError
from mfaproxy.factors import email as email_method
from mfaproxy.factors.base import (
    FactorRequest,
    FactorResult,
    FactorServices,
    FactorUser,
    MailSender,
    Verdict,
)
from mfaproxy.factors.delivery import check_template, mask_email
from mfaproxy.factors.email import EmailFactor, normalise_address
from mfaproxy.observability.logging import configure_logging
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.crypto import load_or_create_key
from mfaproxy.store.state import MemoryStateStore
from mfaproxy.store.users import UserStore
from tests.support.ports import free_port
from tests.support.smtp import SmtpServer

T0 = 1_700_000_000.0
ALICE = FactorUser(name="alice", login_name="Alice", email="alice@example.com")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@dataclass
class Env:
    users: AsyncUserStore
    key: bytes

    def services(self, mail: MailSender | None) -> FactorServices:
        state = MemoryStateStore()
        return FactorServices(
            users=self.users, state=state, mail=mail, dictionary=None, master_key=self.key
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    key = load_or_create_key(tmp_path / "master.key")
    users = AsyncUserStore(UserStore(tmp_path / "users.sqlite3", key))
    yield Env(users, key)
    await users.close()


def sender(port: int) -> SmtpSender:
    config = SmtpConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "from": "mfa@example.com", "timeout": 5}
    )
    return SmtpSender(config)


def factor(svc: FactorServices, **settings: Any) -> EmailFactor:
    config = MultifactorConfig.model_validate(
        {"enabled": ["email"], "default": "email", "email": settings}
    )
    built = email_method.build(config, svc)
    assert isinstance(built, EmailFactor)
    return built


@pytest.fixture
def mailer(smtp: SmtpServer, env: Env) -> EmailFactor:
    return factor(env.services(sender(smtp.port)))


def request(user: FactorUser = ALICE, now: float = T0) -> FactorRequest:
    return FactorRequest(user=user, client="vpn", client_ip="192.0.2.10", now=now)


def code_in(body: str, length: int = 6) -> str:
    match = re.search(rf"\b(\d{{{length}}})\b", body)
    assert match, body
    return match.group(1)


async def send(
    f: EmailFactor, smtp: SmtpServer, user: FactorUser = ALICE, now: float = T0
) -> tuple[str, FactorResult]:
    before = len(smtp.messages)
    result = await f.begin(request(user, now))
    assert result.verdict is Verdict.CHALLENGE, result
    mails = smtp.wait_for(before + 1)
    return code_in(mails[-1].body, f.settings.code_length), result


# ----------------------------------------------------------------- delivery and checks


async def test_code_is_mailed_and_accepted(mailer: EmailFactor, smtp: SmtpServer) -> None:
    result = await mailer.begin(request())
    assert result.verdict is Verdict.CHALLENGE
    assert result.reason == "code_sent"
    assert result.prompt == "Enter the code sent to a***@example.com"
    [mail] = smtp.wait_for(1)
    assert mail.recipients == ["alice@example.com"]
    assert mail.subject == "Your sign-in code"
    assert "expires in 5 minutes" in mail.body
    code = code_in(mail.body)
    ok = await mailer.check(request(now=T0 + 60), code, result.pending)
    assert (ok.verdict, ok.reason) == (Verdict.ACCEPT, "code_ok")


async def test_pending_never_holds_the_code(mailer: EmailFactor, smtp: SmtpServer) -> None:
    code, result = await send(mailer, smtp)
    assert set(result.pending) == {"salt", "digest", "expires", "to"}
    assert result.pending["expires"] == T0 + 300
    assert code not in json.dumps(result.pending)  # and it is JSON, for a shared store


async def test_wrong_and_malformed_codes_count_as_failures(
    mailer: EmailFactor, smtp: SmtpServer
) -> None:
    code, result = await send(mailer, smtp)
    wrong = str((int(code) + 1) % 1_000_000).zfill(6)
    bad = await mailer.check(request(), wrong, result.pending)
    assert (bad.verdict, bad.reason, bad.counts_as_failure) == (Verdict.REJECT, "bad_code", True)
    short = await mailer.check(request(), code[:5], result.pending)
    assert (short.reason, short.counts_as_failure) == ("malformed_code", True)
    # A wrong try does not burn the code: the engine decides how many tries a login gets.
    spaced = f"{code[:3]} {code[3:]}"
    assert (await mailer.check(request(), spaced, result.pending)).verdict is Verdict.ACCEPT


async def test_a_code_is_accepted_once(mailer: EmailFactor, smtp: SmtpServer) -> None:
    code, result = await send(mailer, smtp)
    assert (await mailer.check(request(), code, result.pending)).verdict is Verdict.ACCEPT
    again = await mailer.check(request(), code, result.pending)
    assert (again.verdict, again.reason) == (Verdict.REJECT, "replayed")


async def test_code_for_another_user_is_refused(mailer: EmailFactor, smtp: SmtpServer) -> None:
    code, result = await send(mailer, smtp)
    mallory = FactorUser(name="mallory", login_name="mallory", email="m@example.com")
    other = await mailer.check(request(mallory), code, result.pending)
    assert other.reason == "bad_code"


async def test_expired_code_is_rejected_without_counting(
    mailer: EmailFactor, smtp: SmtpServer
) -> None:
    code, result = await send(mailer, smtp)
    late = await mailer.check(request(now=T0 + 300), code, result.pending)
    assert (late.verdict, late.reason, late.counts_as_failure) == (
        Verdict.REJECT,
        "code_expired",
        False,
    )


async def test_no_pending_means_nothing_to_match(mailer: EmailFactor) -> None:
    result = await mailer.check(request(), "123456", {})
    assert (result.reason, result.counts_as_failure) == ("no_code_sent", False)


# ----------------------------------------------------------------- anti-flood


async def test_second_send_within_the_interval_is_refused(
    mailer: EmailFactor, smtp: SmtpServer
) -> None:
    await send(mailer, smtp)
    refused = await mailer.begin(request(now=T0 + 10))
    assert (refused.verdict, refused.reason, refused.counts_as_failure) == (
        Verdict.REJECT,
        "flood_limited",
        False,
    )
    assert refused.prompt == "A code was sent recently; use it or try again in 30 seconds"
    # The refused attempt sent nothing: the next allowed one is the second mail.
    await send(mailer, smtp, now=T0 + 30)
    assert len(smtp.wait_for(2)) == 2


async def test_hourly_cap_per_address(env: Env, smtp: SmtpServer) -> None:
    f = factor(env.services(sender(smtp.port)), max_sends_per_hour=3, resend_interval_seconds=0)
    for i in range(3):
        await send(f, smtp, now=T0 + i)
    refused = await f.begin(request(now=T0 + 100))
    assert refused.reason == "flood_limited"
    assert refused.prompt == "Too many codes were sent; try again later"
    # Another address has its own window; the capped one reopens after an hour.
    bob = FactorUser(name="bob", login_name="bob", email="bob@example.com")
    assert (await f.begin(request(bob, T0 + 100))).verdict is Verdict.CHALLENGE
    assert (await f.begin(request(now=T0 + 3600))).verdict is Verdict.CHALLENGE
    assert len(smtp.wait_for(5)) == 5


# ----------------------------------------------------------------- unavailability


async def test_smtp_down_is_unavailable(env: Env) -> None:
    f = factor(env.services(sender(free_port())))  # nothing listens there
    result = await f.begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "smtp_unavailable")
    assert result.counts_as_failure is False


async def test_no_smtp_configured(env: Env) -> None:
    result = await factor(env.services(None)).begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "smtp_not_configured")


# ----------------------------------------------------------------- destinations


async def test_enrolled_address_is_used_when_the_directory_has_none(
    mailer: EmailFactor, env: Env, smtp: SmtpServer
) -> None:
    await env.users.run(
        lambda s: s.set_enrolment("bob", "email", {"address": "bob@example.org"}, T0)
    )
    record = await env.users.run(lambda s: s.get_user("bob"))
    bob = FactorUser(name="bob", login_name="bob", record=record)
    assert mailer.is_enrolled(bob)
    assert not mailer.can_enrol_inline(bob)  # only a directory address can be proven inline
    code, result = await send(mailer, smtp, bob)
    assert smtp.messages[-1].recipients == ["bob@example.org"]
    assert result.prompt == "Enter the code sent to b***@example.org"
    assert (await mailer.check(request(bob), code, result.pending)).verdict is Verdict.ACCEPT


async def test_works_as_alternate_for_a_user_of_another_method(
    mailer: EmailFactor, env: Env, smtp: SmtpServer
) -> None:
    await env.users.run(lambda s: s.set_method("alice", "totp", T0))
    record = await env.users.run(lambda s: s.get_user("alice"))
    alice = FactorUser(name="alice", login_name="alice", email="alice@example.com", record=record)
    code, result = await send(mailer, smtp, alice)
    assert (await mailer.check(request(alice), code, result.pending)).verdict is Verdict.ACCEPT


async def test_no_address_anywhere(mailer: EmailFactor, smtp: SmtpServer) -> None:
    nobody = FactorUser(name="carol", login_name="carol", email="not an address")
    assert not mailer.is_enrolled(nobody)
    assert not mailer.can_enrol_inline(nobody)
    result = await mailer.begin(request(nobody))
    assert (result.verdict, result.reason, result.counts_as_failure) == (
        Verdict.REJECT,
        "no_destination",
        False,
    )
    assert result.prompt is not None and result.prompt.isascii()
    assert smtp.messages == []


# ----------------------------------------------------------------- inline enrolment


async def test_inline_enrolment(mailer: EmailFactor, env: Env, smtp: SmtpServer) -> None:
    assert mailer.can_enrol_inline(ALICE)
    started = await mailer.begin_enrolment(request())
    assert (started.verdict, started.reason) == (Verdict.CHALLENGE, "enrolment")
    assert started.prompt == "Enter the code sent to a***@example.com"
    code = code_in(smtp.wait_for(1)[0].body)
    assert code not in json.dumps(started.pending)
    wrong_code = "000000" if code != "000000" else "111111"
    wrong = await mailer.finish_enrolment(request(), wrong_code, started.pending)
    assert wrong.verdict is Verdict.REJECT
    assert await env.users.run(lambda s: s.get_enrolment("alice", "email")) is None
    done = await mailer.finish_enrolment(request(now=T0 + 20), code, started.pending)
    assert (done.verdict, done.reason) == (Verdict.ACCEPT, "enrolled")
    assert await env.users.run(lambda s: s.get_enrolment("alice", "email")) == {
        "address": "alice@example.com"
    }
    record = await env.users.run(lambda s: s.get_user("alice"))
    assert record is not None and record.method == "email" and "email" in record.enrolled


# ----------------------------------------------------------------- secrecy in logs


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything structlog and stdlib logging write at debug, rendered as in production."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    names = ("ldap3", "asyncio", "aiosmtplib", "mail.log", "mail.debug")
    noisy = {name: logging.getLogger(name).level for name in names}
    buffer = io.StringIO()
    configure_logging(fmt="json", level="debug", stream=buffer)
    # The test SMTP server logs whole DATA lines: it is a peer, not mfaproxy, so mute it.
    for peer in ("mail.log", "mail.debug"):
        logging.getLogger(peer).setLevel(logging.WARNING)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in noisy.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


async def test_code_never_logged(env: Env, smtp: SmtpServer, log_output: io.StringIO) -> None:
    # Ten digits, so the code cannot match a timestamp or a port by chance.
    f = factor(env.services(sender(smtp.port)), code_length=10)
    started = await f.begin_enrolment(request())
    code = code_in(smtp.wait_for(1)[0].body, 10)
    await f.finish_enrolment(request(), code, started.pending)
    await f.check(request(), code, started.pending)  # a replay, logged or not
    await f.begin(request(now=T0 + 1))  # flood-limited
    output = log_output.getvalue()
    assert "code_sent" in output and "delivery_enrolled" in output
    assert code not in output
    assert "alice@example.com" not in output  # addresses are masked in our lines


# ----------------------------------------------------------------- helpers and config


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("alice@example.com", "a***@example.com"),
        ("a@example.com", "a***@example.com"),
        ("jo@bücher.example", "j***@xn--bcher-kva.example"),
        ("nonsense", "***"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked


@pytest.mark.parametrize(
    "raw", ["", "alice", "alice@localhost", "a b@example.com", "a@example.com\r\nBcc: x@y.z", None]
)
def test_unusable_addresses(raw: str | None) -> None:
    assert normalise_address(raw) is None


@pytest.mark.parametrize(
    "template", ["no code here", "{code} {user}", "{code.__class__}", "{0}", "{code"]
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ConfigError):
        check_template(template, "multifactor.email.body")


async def test_the_schema_refuses_a_bad_body_template(env: Env) -> None:
    # A schema rule, so check-config reports it with the other problems (preflight).
    with pytest.raises(ValidationError, match=r"email\.body[\s\S]*unknown placeholder"):
        factor(env.services(None), body="Your code: {secret}")
