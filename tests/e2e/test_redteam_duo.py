"""Red team, end to end: Duo `failmode: safe` (accept on the password when Duo is down)
against a password holder who can make Duo fail after the user was asked, through the
real daemon and the Duo fake (its wire protocol, its 429s and 5xx).

Issue 10 finding 6: a wrong passcode or an unanswered push was accepted when `/auth`
answered 429 or 5xx after preauth succeeded. Failmode is for an outage before the user
is asked, only: each attack below must end in a Reject, and the control (Duo down at
preauth) in the failmode's Accept, so the tests can fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher

from tests.support.daemon import Daemon
from tests.support.duo_fake import FakeDuo
from tests.support.nas import Reply, UdpNas, access_request, exchange

pytestmark = pytest.mark.e2e

SECRET = "duo-redteam-secret"
APPEND_SOURCE = "127.0.0.3"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
AUTH, PREAUTH, STATUS = "/auth/v2/auth", "/auth/v2/preauth", "/auth/v2/auth_status"
USERS = ("ann", "ben", "cat", "dan", "eve", "fay")


@dataclass
class Setup:
    daemon: Daemon
    duo: FakeDuo


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("duo-redteam")
    users = {name: {"password_hash": FAST.hash(f"{name}-pw")} for name in USERS}
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    with FakeDuo(long_poll=0.2) as duo:
        for name in USERS:
            duo.add_user(name, push="timeout", passcodes={"123456"})
        config: dict[str, Any] = {
            "clients": [
                {"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET},
                {
                    "name": "legacy",
                    "address": [APPEND_SOURCE],
                    "secret": SECRET,
                    "second_factor": "append",
                },
            ],
            "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
            "access_policies": {"mfa": {"default_action": "mfa_required"}},
            "multifactor": {
                "enabled": ["duo"],
                "default": "duo",
                "duo": {
                    "integration_key": duo.ikey,
                    "secret_key": duo.skey,
                    "api_hostname": duo.api_hostname,
                    "ca_file": str(duo.ca_file),
                    "failmode": "safe",
                    "timeout": 5,
                },
            },
        }
        with Daemon(tmp, config) as daemon:
            yield Setup(daemon, duo)


@pytest.fixture
def duo(setup: Setup) -> Iterator[FakeDuo]:
    yield setup.duo
    for path in (AUTH, PREAUTH, STATUS):
        setup.duo.fail(path, None)


def challenge(daemon: Daemon, user: str) -> tuple[UdpNas, Reply]:
    nas = UdpNas(daemon.port, timeout=20)
    first = exchange(nas, SECRET, access_request(SECRET, user, f"{user}-pw"))
    assert first.challenged and first.state is not None, first.message
    return nas, first


def respond(nas: UdpNas, user: str, first: Reply, text: str) -> Reply:
    request = access_request(SECRET, user, text)
    assert first.state is not None
    request.AddAttribute("State", first.state)
    return exchange(nas, SECRET, request)


@pytest.mark.parametrize(("status", "text"), [(429, "push"), (500, "push"), (503, "654321")])
def test_duo_failing_after_the_user_was_asked_never_accepts(
    setup: Setup, duo: FakeDuo, status: int, text: str
) -> None:
    """Attack: answer the menu (a push the victim will not approve, or a guessed
    passcode) while Duo's /auth fails (the attacker floods Duo with the victim's name
    to get 429s, or Duo has an outage): the failmode must not turn it into an Accept."""
    user = {429: "ann", 500: "ben", 503: "cat"}[status]
    nas, first = challenge(setup.daemon, user)
    try:
        duo.fail(AUTH, status)
        final = respond(nas, user, first, text)
    finally:
        nas.close()
    assert final.rejected, final.message
    event = setup.daemon.wait_audit(login_name=user, outcome="reject")
    assert event["reason"] in {"duo_duo_error_after_prompt", "duo_unavailable"}, event
    assert not setup.daemon.audit(login_name=user, reason="mfa_failmode_safe")


def test_a_push_whose_status_polls_fail_never_accepts(setup: Setup, duo: FakeDuo) -> None:
    """Attack: the push goes out (the victim ignores it), then auth_status fails: an
    unanswered push must not become an Accept."""
    nas, first = challenge(setup.daemon, "dan")
    try:
        duo.fail(STATUS, 502)
        final = respond(nas, "dan", first, "push")
    finally:
        nas.close()
    assert final.rejected, final.message
    setup.daemon.wait_audit(login_name="dan", outcome="reject")


def test_a_rate_limited_preauth_is_no_outage(setup: Setup, duo: FakeDuo) -> None:
    """Attack: make Duo rate-limit the victim (429 at preauth) so that the failmode
    lets the password alone in: Duo answered, so this is no outage."""
    duo.fail(PREAUTH, 429)
    nas = UdpNas(setup.daemon.port, timeout=20)
    try:
        reply = exchange(nas, SECRET, access_request(SECRET, "eve", "eve-pw"))
    finally:
        nas.close()
    assert reply.rejected, reply.message
    setup.daemon.wait_audit(login_name="eve", reason="duo_unavailable")


def test_an_appended_passcode_with_duo_failing_at_auth_never_accepts(
    setup: Setup, duo: FakeDuo
) -> None:
    """Attack in append mode (`password,passcode` in one request): a wrong passcode
    while /auth fails. The control: the same login with Duo down at preauth, before any
    second factor is looked at, is the failmode's Accept."""
    nas = UdpNas(setup.daemon.port, timeout=20, source=APPEND_SOURCE)
    try:
        duo.fail(AUTH, 500)
        wrong = exchange(nas, SECRET, access_request(SECRET, "fay", "fay-pw,654321"))
        assert wrong.rejected, wrong.message
        duo.fail(AUTH, None)
        duo.fail(PREAUTH, 503)
        down = exchange(nas, SECRET, access_request(SECRET, "fay", "fay-pw,654321"))
        assert down.accepted, down.message  # the control: an outage before the factor
    finally:
        nas.close()
    setup.daemon.wait_audit(login_name="fay", reason="mfa_failmode_safe")
