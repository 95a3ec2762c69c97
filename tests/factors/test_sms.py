"""The SMS method: the real twilio SDK against a local Messages API fake, and the
email-to-SMS gateway against a real SMTP server (aiosmtpd)."""

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
from structlog.testing import capture_logs

from mfaproxy.adapters.smtp import SmtpSender
from mfaproxy.config.multifactor import MultifactorConfig, SmtpConfig
from mfaproxy.factors import sms as sms_method
from mfaproxy.factors.base import FactorRequest, FactorServices, FactorUser, MailSender, Verdict
from mfaproxy.factors.delivery import mask_number
from mfaproxy.factors.sms import SmsFactor, TwilioTransport, normalise_number
from mfaproxy.observability.logging import configure_logging
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.crypto import load_or_create_key
from mfaproxy.store.state import MemoryStateStore
from mfaproxy.store.users import UserStore
from tests.support.ports import free_port
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake

T0 = 1_700_000_000.0
FROM = "+15005550006"
GATEWAY: dict[str, Any] = {
    "provider": "email_gateway",
    "email_gateway": {"domain": "sms.example.net"},
}
ALICE = FactorUser(name="alice", login_name="alice", mobile="+1 (555) 123-4567")


@dataclass
class Env:
    users: AsyncUserStore
    key: bytes
    built: list[SmsFactor]

    def services(self, mail: MailSender | None = None) -> FactorServices:
        state = MemoryStateStore()
        return FactorServices(
            users=self.users, state=state, mail=mail, dictionary=None, master_key=self.key
        )

    def factor(
        self, svc: FactorServices, timeout: float | None = None, **settings: Any
    ) -> SmsFactor:
        config = MultifactorConfig.model_validate(
            {"enabled": ["sms"], "default": "sms", "sms": settings}
        )
        built = sms_method.build(config, svc)
        assert isinstance(built, SmsFactor)
        if timeout is not None:  # the configuration has no Twilio timeout to set
            assert isinstance(built.transport, TwilioTransport)
            built.transport.timeout = timeout
        self.built.append(built)
        return built


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    key = load_or_create_key(tmp_path / "master.key")
    users = AsyncUserStore(UserStore(tmp_path / "users.sqlite3", key))
    environment = Env(users, key, [])
    yield environment
    for factor in environment.built:
        await factor.close()  # the SDK's aiohttp session belongs to this test's loop
    await users.close()


@pytest.fixture
def twilio() -> Iterator[TwilioFake]:
    with TwilioFake() as fake:
        yield fake


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def twilio_settings(fake: TwilioFake, **overrides: Any) -> dict[str, Any]:
    twilio: dict[str, Any] = {
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "from_number": FROM,
        "base_url": fake.base_url,
    }
    twilio.update(overrides)
    return {"provider": "twilio", "twilio": twilio}


@pytest.fixture
def texter(env: Env, twilio: TwilioFake) -> SmsFactor:
    return env.factor(env.services(), **twilio_settings(twilio))


def request(user: FactorUser = ALICE, now: float = T0) -> FactorRequest:
    return FactorRequest(user=user, client="vpn", client_ip=None, now=now)


def code_in(text: str, length: int = 6) -> str:
    match = re.search(rf"\b(\d{{{length}}})\b", text)
    assert match, text
    return match.group(1)


# ----------------------------------------------------------------- Twilio


async def test_code_is_texted_through_twilio_and_accepted(
    texter: SmsFactor, twilio: TwilioFake
) -> None:
    result = await texter.begin(request())
    assert (result.verdict, result.reason) == (Verdict.CHALLENGE, "code_sent")
    assert result.prompt == "Enter the code sent to +1******4567"
    [sms] = twilio.wait_for(1)
    assert (sms.to, sms.from_, sms.messaging_service_sid) == ("+15551234567", FROM, None)
    assert sms.account_sid == twilio.account_sid
    assert sms.body.startswith("Your sign-in code is ")
    code = code_in(sms.body)
    assert code not in json.dumps(result.pending)
    ok = await texter.check(request(now=T0 + 30), code, result.pending)
    assert (ok.verdict, ok.reason) == (Verdict.ACCEPT, "code_ok")


async def test_messaging_service_sends_without_from(env: Env, twilio: TwilioFake) -> None:
    settings = twilio_settings(twilio, from_number=None, messaging_service_sid="MG" + "1" * 32)
    f = env.factor(env.services(), **settings)
    assert (await f.begin(request())).verdict is Verdict.CHALLENGE
    [sms] = twilio.wait_for(1)
    assert (sms.from_, sms.messaging_service_sid) == (None, "MG" + "1" * 32)


async def test_wrong_and_expired_codes(texter: SmsFactor, twilio: TwilioFake) -> None:
    result = await texter.begin(request())
    code = code_in(twilio.wait_for(1)[0].body)
    wrong = str((int(code) + 1) % 1_000_000).zfill(6)
    bad = await texter.check(request(), wrong, result.pending)
    assert (bad.verdict, bad.reason, bad.counts_as_failure) == (Verdict.REJECT, "bad_code", True)
    late = await texter.check(request(now=T0 + 300), code, result.pending)
    assert (late.verdict, late.reason, late.counts_as_failure) == (
        Verdict.REJECT,
        "code_expired",
        False,
    )


async def test_flood_limits_per_number(env: Env, twilio: TwilioFake) -> None:
    f = env.factor(env.services(), max_sends_per_hour=2, **twilio_settings(twilio))
    assert (await f.begin(request())).verdict is Verdict.CHALLENGE
    soon = await f.begin(request(now=T0 + 5))
    assert (soon.reason, soon.counts_as_failure) == ("flood_limited", False)
    assert soon.prompt is not None and "recently" in soon.prompt
    assert (await f.begin(request(now=T0 + 30))).verdict is Verdict.CHALLENGE
    capped = await f.begin(request(now=T0 + 600))
    assert capped.reason == "flood_limited"
    assert capped.prompt == "Too many codes were sent; try again later"
    assert len(twilio.wait_for(2)) == 2
    assert twilio.requests == 2  # the refused sends never reached the provider


async def test_twilio_auth_failure_is_unavailable(env: Env, twilio: TwilioFake) -> None:
    f = env.factor(env.services(), **twilio_settings(twilio, auth_token="wrong-token"))
    with capture_logs() as logs:
        result = await f.begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "sms_provider_error")
    assert result.counts_as_failure is False
    [error] = [e for e in logs if e["event"] == "sms_provider_error"]
    assert (error["status"], error["twilio_code"]) == (401, 20003)
    assert twilio.requests == 1 and twilio.messages == []


async def test_twilio_refusing_the_number_is_unavailable(env: Env, twilio: TwilioFake) -> None:
    f = env.factor(env.services(), **twilio_settings(twilio))
    national = FactorUser(name="bob", login_name="bob", mobile="555 123 4567")
    with capture_logs() as logs:
        result = await f.begin(request(national))
    assert result.reason == "sms_provider_error"
    [error] = [e for e in logs if e["event"] == "sms_provider_error"]
    assert error["twilio_code"] == 21211


async def test_twilio_unreachable(env: Env) -> None:
    dead = TwilioFake()  # never started: nothing listens on its port
    f = env.factor(
        env.services(), **twilio_settings(dead, base_url=f"http://127.0.0.1:{free_port()}")
    )
    result = await f.begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "sms_unreachable")


async def test_twilio_timeout(env: Env, twilio: TwilioFake) -> None:
    twilio.hang = True
    f = env.factor(env.services(), timeout=0.2, **twilio_settings(twilio))
    result = await f.begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "sms_unreachable")


# ----------------------------------------------------------------- email gateway


async def test_email_gateway_delivers_to_number_at_domain(env: Env, smtp: SmtpServer) -> None:
    mail = SmtpSender(SmtpConfig.model_validate({"host": "127.0.0.1", "port": smtp.port}))
    f = env.factor(env.services(mail), message="Code {code}, valid {minutes} min", **GATEWAY)
    result = await f.begin(request())
    assert result.verdict is Verdict.CHALLENGE
    [mail_sent] = smtp.wait_for(1)
    assert mail_sent.recipients == ["15551234567@sms.example.net"]
    assert re.fullmatch(r"Code \d{6}, valid 5 min\s*", mail_sent.body)
    code = code_in(mail_sent.body)
    assert (await f.check(request(), code, result.pending)).verdict is Verdict.ACCEPT


async def test_email_gateway_without_smtp(env: Env) -> None:
    result = await env.factor(env.services(None), **GATEWAY).begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "smtp_not_configured")


async def test_email_gateway_smtp_down(env: Env) -> None:
    mail = SmtpSender(SmtpConfig.model_validate({"host": "127.0.0.1", "port": free_port()}))
    result = await env.factor(env.services(mail), **GATEWAY).begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "smtp_unavailable")


# ----------------------------------------------------------------- destinations, enrolment


async def test_inline_enrolment(texter: SmsFactor, env: Env, twilio: TwilioFake) -> None:
    assert texter.can_enrol_inline(ALICE) and texter.is_enrolled(ALICE)
    started = await texter.begin_enrolment(request())
    assert (started.verdict, started.reason) == (Verdict.CHALLENGE, "enrolment")
    code = code_in(twilio.wait_for(1)[0].body)
    wrong = "000000" if code != "000000" else "111111"
    assert (await texter.finish_enrolment(request(), wrong, started.pending)).verdict is (
        Verdict.REJECT
    )
    done = await texter.finish_enrolment(request(), code, started.pending)
    assert (done.verdict, done.reason) == (Verdict.ACCEPT, "enrolled")
    stored = await env.users.run(lambda s: s.get_enrolment("alice", "sms"))
    assert stored == {"number": "+15551234567"}
    record = await env.users.run(lambda s: s.get_user("alice"))
    assert record is not None and record.method == "sms"


async def test_enrolled_number_when_the_directory_has_none(
    texter: SmsFactor, env: Env, twilio: TwilioFake
) -> None:
    await env.users.run(lambda s: s.set_enrolment("bob", "sms", {"number": "+447700900123"}, T0))
    bob = FactorUser(
        name="bob", login_name="bob", record=await env.users.run(lambda s: s.get_user("bob"))
    )
    assert texter.is_enrolled(bob) and not texter.can_enrol_inline(bob)
    result = await texter.begin(request(bob))
    assert result.prompt == "Enter the code sent to +4*******0123"
    assert twilio.wait_for(1)[0].to == "+447700900123"


async def test_no_number(texter: SmsFactor, twilio: TwilioFake) -> None:
    nobody = FactorUser(name="carol", login_name="carol", mobile="call me")
    assert not texter.is_enrolled(nobody)
    result = await texter.begin(request(nobody))
    assert (result.reason, result.counts_as_failure) == ("no_destination", False)
    assert twilio.requests == 0


# ----------------------------------------------------------------- secrecy in logs


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything structlog and stdlib logging write at debug, rendered as in production."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    names = ("ldap3", "asyncio", "aiosmtplib", "mail.log", "mail.debug")
    levels = {name: logging.getLogger(name).level for name in names}
    buffer = io.StringIO()
    configure_logging(fmt="json", level="debug", stream=buffer)
    # The test SMTP server logs whole DATA lines: it is a peer, not mfaproxy, so mute it.
    for peer in ("mail.log", "mail.debug"):
        logging.getLogger(peer).setLevel(logging.WARNING)
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


async def test_code_never_logged(
    env: Env, twilio: TwilioFake, smtp: SmtpServer, log_output: io.StringIO
) -> None:
    # Ten digits, so the code cannot match a timestamp, a port or a SID by chance.
    f = env.factor(env.services(), code_length=10, **twilio_settings(twilio))
    started = await f.begin_enrolment(request())
    code = code_in(twilio.wait_for(1)[0].body, 10)
    await f.finish_enrolment(request(), code, started.pending)
    mail = SmtpSender(SmtpConfig.model_validate({"host": "127.0.0.1", "port": smtp.port}))
    gateway = env.factor(env.services(mail), code_length=10, **GATEWAY)
    await gateway.begin(request())
    gateway_code = code_in(smtp.wait_for(1)[0].body, 10)
    output = log_output.getvalue()
    assert output.count('"code_sent"') == 2 and "sms_sent" in output
    assert code not in output and gateway_code not in output
    assert "5551234567" not in output  # numbers are masked in our lines


# ----------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("+15551234567", "+15551234567"),
        ("+1 (555) 123-4567", "+15551234567"),
        ("0044 7700 900123", "+447700900123"),
        ("555.123.4567", "5551234567"),
        ("+33/6.12.34.56.78", "+33612345678"),
    ],
)
def test_normalise_number(raw: str, normalised: str) -> None:
    assert normalise_number(raw) == normalised


@pytest.mark.parametrize(
    "raw", ["", "12345", "+0123456789", "+1234567890123456", "555-CALL-NOW", "+1 555 +1234", None]
)
def test_unusable_numbers(raw: str | None) -> None:
    assert normalise_number(raw) is None


def test_mask_number() -> None:
    assert mask_number("+15551234567") == "+1******4567"
    assert mask_number("5551234") == "5**1234"
    assert mask_number("123456") == "****56"
