"""End to end: Duo `auto` mode, Verified Push, and 100 pending pushes, through the real
daemon, the real duo_client signer and the Duo fake, with radclient and our test NAS.

- `auto` (radclient on 127.0.0.1): a NAS that cannot show a challenge; the password
  alone starts the push at once and the request is held until the user answers; its
  retransmissions never push twice; nothing ever answers with an Access-Challenge.
- Verified Push (the `portal` NAS, challenge mode, on 127.0.0.4): the code Duo hands
  out is shown in an Access-Challenge, the user types it into Duo Mobile, the answer to
  the challenge waits for Duo's verdict.
- 100 pushes pending at once leave a TOTP login and a Duo passcode login unaffected.

Synchronisation is by the fake's Events, radclient's own exit and bounded polling of
the daemon's metrics; nothing sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyotp
import pytest

from tests.e2e.methods_common import (
    SECRET,
    answer,
    daemon_config,
    metric,
    open_store,
    password,
)
from tests.support.cluster import wait_until
from tests.support.daemon import Daemon
from tests.support.duo_fake import FakeDuo
from tests.support.nas import Reply, UdpNas, access_request, login
from tests.support.ports import free_port
from tests.support.radclient import RadclientResult, radclient

pytestmark = pytest.mark.e2e

PORTAL = "127.0.0.4"  # a challenge NAS (the default `vpn` client is `auto` here)
MA = {"Message-Authenticator": "0x00"}  # radclient computes it
WAIT = 20.0
CROWD = [f"crowd{i:03d}" for i in range(100)]
NAMED = ("ava", "ben", "cleo", "dina", "eve", "tom", "tina", "pam")
IGNORED = ("mfaproxy_duplicates_total", 'action="ignored_in_flight"')


@dataclass
class Setup:
    daemon: Daemon
    fake: FakeDuo
    metrics_port: int
    totp: dict[str, str]  # TOTP users (tom, tina) and their secrets

    def code(self, user: str) -> str:
        return pyotp.TOTP(self.totp[user]).now()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("push-modes")
    with FakeDuo(long_poll=30) as fake:
        multifactor: dict[str, Any] = {
            "enabled": ["duo", "totp"],
            "default": "duo",
            "duo": {
                "integration_key": fake.ikey,
                "secret_key": fake.skey,
                "api_hostname": fake.api_hostname,
                "ca_file": str(fake.ca_file),
                "timeout": 30,
                "verified_push": True,
                "push_limit": {"max_pushes": 5, "window_seconds": 600},
            },
        }
        users: dict[str, dict[str, Any]] = {name: {} for name in (*NAMED, *CROWD)}
        config = daemon_config(tmp, users, multifactor)
        config["clients"] = [
            {"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET, "second_factor": "auto"},
            {"name": "portal", "address": [PORTAL], "secret": SECRET},
        ]
        port = free_port()
        config["server"] = {"metrics": {"listen": f"127.0.0.1:{port}"}}
        with Daemon(tmp, config) as daemon:
            secrets = {name: pyotp.random_base32() for name in ("tom", "tina")}
            store = open_store(daemon)
            for name, secret in secrets.items():
                store.set_totp_secret(name, secret, 0)
                store.set_method(name, "totp", 0)
            store.close()
            yield Setup(daemon, fake, port, secrets)


def radclient_login(setup: Setup, user: str, text: str, **options: Any) -> RadclientResult:
    # Quoted: radclient's input separates attributes with commas.
    attributes = {"User-Name": user, "User-Password": f'"{text}"', **MA}
    return radclient(setup.daemon.port, SECRET, attributes, **options)


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(call()))
    thread.start()
    return thread, box


# ------------------------------------------------------------------------ auto


def test_auto_mode_pushes_on_the_password_alone_and_holds_the_request(setup: Setup) -> None:
    user = setup.fake.add_user("ava", hold=True)
    ignored = metric(setup.metrics_port, *IGNORED)
    # radclient retransmits every 2 s while the push waits (as a NAS does).
    thread, box = in_thread(
        lambda: radclient_login(setup, "ava", password("ava"), timeout=2, retries=10)
    )
    assert user.push_sent.wait(WAIT), "the push never reached Duo"
    wait_until(
        lambda: metric(setup.metrics_port, *IGNORED) > ignored,
        "a retransmission of the held request",
    )
    user.release.set()  # the user taps Approve
    thread.join(60)
    [result] = box
    assert result.code == "Access-Accept", result.output
    assert "Access-Challenge" not in result.output
    assert setup.fake.auth_calls("ava") == 1
    setup.daemon.wait_audit(user="ava", outcome="accept", reason="mfa_push_approved")


def test_auto_mode_takes_an_appended_passcode(setup: Setup) -> None:
    setup.fake.add_user("ben", passcodes={"271828"})
    result = radclient_login(setup, "ben", f"{password('ben')},271828")
    assert result.code == "Access-Accept", result.output
    [call] = setup.fake.calls_to("/auth/v2/auth", "ben")
    assert call.params["factor"] == "passcode"


def test_auto_mode_never_challenges(setup: Setup) -> None:
    """What would need another round ends in a reject that says how to append a code:
    a TOTP user without an appended code, a Duo user whose policy wants Verified Push
    (never declared in auto mode, so Duo refuses the push)."""
    totp = radclient_login(setup, "tom", password("tom"))
    assert totp.code == "Access-Reject", totp.output
    assert any("append" in v for v in totp.values("Reply-Message")), totp.output
    setup.fake.add_user("cleo", verified_push=True)
    verified = radclient_login(setup, "cleo", password("cleo"))
    assert verified.code == "Access-Reject", verified.output
    assert "client_supports_verified_push" not in setup.fake.calls_to("/auth/v2/preauth")[-1].params
    appended = radclient_login(setup, "tom", f"{password('tom')},{setup.code('tom')}")
    assert appended.code == "Access-Accept", appended.output


def test_auto_mode_push_denied_is_a_counted_reject(setup: Setup) -> None:
    setup.fake.add_user("dina", push="deny")
    result = radclient_login(setup, "dina", password("dina"))
    assert result.code == "Access-Reject", result.output
    setup.daemon.wait_audit(user="dina", reason="duo_push_denied")
    store = open_store(setup.daemon)
    try:
        record = store.get_user("dina")
        assert record is not None and record.failures >= 1
    finally:
        store.close()


# --------------------------------------------------------------- Verified Push


@pytest.fixture
def portal(setup: Setup) -> Iterator[UdpNas]:
    nas = UdpNas(setup.daemon.port, source=PORTAL, timeout=WAIT)
    yield nas
    nas.close()


def test_verified_push_shows_the_code_and_duo_checks_it(setup: Setup, portal: UdpNas) -> None:
    user = setup.fake.add_user("eve", verified_push=True)
    menu = login(portal, SECRET, "eve", password("eve"))
    assert menu.challenged and "push" in menu.message, menu.message
    shown = answer(portal, menu, "eve", "push")
    assert shown.challenged, shown.message
    [code] = user.verification_codes.values() or [""]
    code = code or next(c for c in shown.message.split() if c.isdigit())
    assert code in shown.message and "Duo Mobile" in shown.message

    user.enter_code(code)  # typed into the app
    accepted = answer(portal, shown, "eve", "")
    assert accepted.accepted, accepted.message
    setup.daemon.wait_audit(user="eve", outcome="accept", reason="mfa_push_approved")
    assert setup.fake.auth_calls("eve") == 1


def test_verified_push_with_a_wrong_code_is_rejected(setup: Setup, portal: UdpNas) -> None:
    user = setup.fake.add_user("pam", verified_push=True)
    shown = answer(portal, login(portal, SECRET, "pam", password("pam")), "pam", "push")
    assert shown.challenged, shown.message
    user.enter_code("000000" if "000000" not in shown.message else "111111")
    rejected = answer(portal, shown, "pam", "")
    assert rejected.rejected, rejected.message
    setup.daemon.wait_audit(user="pam", reason="duo_push_denied")


# ------------------------------------------------------------------------ load


def test_100_pending_pushes_leave_totp_and_passcode_logins_unaffected(
    setup: Setup, portal: UdpNas
) -> None:
    crowd = {name: setup.fake.add_user(name, hold=True) for name in CROWD}
    setup.fake.add_user("ben", passcodes={"161803"})
    held = UdpNas(setup.daemon.port, timeout=60)
    try:
        requests = []
        for name in CROWD:
            request = access_request(SECRET, name, password(name))
            requests.append(request)
            held.send(request.RequestPacket())
        for user in crowd.values():
            assert user.polled.wait(WAIT), "a push never started"

        # TOTP through a challenge, and a Duo passcode, while all 100 wait.
        challenge = login(portal, SECRET, "tina", password("tina"))
        totp = answer(portal, challenge, "tina", setup.code("tina"))
        assert totp.accepted, totp.message
        passcode = radclient_login(setup, "ben", f"{password('ben')},161803")
        assert passcode.code == "Access-Accept", passcode.output
        assert setup.daemon.audit(user="crowd000", outcome="accept") == []  # still held

        for user in crowd.values():
            user.release.set()
        replies: dict[int, Reply] = {}
        while len(replies) < len(requests):
            raw = held.receive()
            replies[raw[1]] = Reply(raw, SECRET)
        assert all(reply.accepted for reply in replies.values())
        for request in requests[:3]:
            assert request.id in replies
    finally:
        held.close()
    assert all(setup.fake.auth_calls(name) == 1 for name in CROWD)
