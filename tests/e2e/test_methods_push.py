"""End to end: Duo through the real daemon and the real duo_client, against a local
HTTPS fake of Duo's Auth API that checks every request signature.

A held push (the fake keeps the transaction "waiting" until the test releases it)
shows the out-of-band case the design insists on: the daemon holds the RADIUS request
while the push is pending, and the NAS's retransmissions of that request never start a
second push. Synchronisation is by the fake's Events, a Status-Server barrier and the
daemon's audit log; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.methods_common import (
    APPEND_SOURCE,
    SECRET,
    answer,
    daemon_config,
    metric,
    password,
    receive_reply,
    status_server,
)
from tests.support.daemon import Daemon
from tests.support.duo_fake import FakeDuo
from tests.support.nas import UdpNas, access_request, login
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

USERS: dict[str, dict[str, Any]] = {name: {} for name in ("dora", "alan", "pat", "nina", "otis")}
IGNORED_IN_FLIGHT = ("mfaproxy_duplicates_total", 'action="ignored_in_flight"')
WAIT = 10.0  # seconds an Event may take before the test fails (never a sleep)


def duo_daemon(tmp: Path, duo: FakeDuo, metrics_port: int | None = None) -> Daemon:
    multifactor = {
        "enabled": ["duo"],
        "default": "duo",
        "duo": {
            "integration_key": duo.ikey,
            "secret_key": duo.skey,
            "api_hostname": duo.api_hostname,
            "ca_file": str(duo.ca_file),
            "failmode": "secure",
            "timeout": 30,
        },
    }
    config = daemon_config(tmp, USERS, multifactor)
    if metrics_port is not None:
        config["server"] = {"metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    return Daemon(tmp, config)


@dataclass
class Duo:
    daemon: Daemon
    fake: FakeDuo
    metrics_port: int


@pytest.fixture(scope="module")
def duo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Duo]:
    tmp = tmp_path_factory.mktemp("duo")
    with FakeDuo() as fake:
        port = free_port()
        with duo_daemon(tmp, fake, port) as daemon:
            yield Duo(daemon, fake, port)


@pytest.fixture
def nas(duo: Duo) -> Iterator[UdpNas]:
    client = UdpNas(duo.daemon.port)
    yield client
    client.close()


def test_held_push_is_sent_once_although_the_nas_retransmits(duo: Duo, nas: UdpNas) -> None:
    user = duo.fake.add_user("dora", hold=True)
    first = login(nas, SECRET, "dora", password("dora"))
    assert first.challenged and "push" in first.message, first.message
    assert first.state is not None

    request = access_request(SECRET, "dora", "push")
    request.AddAttribute("State", first.state)
    datagram = request.RequestPacket()
    nas.send(datagram)
    assert user.push_sent.wait(WAIT), "the push never reached Duo"
    ignored = metric(duo.metrics_port, *IGNORED_IN_FLIGHT)

    nas.send(datagram)  # the NAS timed out waiting: the very same request again
    early = status_server(nas)  # answered: the copy above has been looked up, and dropped
    assert metric(duo.metrics_port, *IGNORED_IN_FLIGHT) == ignored + 1
    assert duo.fake.auth_calls("dora") == 1
    # Still pending: no answer to the request yet, neither on the wire nor in the audit.
    assert [raw for raw in early if raw[1] == request.id] == []
    assert duo.daemon.audit(login_name="dora", mfa_result="push_approved") == []

    user.release.set()  # the user taps Approve
    reply = receive_reply(nas, request)
    assert reply.accepted, reply.message
    assert duo.fake.auth_calls("dora") == 1
    duo.daemon.wait_audit(login_name="dora", outcome="accept", mfa_result="push_approved")
    assert len(duo.daemon.audit(login_name="dora", mfa_result="push_approved")) == 1

    # A late copy is answered from the reply cache, still without another push.
    nas.send(datagram)
    assert receive_reply(nas, request).raw == reply.raw
    assert duo.fake.auth_calls("dora") == 1


def test_push_word_appended_to_the_password(duo: Duo) -> None:
    duo.fake.add_user("alan")
    legacy = UdpNas(duo.daemon.port, source=APPEND_SOURCE)
    try:
        reply = login(legacy, SECRET, "alan", f"{password('alan')},push")
        assert reply.accepted, reply.message
    finally:
        legacy.close()
    assert duo.fake.auth_calls("alan") == 1
    [call] = duo.fake.calls_to("/auth/v2/auth", "alan")
    assert call.params["factor"] == "push"


def test_passcode_is_accepted_once(duo: Duo, nas: UdpNas) -> None:
    duo.fake.add_user("pat", passcodes={"314159"})
    first = login(nas, SECRET, "pat", password("pat"))
    accepted = answer(nas, first, "pat", "314159")
    assert accepted.accepted, accepted.message
    duo.daemon.wait_audit(login_name="pat", mfa_result="passcode_ok")
    again = login(nas, SECRET, "pat", password("pat"), "314159")
    assert again.rejected and "Incorrect passcode" in again.message
    assert duo.fake.calls_to("/auth/v2/auth", "pat")[-1].params["factor"] == "passcode"


def test_user_not_enrolled_in_duo_gets_the_enrollment_url(duo: Duo, nas: UdpNas) -> None:
    url = "https://localhost/portal?code=0123456789abcdef&akey=DAKEY"
    duo.fake.add_user("nina", preauth="enroll", enroll_portal_url=url)
    reply = login(nas, SECRET, "nina", password("nina"))
    assert reply.rejected
    assert url in reply.message
    assert duo.fake.auth_calls("nina") == 0
    duo.daemon.wait_audit(login_name="nina", mfa_result="duo_enroll")


def test_failmode_secure_rejects_when_duo_is_down(tmp_path: Path) -> None:
    with FakeDuo() as fake, duo_daemon(tmp_path, fake) as daemon:
        fake.add_user("otis")
        nas = UdpNas(daemon.port)
        try:
            up = login(nas, SECRET, "otis", password("otis"))
            assert up.challenged  # Duo answers preauth
            fake.stop()
            down = login(nas, SECRET, "otis", password("otis"))
            assert down.rejected and "cannot be checked right now" in down.message
            daemon.wait_audit(
                login_name="otis", reason="duo_unavailable", mfa_result="duo_unreachable"
            )
            # Already in a challenge when Duo goes away: the push cannot be sent.
            late = answer(nas, up, "otis", "push")
            assert late.rejected
        finally:
            nas.close()
