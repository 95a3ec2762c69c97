"""End to end: a real ocserv (Debian 1.1.6, radcli 1.2.11) and openconnect (9.01) log in
through the real daemon in challenge mode with TOTP.

radcli keeps attributes as C strings: it sends a State back only up to its first 0x00
octet, so a State of 32 random octets failed one challenge round in eight
(1 - (255/256)^32). Every State mfaproxy issues is printable; here every round of many
logins through the real client must pass, and no State may come back cut
(`malformed_state`) or unknown. Each login is its own enrolled user, since the
daemon refuses a TOTP time step used before, and no test waits for the next step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyotp
import pytest

from tests.e2e.methods_common import SECRET, daemon_config, open_store, password
from tests.support.daemon import Daemon
from tests.support.ocserv import Login, OcservServer, unusable

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(unusable() is not None, reason=str(unusable()))]

# With random-octet States, all 100 rounds would pass with p = (255/256)^3200 < 0.00001.
LOGINS = 100
USERS = [f"vpn{n:02d}" for n in range(LOGINS)]
RETRY_USER, WRONG_PASSWORD_USER, ENTER_USER = "rita", "wendy", "emma"
TOTP_PROMPT = "Enter the code from your authenticator app"


@dataclass
class Setup:
    daemon: Daemon
    ocserv: OcservServer
    keys: dict[str, str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("ocserv")
    users = [*USERS, RETRY_USER, WRONG_PASSWORD_USER, ENTER_USER]
    config = daemon_config(
        tmp, {user: {} for user in users}, {"enabled": ["totp"], "default": "totp"}
    )
    config["clients"] = [
        {
            "name": "ocserv",
            "address": ["127.0.0.1"],
            "secret": SECRET,
            "require_message_authenticator": False,  # radcli cannot sign
        }
    ]
    daemon = Daemon(tmp, config)
    store = open_store(daemon)
    keys = {user: pyotp.random_base32() for user in users}
    for user, key in keys.items():
        store.set_totp_secret(user, key, time.time())
        store.set_method(user, "totp", time.time())
    store.close()
    with daemon, OcservServer(tmp / "ocserv", daemon.port, SECRET) as ocserv:
        yield Setup(daemon, ocserv, keys)


def decisions(daemon: Daemon, user: str) -> list[tuple[str, str]]:
    return [(e["outcome"], e["reason"]) for e in daemon.audit(user=user)]


def wrong_code(key: str) -> str:
    """A code valid in no time step the daemon could accept around now."""
    totp, now = pyotp.TOTP(key), time.time()
    valid = {totp.at(now + step * totp.interval) for step in (-2, -1, 0, 1, 2)}
    return next(code for n in range(10**6) if (code := f"{n:06d}") not in valid)


def test_every_challenge_round_of_many_logins_succeeds(setup: Setup) -> None:
    def log_in(user: str) -> Login:
        code = pyotp.TOTP(setup.keys[user]).now()
        return setup.ocserv.login(user, password(user), code)

    with ThreadPoolExecutor(max_workers=4) as pool:
        logins = dict(zip(USERS, pool.map(log_in, USERS), strict=True))

    refused = {
        user: login.stderr[-600:] for user, login in logins.items() if not login.authenticated
    }
    assert not refused, refused
    for user, login in logins.items():
        assert TOTP_PROMPT in login.stderr  # ocserv showed the challenge's Reply-Message
        setup.daemon.wait_audit(user=user, reason="mfa_code_ok")
        assert decisions(setup.daemon, user) == [
            ("challenge", "totp_challenge"),
            ("accept", "mfa_code_ok"),
        ]
    # radiusclient.conf's nas-identifier: the requests came from ocserv's radcli.
    assert {e["nas_identifier"] for e in setup.daemon.audit()} == {"ocserv-test"}
    reasons = {e.get("reason") for e in setup.daemon.events}
    assert not reasons & {"malformed_state", "unknown_state"}
    assert not [e for e in setup.daemon.events if e.get("event") == "packet_dropped"]


def test_a_wrong_code_then_the_right_one_in_the_retry_round_logs_in(setup: Setup) -> None:
    key = setup.keys[RETRY_USER]
    login = setup.ocserv.login(
        RETRY_USER, password(RETRY_USER), wrong_code(key), pyotp.TOTP(key).now()
    )
    assert login.authenticated, login.stderr
    assert "Wrong code, try again. " + TOTP_PROMPT in login.stderr
    setup.daemon.wait_audit(user=RETRY_USER, reason="mfa_code_ok")
    assert decisions(setup.daemon, RETRY_USER) == [
        ("challenge", "totp_challenge"),
        ("challenge", "retry"),  # a new State, through radcli again
        ("accept", "mfa_code_ok"),
    ]


def test_enter_at_the_code_prompt_is_answered_at_once(setup: Setup) -> None:
    # radcli sends a User-Password with no value for an empty line: it is an empty
    # answer (asked again), not a malformed packet dropped while the user waits.
    key = setup.keys[ENTER_USER]
    login = setup.ocserv.login(ENTER_USER, password(ENTER_USER), "", pyotp.TOTP(key).now())
    assert login.authenticated, login.stderr
    setup.daemon.wait_audit(user=ENTER_USER, reason="mfa_code_ok")
    outcomes = decisions(setup.daemon, ENTER_USER)
    assert outcomes[0] == ("challenge", "totp_challenge")
    assert outcomes[-1] == ("accept", "mfa_code_ok")
    assert outcomes[1] == ("challenge", "retry"), outcomes  # asked again, a new State
    assert not [e for e in setup.daemon.events if e.get("reason") == "bad_password_attribute"]


def test_a_wrong_password_is_refused(setup: Setup) -> None:
    login = setup.ocserv.login(WRONG_PASSWORD_USER, "not-" + password(WRONG_PASSWORD_USER))
    assert not login.authenticated
    assert "COOKIE=" not in login.stdout
    setup.daemon.wait_audit(login_name=WRONG_PASSWORD_USER, outcome="reject")
    assert [
        (e["outcome"], e["reason"]) for e in setup.daemon.audit(login_name=WRONG_PASSWORD_USER)
    ] == [("reject", "bad_password")]
