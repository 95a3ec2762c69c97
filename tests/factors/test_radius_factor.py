"""The `radius` second-factor method against a real FreeRADIUS acting as the OTP server.

The FreeRADIUS users file plays the OTP server: a user's password is their one-time
code. Short client timeouts only bound how long the unreachable cases wait; nothing
asserts on time.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mfaproxy.adapters.radius_client import RadiusReply, RadiusServer
from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.factors import radius as radius_method
from mfaproxy.factors.base import (
    Factor,
    FactorRequest,
    FactorServices,
    FactorUser,
    Verdict,
)
from mfaproxy.factors.registry import builder
from mfaproxy.observability.metrics import REGISTRY
from mfaproxy.radius.codec import load_dictionary
from mfaproxy.radius.constants import ACCESS_CHALLENGE
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.state import MemoryStateStore
from mfaproxy.store.users import UserStore
from tests.support.freeradius import Challenge, FreeRadiusServer, UserSpec
from tests.support.ports import free_udp_port

DICTIONARY = load_dictionary()
SECRET = "otp-secret"
NAS_ID = "mfaproxy-otp"
UPSTREAM_STATE = b"upstream-state-\x00\xff"
NEXT_PROMPT = "Enter the next token code"

USERS = {
    "alice": UserSpec("111111"),
    "carol": UserSpec(
        "222222", challenge=Challenge("333333", prompt=NEXT_PROMPT, state=UPSTREAM_STATE)
    ),
    "dave": UserSpec("444444", checks={"NAS-Identifier": NAS_ID}),
}


@pytest.fixture(scope="module")
def freeradius() -> Iterator[FreeRadiusServer]:
    with FreeRadiusServer(USERS, secret=SECRET) as server:
        yield server


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[FactorServices]:
    key = secrets.token_bytes(32)
    users = AsyncUserStore(UserStore(tmp_path / "users.sqlite", key))
    state = MemoryStateStore()
    yield FactorServices(users=users, state=state, mail=None, dictionary=DICTIONARY, master_key=key)
    await users.close()
    await state.close()


def server(fr: FreeRadiusServer) -> dict[str, Any]:
    return {"host": fr.host, "port": fr.port, "secret": fr.secret}


def dead() -> dict[str, Any]:
    # Nothing listens there: no reply ever comes (ICMP errors are not answers).
    return {"host": "127.0.0.1", "port": free_udp_port(), "secret": SECRET}


def make(services: FactorServices, primary: dict[str, Any], **options: Any) -> Factor:
    settings: dict[str, Any] = {"server": primary, "timeout": 2.0, "retries": 0, **options}
    config = MultifactorConfig.model_validate(
        {"enabled": ["radius"], "default": "radius", "radius": settings}
    )
    return radius_method.build(config, services)


def request(login_name: str) -> FactorRequest:
    user = FactorUser(name=login_name.lower(), login_name=login_name)
    return FactorRequest(user=user, client="vpn", client_ip=None, now=1_700_000_000.0)


def up(server: dict[str, Any]) -> float | None:
    return REGISTRY.get_sample_value(
        "mfaproxy_upstream_up",
        {"service": "otp_radius", "server": f"{server['host']}:{server['port']}"},
    )


# --------------------------------------------------------------------------- interface


async def test_interface_and_begin_without_network(services: FactorServices) -> None:
    config = MultifactorConfig.model_validate(
        {"enabled": ["radius"], "default": "radius", "radius": {"server": dead()}}
    )
    factor = builder("radius")(config, services)
    assert isinstance(factor, radius_method.RadiusFactor)
    assert (factor.name, factor.code_length, factor.keywords) == ("radius", None, frozenset())
    user = request("alice").user
    assert factor.is_enrolled(user) and not factor.can_enrol_inline(user)
    # The upstream is a dead port: begin must not wait on it.
    result = await factor.begin(request("alice"))
    assert result.verdict is Verdict.CHALLENGE
    assert result.prompt == "Enter your one-time code" and dict(result.pending) == {}
    enrol = await factor.begin_enrolment(request("alice"))
    assert enrol.verdict is Verdict.REJECT and not enrol.counts_as_failure
    await factor.close()


async def test_client_settings_come_from_the_config(
    services: FactorServices, freeradius: FreeRadiusServer
) -> None:
    primary, failover = dead(), server(freeradius)
    factor = make(services, primary, failover=failover, require_message_authenticator=False)
    assert isinstance(factor, radius_method.RadiusFactor)
    assert factor.client.servers == (
        RadiusServer(primary["host"], primary["port"], SECRET.encode()),
        RadiusServer(freeradius.host, freeradius.port, SECRET.encode()),
    )


def test_host_name_is_refused(services: FactorServices) -> None:
    # Refused by the schema, so check-config reports it with its dotted path.
    with pytest.raises(ValueError, match=r"radius\.server\.host"):
        make(services, {"host": "otp.example.com", "secret": SECRET})


# --------------------------------------------------------------------------- real server


async def test_right_code_accepts(services: FactorServices, freeradius: FreeRadiusServer) -> None:
    factor = make(services, server(freeradius))
    result = await factor.check(request("alice"), "111111", {})
    assert result.verdict is Verdict.ACCEPT and result.reason == "otp_ok"
    assert up(server(freeradius)) == 1


async def test_wrong_code_rejects(services: FactorServices, freeradius: FreeRadiusServer) -> None:
    factor = make(services, server(freeradius))
    result = await factor.check(request("alice"), "999999", {})
    assert result.verdict is Verdict.REJECT and result.reason == "bad_code"
    assert result.counts_as_failure


async def test_upstream_challenge_is_relayed_with_its_state(
    services: FactorServices, freeradius: FreeRadiusServer
) -> None:
    factor = make(services, server(freeradius))
    first = await factor.check(request("carol"), "222222", {})
    assert first.verdict is Verdict.CHALLENGE
    assert first.prompt == NEXT_PROMPT
    assert first.pending["upstream_state"] == UPSTREAM_STATE.hex()
    # The engine may keep pending in a shared (JSON) store between the two rounds.
    pending = json.loads(json.dumps(first.pending))
    second = await factor.check(request("carol"), "333333", pending)
    assert second.verdict is Verdict.ACCEPT and second.reason == "otp_ok"


async def test_challenge_answer_without_the_state_is_not_accepted(
    services: FactorServices, freeradius: FreeRadiusServer
) -> None:
    """Without the relayed State the upstream sees a fresh login, not the answer to its
    challenge: it never accepts (this FreeRADIUS users file challenges again)."""
    factor = make(services, server(freeradius))
    result = await factor.check(request("carol"), "333333", {})
    assert result.verdict is not Verdict.ACCEPT


async def test_wrong_answer_to_the_upstream_challenge(
    services: FactorServices, freeradius: FreeRadiusServer
) -> None:
    factor = make(services, server(freeradius))
    first = await factor.check(request("carol"), "222222", {})
    second = await factor.check(request("carol"), "000000", first.pending)
    assert second.verdict is Verdict.REJECT and second.reason == "bad_code"


async def test_endless_upstream_challenges_are_cut_off(
    services: FactorServices, freeradius: FreeRadiusServer
) -> None:
    factor = make(services, server(freeradius))
    pending = {"upstream_rounds": radius_method.MAX_ROUNDS - 1}
    result = await factor.check(request("carol"), "222222", pending)
    assert result.verdict is Verdict.REJECT and result.reason == "too_many_rounds"


@pytest.mark.parametrize("login_name", ["CORP\\alice", "alice@example.com", "CORP\\alice@ex.org"])
async def test_strip_domain_sends_the_bare_name(
    services: FactorServices, freeradius: FreeRadiusServer, login_name: str
) -> None:
    stripped = make(services, server(freeradius), strip_domain=True)
    assert (await stripped.check(request(login_name), "111111", {})).verdict is Verdict.ACCEPT
    # Control: the upstream only knows the bare name.
    as_typed = make(services, server(freeradius))
    assert (await as_typed.check(request(login_name), "111111", {})).verdict is Verdict.REJECT


async def test_nas_identifier_is_sent(
    services: FactorServices, freeradius: FreeRadiusServer
) -> None:
    with_id = make(services, server(freeradius), nas_identifier=NAS_ID)
    assert (await with_id.check(request("dave"), "444444", {})).verdict is Verdict.ACCEPT
    # Control: the users file entry needs the NAS-Identifier.
    without = make(services, server(freeradius))
    assert (await without.check(request("dave"), "444444", {})).verdict is Verdict.REJECT


async def test_failover_server_answers(
    services: FactorServices, freeradius: FreeRadiusServer
) -> None:
    primary = dead()
    factor = make(services, primary, failover=server(freeradius), timeout=0.2)
    result = await factor.check(request("alice"), "111111", {})
    assert result.verdict is Verdict.ACCEPT
    assert up(primary) == 0 and up(server(freeradius)) == 1


async def test_all_servers_down_is_unavailable_and_logs_no_code(
    services: FactorServices,
) -> None:
    primary, failover = dead(), dead()
    factor = make(services, primary, failover=failover, timeout=0.1)
    with capture_logs() as logs:
        result = await factor.check(request("alice"), "987654", {})
    assert result.verdict is Verdict.UNAVAILABLE and result.reason == "unreachable"
    assert not result.counts_as_failure
    assert up(primary) == 0 and up(failover) == 0
    assert logs and "987654" not in repr(logs)


async def test_an_otp_server_that_does_not_sign_is_named_as_such(
    services: FactorServices,
) -> None:
    # FreeRADIUS before 3.2.5 (Debian 12's 3.2.1) as the OTP server: the log says the
    # replies are unsigned and names this method's setting, not the directory's.
    with FreeRadiusServer(USERS, secret=SECRET, sign_replies=False) as unsigned:
        factor = make(services, server(unsigned), timeout=1.0)
        with capture_logs() as logs:
            result = await factor.check(request("alice"), "111111", {})
        assert result.verdict is Verdict.UNAVAILABLE and not result.counts_as_failure
        assert result.reason == "upstream_unsigned"  # the audit's mfa_result says so
        events = [e for e in logs if e["event"] == "radius_reply_unsigned"]
        assert events and events[0]["server"] == f"{unsigned.host}:{unsigned.port}"
        assert "multifactor.radius.require_message_authenticator: false" in events[0]["fix"]
        assert not any(e.get("reason") == "verification_failed" for e in logs)
        assert "111111" not in repr(logs)
        relaxed = make(services, server(unsigned), require_message_authenticator=False)
        accepted = await relaxed.check(request("alice"), "111111", {})
        assert accepted.verdict is Verdict.ACCEPT
        await factor.close()
        await relaxed.close()


# --------------------------------------------------------------------------- no network


async def test_code_too_long_for_user_password(services: FactorServices) -> None:
    factor = make(services, dead())
    result = await factor.check(request("alice"), "1" * 129, {})
    assert result.verdict is Verdict.REJECT and result.reason == "malformed_code"


async def test_corrupt_pending_state_fails_closed(services: FactorServices) -> None:
    factor = make(services, dead())
    result = await factor.check(request("carol"), "333333", {"upstream_state": "not hex"})
    assert result.verdict is Verdict.REJECT and not result.counts_as_failure


@pytest.mark.parametrize(
    ("login_name", "expected"),
    [
        ("alice", "alice"),
        ("CORP\\alice", "alice"),
        ("alice@example.com", "alice"),
        ("CORP\\alice@example.com", "alice"),
        ("first@last@example.com", "first@last"),
        ("@example.com", "@example.com"),
    ],
)
def test_strip_domain(login_name: str, expected: str) -> None:
    assert radius_method.strip_domain(login_name) == expected


def challenge_reply(*messages: str | bytes) -> RadiusReply:
    attributes = {"Reply-Message": messages} if messages else {}
    return RadiusReply(ACCESS_CHALLENGE, attributes, RadiusServer("127.0.0.1", 1812, b"s"))


def test_upstream_prompt() -> None:
    assert radius_method.upstream_prompt(challenge_reply()) == "Enter the next code"
    # RFC 2865 5.18: several Reply-Messages are one text, in order.
    assert radius_method.upstream_prompt(challenge_reply("Enter ", "new PIN")) == "Enter new PIN"
    assert radius_method.upstream_prompt(challenge_reply("a\x1b[2Jb\r")) == "a [2Jb"
    # Made fit by the one Reply-Message rule: ASCII, one line, one attribute.
    long = radius_method.upstream_prompt(challenge_reply("é" * 300))
    assert long == "?" * 250 + "..."
