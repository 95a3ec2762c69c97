"""End to end: the code-based second factors through the real daemon.

YubiKey OTPs verified by a YubiCloud fake that speaks validation protocol 2.0 (signed
both ways), email codes through a real SMTP server (aiosmtpd), SMS through the real
twilio SDK against a fake of Twilio's Messages API and through a carrier's
email-to-SMS gateway. A test NAS sends the RADIUS packets; codes are read from what
the fakes received, never from the daemon.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyotp
import pytest

from mfaproxy.otp.backup_codes import generate_codes
from mfaproxy.store.records import UserRepository
from tests.e2e.methods_common import (
    APPEND_SOURCE,
    SECRET,
    answer,
    code_in,
    daemon_config,
    mails_to,
    open_store,
    password,
    receive_reply,
    wait_mail,
)
from tests.support.daemon import Daemon
from tests.support.nas import UdpNas, access_request, login
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.yubicloud import FakeYubicloud, SimulatedKey

pytestmark = pytest.mark.e2e

CLIENT_ID = "4711"
API_KEY = base64.b64encode(b"e2e yubicloud apikey").decode()
FROM_NUMBER = "+15005550006"
# No resend interval and a high hourly cap: only the duplicate table may stop a send.
DELIVERY = {"resend_interval_seconds": 0, "max_sends_per_hour": 1000}
USERS = {
    "yuki": {},  # YubiKey bound by public id
    "yoko": {},  # YubiKey, "configure later": enrols by touching the key
    "emma": {"email": "emma@example.com"},  # email method
    "mark": {"email": "mark@example.com"},  # email method, a marker for counting mails
    "tom": {"email": "tom@example.com"},  # TOTP, email as the alternate way
    "tina": {"email": "tina@example.com"},  # TOTP with backup codes, for the prompt menu
    "sam": {"mobile": "+1 (555) 123-4567"},  # SMS through Twilio
}


@dataclass
class Codes:
    daemon: Daemon
    store: UserRepository
    smtp: SmtpServer
    twilio: TwilioFake
    cloud: FakeYubicloud
    key: SimulatedKey  # yuki's
    new_key: SimulatedKey  # yoko's, not bound yet
    totp: dict[str, str]


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture(scope="module")
def codes(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpServer) -> Iterator[Codes]:
    tmp = tmp_path_factory.mktemp("codes")
    key, new_key = SimulatedKey.random(), SimulatedKey.random()
    with (
        TwilioFake() as twilio,
        FakeYubicloud(CLIENT_ID, API_KEY, [key, new_key]) as cloud,
    ):
        multifactor = {
            "enabled": ["totp", "yubikey", "email", "sms"],
            "default": "totp",
            "alternate": ["backup_codes", "email"],
            "yubikey": {
                "validation": "yubicloud",
                "client_id": CLIENT_ID,
                "api_key": API_KEY,
                "api_urls": [cloud.url],
            },
            "email": DELIVERY,
            "sms": {
                "provider": "twilio",
                "twilio": {
                    "account_sid": twilio.account_sid,
                    "auth_token": twilio.auth_token,
                    "from_number": FROM_NUMBER,
                    "base_url": twilio.base_url,
                },
                **DELIVERY,
            },
        }
        smtp_section = {"host": "127.0.0.1", "port": smtp.port, "from": "mfaproxy@example.com"}
        daemon = Daemon(tmp, daemon_config(tmp, USERS, multifactor, smtp=smtp_section))
        store = open_store(daemon)
        store.set_enrolment("yuki", "yubikey", {"public_id": key.public_id}, 0)
        store.set_method("yuki", "yubikey", 0)
        store.set_method("yoko", "yubikey", 0, configure_later=True)
        store.open_enrolment("yoko", time.time() + 3600, 0)  # as set-method does
        for user in ("emma", "mark"):
            store.set_method(user, "email", 0)
        store.set_method("sam", "sms", 0)
        secrets: dict[str, str] = {}
        for user in ("tom", "tina"):
            secrets[user] = pyotp.random_base32()
            store.set_totp_secret(user, secrets[user], 0)
            store.set_method(user, "totp", 0)
        # The menu lists only ways the user can use: an address, codes left.
        store.replace_backup_codes("tina", generate_codes(2), 0)
        with daemon:
            yield Codes(daemon, store, smtp, twilio, cloud, key, new_key, secrets)
        store.close()


@pytest.fixture
def nas(codes: Codes) -> Iterator[UdpNas]:
    client = UdpNas(codes.daemon.port)
    yield client
    client.close()


# ----------------------------------------------------------------- YubiKey


def test_yubikey_otp_is_verified_by_yubicloud_and_works_once(codes: Codes, nas: UdpNas) -> None:
    first = login(nas, SECRET, "yuki", password("yuki"))
    assert first.challenged and first.message.startswith("Touch your YubiKey")
    otp = codes.key.otp()
    accepted = answer(nas, first, "yuki", otp)
    assert accepted.accepted, accepted.message
    assert otp in [r.get("otp") for r in codes.cloud.requests]  # YubiCloud was asked
    codes.daemon.wait_audit(login_name="yuki", outcome="accept", mfa_result="code_ok")

    again = login(nas, SECRET, "yuki", password("yuki"), otp)
    assert not again.accepted
    assert again.challenged and again.message.startswith("Wrong code")
    codes.daemon.wait_audit(login_name="yuki", mfa_result="replayed")


def test_yubikey_otp_of_another_key_is_refused_without_asking_yubicloud(
    codes: Codes, nas: UdpNas
) -> None:
    stranger = SimulatedKey.random()
    codes.cloud.add_key(stranger)  # YubiCloud would say OK: the binding must refuse it
    otp = stranger.otp()
    reply = login(nas, SECRET, "yuki", password("yuki"), otp)
    assert not reply.accepted
    codes.daemon.wait_audit(login_name="yuki", mfa_result="wrong_key")
    assert otp not in [r.get("otp") for r in codes.cloud.requests]


@pytest.mark.parametrize("delimiter", ["", ","])
def test_yubikey_otp_appended_to_the_password(codes: Codes, delimiter: str) -> None:
    legacy = UdpNas(codes.daemon.port, source=APPEND_SOURCE)
    try:
        typed = password("yuki") + delimiter + codes.key.otp()
        reply = login(legacy, SECRET, "yuki", typed)
        assert reply.accepted, reply.message
    finally:
        legacy.close()


def test_yubikey_inline_enrolment_by_touching_the_key(codes: Codes, nas: UdpNas) -> None:
    first = login(nas, SECRET, "yoko", password("yoko"))
    assert first.challenged and "register" in first.message
    enrolled = answer(nas, first, "yoko", codes.new_key.otp())
    assert enrolled.accepted, enrolled.message
    assert codes.store.get_enrolment("yoko", "yubikey") == {"public_id": codes.new_key.public_id}
    record = codes.store.get_user("yoko")
    assert record is not None and record.method == "yubikey" and not record.configure_later

    # Bound now: the next login asks for a touch, and only this key's OTP passes.
    second = login(nas, SECRET, "yoko", password("yoko"))
    assert second.challenged and second.message.startswith("Touch your YubiKey")
    assert not answer(nas, second, "yoko", codes.key.otp()).accepted
    assert login(nas, SECRET, "yoko", password("yoko"), codes.new_key.otp()).accepted


# ----------------------------------------------------------------- email


def test_email_code_is_mailed_and_accepted(codes: Codes, nas: UdpNas) -> None:
    before = len(codes.smtp.messages)
    first = login(nas, SECRET, "emma", password("emma"))
    assert first.challenged
    assert "code sent to e***@example.com" in first.message
    mail = wait_mail(codes.smtp, "emma@example.com", before)
    assert mail.sender == "mfaproxy@example.com"
    accepted = answer(nas, first, "emma", code_in(mail.body))
    assert accepted.accepted, accepted.message
    codes.daemon.wait_audit(login_name="emma", method="email", mfa_result="code_ok")


def test_email_a_retransmitted_first_request_sends_one_mail(codes: Codes, nas: UdpNas) -> None:
    before = len(codes.smtp.messages)
    request = access_request(SECRET, "emma", password("emma"), NAS_Identifier="emma-twice")
    datagram = request.RequestPacket()
    nas.send(datagram)
    nas.send(datagram)  # the NAS did not hear back in time: the very same bytes again
    first = receive_reply(nas, request)
    assert first.challenged, first.message

    # A marker login queued after the copy: once its mail is in, a second mail to emma
    # would have been sent too.
    marker = login(nas, SECRET, "mark", password("mark"))
    assert marker.challenged
    wait_mail(codes.smtp, "mark@example.com", before)
    codes.daemon.wait_audit(login_name="mark", mfa_result="code_sent")
    [mail] = mails_to(codes.smtp.messages[before:], "emma@example.com")
    assert len(codes.daemon.audit(nas_identifier="emma-twice")) == 1
    assert answer(nas, first, "emma", code_in(mail.body)).accepted


def test_email_as_the_alternate_way_of_a_totp_user(codes: Codes, nas: UdpNas) -> None:
    first = login(nas, SECRET, "tom", password("tom"))
    assert first.challenged and "authenticator app" in first.message and "email" in first.message
    before = len(codes.smtp.messages)
    switched = answer(nas, first, "tom", "email")
    assert switched.challenged and "code sent to t***@example.com" in switched.message
    mail = wait_mail(codes.smtp, "tom@example.com", before)
    accepted = answer(nas, switched, "tom", code_in(mail.body))
    assert accepted.accepted, accepted.message
    codes.daemon.wait_audit(login_name="tom", method="email", mfa_result="code_ok")
    record = codes.store.get_user("tom")
    assert record is not None and record.method == "totp"  # an alternate, not a new method


# ----------------------------------------------------------------- SMS


def test_sms_code_through_twilio(codes: Codes, nas: UdpNas) -> None:
    before = len(codes.twilio.messages)
    first = login(nas, SECRET, "sam", password("sam"))
    assert first.challenged and "code sent to +1******4567" in first.message
    sms = codes.twilio.wait_for(before + 1)[before]
    assert (sms.to, sms.from_) == ("+15551234567", FROM_NUMBER)
    accepted = answer(nas, first, "sam", code_in(sms.body))
    assert accepted.accepted, accepted.message
    codes.daemon.wait_audit(login_name="sam", method="sms", mfa_result="code_ok")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpServer) -> Iterator[Daemon]:
    """A second daemon: SMS through a carrier's email-to-SMS gateway."""
    tmp = tmp_path_factory.mktemp("gateway")
    multifactor = {
        "enabled": ["sms"],
        "default": "sms",
        "sms": {
            "provider": "email_gateway",
            "email_gateway": {"domain": "sms.example-carrier.com"},
            **DELIVERY,
        },
    }
    smtp_section = {"host": "127.0.0.1", "port": smtp.port, "from": "mfaproxy@example.com"}
    users = {"gina": {"mobile": "+1 555 765 4321"}}
    with Daemon(tmp, daemon_config(tmp, users, multifactor, smtp=smtp_section)) as daemon:
        yield daemon


def test_sms_code_through_an_email_gateway(gateway: Daemon, smtp: SmtpServer) -> None:
    nas = UdpNas(gateway.port)
    try:
        before = len(smtp.messages)
        first = login(nas, SECRET, "gina", password("gina"))
        assert first.challenged and "code sent to +1******4321" in first.message
        mail = wait_mail(smtp, "15557654321@sms.example-carrier.com", before)
        accepted = answer(nas, first, "gina", code_in(mail.body))
        assert accepted.accepted, accepted.message
    finally:
        nas.close()


# ----------------------------------------------------------------- the prompt


def test_prompt_lists_the_alternate_words_in_one_reply_message(codes: Codes, nas: UdpNas) -> None:
    first = login(nas, SECRET, "tina", password("tina"))
    assert first.challenged
    assert first.message.endswith("(or type backup, email, reset)"), first.message
    assert first.message.isascii() and len(first.message.encode()) <= 253
    assert len(first.values("Reply-Message")) == 1
    # The words work: `backup` switches to the backup-code prompt.
    backup = answer(nas, first, "tina", "backup")
    assert backup.challenged and "backup code" in backup.message


def test_prompt_offers_only_usable_alternates(codes: Codes, nas: UdpNas) -> None:
    # tom has an address but no backup codes: "email" is offered, "backup" is not
    first = login(nas, SECRET, "tom", password("tom"))
    assert first.challenged
    assert first.message.endswith("(or type email, reset)"), first.message
