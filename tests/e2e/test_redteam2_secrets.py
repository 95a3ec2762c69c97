"""Red team 2, end to end: a login of every kind at debug level, and the whole output
searched for every secret that crossed the daemon. test_no_secrets_in_logs.py covers
passwords, the shared secret, States, TOTP keys and backup codes on the password,
TOTP and backup-code paths; this adds the ones it does not reach: a mailed code, an
SMS code and the Twilio token, the key shown for an inline enrolment (in the form the
prompt shows it, grouped by four), a password typed at the code prompt, an appended
`password,code`, a wrong code, the Redis password, and the Redis outage path (whose
error text comes from the driver).

Unique values make a leak findable by plain search.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyotp
import pytest

from tests.e2e.methods_common import (
    APPEND_SOURCE,
    SECRET,
    answer,
    daemon_config,
    open_store,
    password,
)
from tests.support.daemon import Daemon
from tests.support.nas import UdpNas, access_request, exchange, login
from tests.support.redis_server import RedisServer
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake

pytestmark = pytest.mark.e2e

REDIS_PASSWORD = "redis-pw-" + secrets.token_hex(8)
TWILIO_TOKEN = secrets.token_hex(16)
TYPED_PASSWORD = "typed-at-the-prompt-" + secrets.token_hex(6)
WRONG_CODE = "918273"  # six digits that no timestamp or id in the log contains
_CODE = re.compile(r"\b(\d{6,8})\b")


@dataclass
class Setup:
    daemon: Daemon
    smtp: SmtpServer
    twilio: TwilioFake
    redis: RedisServer
    totp: str
    sensitive: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("secrets2")
    with (
        SmtpServer() as smtp,
        RedisServer(password=REDIS_PASSWORD) as redis,
        TwilioFake(auth_token=TWILIO_TOKEN) as twilio,
    ):
        users = {
            "ann": {"email": "ann@example.com"},  # email codes
            "eve": {},  # enrols TOTP inline, in an operator's window
            "tom": {},  # TOTP, in challenge and append mode
            "sam": {"mobile": "+15551234567"},  # SMS codes
        }
        multifactor = {
            "enabled": ["totp", "email", "sms"],
            "default": "totp",
            "email": {"resend_interval_seconds": 0},
            "sms": {
                "provider": "twilio",
                "twilio": {
                    "account_sid": twilio.account_sid,
                    "auth_token": twilio.auth_token,
                    "from_number": "+15005550006",
                    "base_url": twilio.base_url,
                },
            },
        }
        config = daemon_config(
            tmp,
            users,
            multifactor,
            smtp={"host": "127.0.0.1", "port": smtp.port, "from": "mfa@example.com"},
            server={"state_store": {"backend": "redis", "url": redis.url}},
        )
        daemon = Daemon(tmp, config)
        store = open_store(daemon)
        store.set_method("ann", "email", 0)
        store.set_method("eve", "totp", 0, configure_later=True)
        store.open_enrolment("eve", time.time() + 3600, 0)
        key = pyotp.random_base32()
        store.set_totp_secret("tom", key, 0)
        store.set_method("tom", "totp", 0)
        store.set_method("sam", "sms", 0)
        store.close()
        with daemon:
            yield Setup(daemon, smtp, twilio, redis, key)


def test_every_kind_of_login_logs_no_code_key_or_password(setup: Setup) -> None:
    nas, appending = UdpNas(setup.daemon.port), UdpNas(setup.daemon.port, source=APPEND_SOURCE)
    found = setup.sensitive
    try:
        mailed = login(nas, SECRET, "ann", password("ann"))
        match = _CODE.search(setup.smtp.wait_for(1)[-1].body)
        assert match is not None
        found["mailed code"] = match.group(1)
        assert answer(nas, mailed, "ann", found["mailed code"]).accepted

        shown = login(nas, SECRET, "eve", password("eve"))
        grouped = shown.message.split(": ", 1)[1].split(" then")[0]
        found["enrolment key, as shown"] = grouped
        found["enrolment key"] = grouped.replace(" ", "")
        assert answer(nas, shown, "eve", pyotp.TOTP(found["enrolment key"]).now()).accepted

        asked = login(nas, SECRET, "tom", password("tom"))
        mistaken = answer(nas, asked, "tom", TYPED_PASSWORD)
        assert mistaken.challenged, mistaken.message
        assert answer(nas, mistaken, "tom", WRONG_CODE).challenged
        code = pyotp.TOTP(setup.totp).now()
        found["appended"] = f"{password('tom')},{code}"
        appended = access_request(SECRET, "tom", found["appended"])
        assert exchange(appending, SECRET, appended).accepted

        texted = login(nas, SECRET, "sam", password("sam"))
        match = _CODE.search(setup.twilio.wait_for(1)[-1].body)
        assert match is not None
        found["sms code"] = match.group(1)
        assert answer(nas, texted, "sam", found["sms code"]).accepted

        setup.redis.stop()
        try:
            down = exchange(nas, SECRET, access_request(SECRET, "tom", password("tom")))
            assert down.rejected
            setup.daemon.wait_for(lambda e: e.get("event") == "state_store_down")
        finally:
            setup.redis.start()
        end = access_request(SECRET, "nobody", "x", NAS_Identifier="end")
        exchange(nas, SECRET, end)
    finally:
        nas.close()
        appending.close()
    setup.daemon.wait_audit(nas_identifier="end")
    found.update(
        {
            "redis password": REDIS_PASSWORD,
            "twilio token": TWILIO_TOKEN,
            "typed password": TYPED_PASSWORD,
            "wrong code": WRONG_CODE,
            "tom's totp key": setup.totp,
            "shared secret": SECRET,
            **{f"{user}'s password": password(user) for user in ("ann", "eve", "tom", "sam")},
        }
    )
    output = setup.daemon.output
    assert any(e.get("level") == "debug" for e in setup.daemon.events)  # at debug level
    for what, value in found.items():
        for form in (value, value.encode().hex()):
            assert form not in output, f"the {what} leaked into the log as {form!r}"
