"""End to end: the `radius` method through the real daemon, with a real FreeRADIUS as
the OTP server. The primary password is checked by the local directory; the second
factor is forwarded to FreeRADIUS, whose own Access-Challenge rounds are relayed to the
NAS under the daemon's State.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.methods_common import SECRET, answer, daemon_config, password
from tests.support.daemon import Daemon
from tests.support.freeradius import FREERADIUS, Challenge, FreeRadiusServer, UserSpec
from tests.support.nas import UdpNas, login

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(FREERADIUS).exists(), reason="FreeRADIUS is not installed"),
]

OTP_SECRET = "otp-server-secret"
UPSTREAM_PROMPT = "Enter the next token code"
UPSTREAM_STATE = b"fr-state-chris"
# In FreeRADIUS the "password" is the one-time code the token shows.
OTP_USERS = {
    "otto": UserSpec("314159"),
    "chris": UserSpec(
        "111111",
        challenge=Challenge(response="222222", prompt=UPSTREAM_PROMPT, state=UPSTREAM_STATE),
    ),
}


@dataclass
class Upstream:
    daemon: Daemon
    radius: FreeRadiusServer


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    tmp = tmp_path_factory.mktemp("otp-radius")
    with FreeRadiusServer(OTP_USERS, secret=OTP_SECRET) as radius:
        multifactor = {
            "enabled": ["radius"],
            "default": "radius",
            "radius": {
                "server": {"host": radius.host, "port": radius.port, "secret": OTP_SECRET},
                "timeout": 2,
                "retries": 1,
                "nas_identifier": "mfaproxy-e2e",
            },
        }
        users: dict[str, dict[str, Any]] = {name: {} for name in OTP_USERS}
        with Daemon(tmp, daemon_config(tmp, users, multifactor)) as daemon:
            yield Upstream(daemon, radius)


@pytest.fixture
def nas(upstream: Upstream) -> Iterator[UdpNas]:
    client = UdpNas(upstream.daemon.port)
    yield client
    client.close()


def test_otp_accepted_by_the_upstream_server(upstream: Upstream, nas: UdpNas) -> None:
    first = login(nas, SECRET, "otto", password("otto"))
    assert first.challenged and first.message.startswith("Enter your one-time code")
    accepted = answer(nas, first, "otto", "314159")
    assert accepted.accepted, accepted.message
    upstream.daemon.wait_audit(login_name="otto", outcome="accept", mfa_result="otp_ok")


def test_wrong_otp_is_asked_again(upstream: Upstream, nas: UdpNas) -> None:
    first = login(nas, SECRET, "otto", password("otto"))
    wrong = answer(nas, first, "otto", "271828")
    assert wrong.challenged and wrong.message.startswith("Wrong code")
    upstream.daemon.wait_audit(login_name="otto", mfa_result="bad_code")
    assert answer(nas, wrong, "otto", "314159").accepted


def test_upstream_challenge_is_relayed_and_the_second_answer_completes(
    upstream: Upstream, nas: UdpNas
) -> None:
    first = login(nas, SECRET, "chris", password("chris"))
    relayed = answer(nas, first, "chris", "111111")
    assert relayed.challenged, relayed.message
    assert relayed.message.startswith(UPSTREAM_PROMPT)
    # The NAS gets the daemon's own State; FreeRADIUS's stays in the session.
    assert relayed.state is not None and relayed.state not in (first.state, UPSTREAM_STATE)
    accepted = answer(nas, relayed, "chris", "222222")
    assert accepted.accepted, accepted.message
    upstream.daemon.wait_audit(login_name="chris", outcome="accept", mfa_result="otp_ok")
