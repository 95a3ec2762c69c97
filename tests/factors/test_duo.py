"""The Duo method with the real duo_client against a local fake of Duo's Auth API.

The fake (tests/support/duo_fake.py) serves HTTPS with its own CA and checks every
request signature, so these tests also prove that the factor signs and verifies TLS
the way Duo expects. Held pushes are synchronised with threading.Events, never sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import duo_client.client
import pytest
from structlog.testing import capture_logs

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.factors.base import (
    Factor,
    FactorRequest,
    FactorResult,
    FactorServices,
    FactorUser,
    Verdict,
)
from mfaproxy.factors.duo import DuoFactor
from mfaproxy.factors.duo_api import split_hostname
from mfaproxy.factors.registry import builder
from mfaproxy.observability.metrics import REGISTRY
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.state import MemoryStateStore
from mfaproxy.store.users import UserStore
from tests.support.duo_fake import FakeDevice, FakeDuo, canonical_request, signature

Make = Callable[..., Factor]
TOKEN = FakeDevice(device="DHEKH0JJIYC1LX3AZWO4", capabilities=[], type="token", number="")
PUSH_ONLY = FakeDevice(device="DPUSHONLY0000000000", capabilities=["auto", "push"])
PUSH_PENDING = {"devices": [{"device": PUSH_ONLY.device, "capabilities": ["push"]}]}


@pytest.fixture
def duo() -> Iterator[FakeDuo]:
    with FakeDuo() as fake:
        yield fake


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[FactorServices]:
    key = secrets.token_bytes(32)
    users = AsyncUserStore(UserStore(tmp_path / "users.sqlite", key))
    state = MemoryStateStore()
    yield FactorServices(users=users, state=state, mail=None, dictionary=None, master_key=key)
    await users.close()
    await state.close()


@pytest.fixture
async def make(duo: FakeDuo, services: FactorServices) -> AsyncIterator[Make]:
    built: list[Factor] = []

    def factory(request_timeout: float | None = None, **options: Any) -> Factor:
        settings: dict[str, Any] = {
            "integration_key": duo.ikey,
            "secret_key": duo.skey,
            "api_hostname": duo.api_hostname,
            "ca_file": str(duo.ca_file),
            **options,
        }
        config = MultifactorConfig.model_validate(
            {"enabled": ["duo"], "default": "duo", "duo": settings}
        )
        factor: Factor
        if request_timeout is not None and config.duo is not None:
            factor = DuoFactor(config.duo, services.state, request_timeout=request_timeout)
        else:
            factor = builder("duo")(config, services)
        built.append(factor)
        return factor

    yield factory
    for factor in built:
        await factor.close()


def request(user: str = "alice", client_ip: str | None = None) -> FactorRequest:
    return FactorRequest(
        user=FactorUser(name=user, login_name=user),
        client="vpn",
        client_ip=client_ip,
        now=time.time(),
    )


async def challenge(factor: Factor, user: str = "alice") -> FactorResult:
    result = await factor.begin(request(user))
    assert result.verdict is Verdict.CHALLENGE, result
    return result


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------ interface


async def test_builds_from_the_registry(make: Make) -> None:
    factor = make()
    assert isinstance(factor, DuoFactor)
    assert (factor.name, factor.code_length) == ("duo", None)
    assert factor.keywords == frozenset({"push", "phone", "sms"})
    user = FactorUser(name="alice", login_name="alice")
    assert factor.is_enrolled(user)
    assert not factor.can_enrol_inline(user)


def test_hostname_may_carry_a_port() -> None:
    assert split_hostname("api-x.duosecurity.com") == ("api-x.duosecurity.com", None)
    assert split_hostname("localhost:8443") == ("localhost", 8443)


def test_fake_signs_like_duo_client() -> None:
    """The fake's own canonical form agrees with duo_client's (v5, GET and POST)."""
    date = "Tue, 21 Aug 2012 17:29:18 -0000"
    params = {"username": ["al ice+~\u00e9"], "ipaddr": ["10.0.0.1"]}
    body = b'{"username":"alice"}'
    ours = canonical_request(date, "GET", "Host.Example", "/auth/v2/preauth", params, b"", {})
    theirs = duo_client.client.canonicalize(
        "GET", "Host.Example", "/auth/v2/preauth", params, date, 5, body=""
    )
    assert ours == theirs.encode()
    ours = canonical_request(date, "POST", "h", "/auth/v2/auth", {}, body, {"X-Duo-A": "1"})
    theirs = duo_client.client.canonicalize(
        "POST", "h", "/auth/v2/auth", {}, date, 5, body.decode(), {"X-Duo-A": "1"}
    )
    assert ours == theirs.encode()
    header = duo_client.client.sign("ik", "sk", "GET", "h", "/p", date, 5, {}, body="")
    ours_sig = signature("sk", canonical_request(date, "GET", "h", "/p", {}, b"", {}))
    assert header == "Basic " + base64.b64encode(f"ik:{ours_sig}".encode()).decode()


# -------------------------------------------------------------------- preauth


async def test_preauth_allow_is_a_bypass(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", preauth="allow")
    result = await make().begin(request())
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, "duo_bypass")
    assert duo.auth_calls("alice") == 0


async def test_preauth_deny_shows_duo_message(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", preauth="deny", status_msg="Your account is disabled")
    result = await make().begin(request())
    assert (result.verdict, result.reason) == (Verdict.REJECT, "duo_denied")
    assert result.prompt == "Your account is disabled"
    assert result.counts_as_failure


async def test_preauth_enroll_gives_the_portal_url(duo: FakeDuo, make: Make) -> None:
    url = "https://localhost/portal?code=abc123&akey=DAKEY"
    duo.add_user("alice", preauth="enroll", enroll_portal_url=url)
    result = await make().begin(request())
    assert (result.verdict, result.reason) == (Verdict.REJECT, "duo_enroll")
    assert result.prompt is not None and url in result.prompt
    assert not result.counts_as_failure


async def test_unknown_user_must_enroll(duo: FakeDuo, make: Make) -> None:
    result = await make().begin(request("nobody"))
    assert (result.verdict, result.reason) == (Verdict.REJECT, "duo_enroll")


@pytest.mark.parametrize(
    ("devices", "prompt"),
    [
        ([FakeDevice()], "Duo: type push, phone, sms, or a passcode"),
        ([PUSH_ONLY], "Duo: type push, or a passcode"),
        ([TOKEN], "Enter a Duo passcode"),
        ([], "Enter a Duo passcode"),
    ],
)
async def test_menu_offers_what_devices_can_do(
    duo: FakeDuo, make: Make, devices: list[FakeDevice], prompt: str
) -> None:
    duo.add_user("alice", devices=devices)
    result = await challenge(make())
    assert result.prompt == prompt
    assert len(result.prompt.encode("ascii")) < 253
    assert [d["device"] for d in result.pending["devices"]] == [d.device for d in devices]


async def test_calling_station_id_is_sent_as_ipaddr(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice")
    factor = make()
    first = await factor.begin(request(client_ip="203.0.113.7"))
    await factor.check(request(client_ip="203.0.113.7"), "push", first.pending)
    assert duo.calls_to("/auth/v2/preauth")[-1].params["ipaddr"] == "203.0.113.7"
    assert duo.calls_to("/auth/v2/auth")[-1].params["ipaddr"] == "203.0.113.7"


async def test_a_calling_station_id_that_is_no_address_is_left_out(
    duo: FakeDuo, make: Make
) -> None:
    duo.add_user("alice")
    await make().begin(request(client_ip="00-11-22-33-44-55"))
    assert "ipaddr" not in duo.calls_to("/auth/v2/preauth")[-1].params


# ------------------------------------------------------------------------ push


@pytest.mark.parametrize(
    ("outcome", "verdict", "reason"),
    [
        ("approve", Verdict.ACCEPT, "push_approved"),
        ("deny", Verdict.REJECT, "push_denied"),
        ("fraud", Verdict.REJECT, "fraud"),
    ],
)
async def test_push_outcomes(
    duo: FakeDuo, make: Make, outcome: str, verdict: Verdict, reason: str
) -> None:
    duo.add_user("alice", push=outcome)
    factor = make()
    pending = (await challenge(factor)).pending
    result = await factor.check(request(), "push", pending)
    assert (result.verdict, result.reason) == (verdict, reason)
    (call,) = duo.calls_to("/auth/v2/auth", "alice")
    assert call.params["factor"] == "push"
    assert call.params["device"] == "auto"
    assert call.params["async"] == "1"


async def test_duo_side_timeout_counts_as_a_failure(duo: FakeDuo, make: Make) -> None:
    """An ignored push is push fatigue's tool: it counts like a denial."""
    duo.add_user("alice", push="timeout")
    factor = make()
    result = await factor.check(request(), "push", (await challenge(factor)).pending)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "push_timeout")
    assert result.counts_as_failure


async def test_held_push_is_pending_then_accepted_with_one_push(duo: FakeDuo, make: Make) -> None:
    user = duo.add_user("alice", hold=True)
    factor = make()
    pending = (await challenge(factor)).pending
    task = asyncio.create_task(factor.check(request(), "push", pending))
    assert await asyncio.to_thread(user.push_sent.wait, 10)
    assert not task.done()  # the answer waits on the user's phone
    assert duo.auth_calls("alice") == 1
    user.release.set()
    result = await task
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, "push_approved")
    assert duo.auth_calls("alice") == 1
    assert len(duo.calls_to("/auth/v2/auth_status")) >= 1


async def test_unanswered_push_times_out_without_a_second_push(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", hold=True)
    factor = make(timeout=0.3)
    result = await factor.check(request(), "push", (await challenge(factor)).pending)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "push_timeout")
    assert result.counts_as_failure
    assert duo.auth_calls("alice") == 1


async def test_empty_answer_is_push_by_default(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice")
    factor = make()
    result = await factor.check(request(), "", (await challenge(factor)).pending)
    assert result.reason == "push_approved"


async def test_empty_answer_without_push_device_asks_for_a_passcode(
    duo: FakeDuo, make: Make
) -> None:
    duo.add_user("alice", devices=[TOKEN])
    factor = make()
    result = await factor.check(request(), "", (await challenge(factor)).pending)
    assert (result.verdict, result.prompt) == (Verdict.CHALLENGE, "Enter a Duo passcode")
    assert duo.auth_calls("alice") == 0


async def test_configured_phone_factor_is_the_default(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice")
    factor = make(factor="phone")
    result = await factor.check(request(), "", (await challenge(factor)).pending)
    assert result.reason == "phone_approved"


async def test_word_the_devices_cannot_do_asks_again(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", devices=[PUSH_ONLY])
    factor = make()
    result = await factor.check(request(), "phone", (await challenge(factor)).pending)
    assert (result.verdict, result.reason) == (Verdict.CHALLENGE, "factor_unavailable")
    assert duo.auth_calls("alice") == 0


async def test_direct_push_without_begin_runs_preauth_first(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice")
    duo.add_user("bob", preauth="allow")
    factor = make(factor="push")
    result = await factor.check(request(), "push", {})
    assert result.reason == "push_approved"
    assert len(duo.calls_to("/auth/v2/preauth", "alice")) == 1
    result = await factor.check(request("bob"), "push", {})
    assert result.reason == "duo_bypass"
    assert duo.auth_calls("bob") == 0


# ------------------------------------------------------- passcode, phone, SMS


async def test_passcode_ok_then_single_use(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", passcodes={"123456"})
    factor = make()
    pending = (await challenge(factor)).pending
    result = await factor.check(request(), "123456", pending)
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, "passcode_ok")
    result = await factor.check(request(), "123456", pending)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "bad_passcode")
    assert result.counts_as_failure
    (call, _) = duo.calls_to("/auth/v2/auth", "alice")
    assert call.params["factor"] == "passcode"


async def test_malformed_answer_never_reaches_duo(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice")
    factor = make()
    result = await factor.check(request(), "psuh", (await challenge(factor)).pending)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "malformed_code")
    assert duo.auth_calls("alice") == 0


async def test_phone_call(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", phone="approve", push="deny")
    factor = make()
    result = await factor.check(request(), "PHONE", (await challenge(factor)).pending)
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, "phone_approved")
    (call,) = duo.calls_to("/auth/v2/auth", "alice")
    assert call.params["factor"] == "phone"


async def test_sms_sends_passcodes_then_asks_for_one(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice", sms_passcode="7654321")
    factor = make()
    result = await factor.check(request(), "sms", (await challenge(factor)).pending)
    assert (result.verdict, result.prompt) == (Verdict.CHALLENGE, "Enter the passcode sent by SMS")
    result = await factor.check(request(), "7654321", result.pending)
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, "passcode_ok")
    assert [c.params["factor"] for c in duo.calls_to("/auth/v2/auth")] == ["sms", "passcode"]


# -------------------------------------------------------------------- failures


def failmode_count() -> float:
    return sample("mfaproxy_second_factor_attempts_total", method="duo", result="failmode_safe")


async def test_unreachable_fails_secure(duo: FakeDuo, make: Make) -> None:
    duo.add_user("alice")
    factor = make(failmode="secure")
    pending = (await challenge(factor)).pending
    up = {"service": "duo", "server": duo.api_hostname}
    assert sample("mfaproxy_upstream_up", **up) == 1
    duo.stop()
    result = await factor.begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "duo_unreachable")
    # Once the menu was shown, the user was asked: a failure is a plain reject.
    result = await factor.check(request(), "push", pending)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "duo_error_after_prompt")
    assert sample("mfaproxy_upstream_up", **up) == 0


async def test_unreachable_fails_safe_loudly(duo: FakeDuo, make: Make) -> None:
    factor = make(failmode="safe")
    duo.stop()
    before = failmode_count()
    with capture_logs() as logs:
        result = await factor.begin(request())
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, "failmode_safe")
    assert failmode_count() == before + 1
    (event,) = [e for e in logs if e["event"] == "duo_failmode_safe"]
    assert event["log_level"] == "warning"


async def test_a_full_call_bound_is_never_failmode(duo: FakeDuo, make: Make) -> None:
    """Our own bound on concurrent preauth/auth calls: duo_busy, never failmode_safe."""
    alice = duo.add_user("alice", hold=True)
    duo.add_user("bob")
    factor = make(failmode="safe", pool_size=1, request_timeout=0.2)
    assert isinstance(factor, DuoFactor)
    # Hold the only call slot, as a slow Duo would.
    async with factor.api._slot(factor.api._calls, "test", 1):
        result = await factor.begin(request("bob"))
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "duo_busy")
    alice.release.set()
    assert (await factor.begin(request("bob"))).verdict is Verdict.CHALLENGE


@pytest.mark.parametrize("mode", ["error", "bad_json"])
async def test_server_errors_follow_failmode(duo: FakeDuo, make: Make, mode: str) -> None:
    duo.add_user("alice")
    duo.mode = mode  # type: ignore[assignment]
    assert (await make(failmode="secure").begin(request())).reason == "duo_unreachable"
    assert (await make(failmode="safe").begin(request())).reason == "failmode_safe"


async def test_untrusted_certificate_is_unreachable(duo: FakeDuo, make: Make) -> None:
    # Without ca_file, duo_client pins Duo's own CAs: the fake's certificate fails.
    duo.add_user("alice")
    result = await make(ca_file=None).begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "duo_unreachable")
    assert duo.calls == []


@pytest.mark.parametrize("wrong", ["secret_key", "integration_key"])
async def test_bad_credentials_are_misconfiguration_even_in_safe_mode(
    duo: FakeDuo, make: Make, wrong: str
) -> None:
    duo.add_user("alice")
    factor = make(failmode="safe", **{wrong: "DIWRONGWRONGWRONGWRON"})
    before = failmode_count()
    with capture_logs() as logs:
        result = await factor.begin(request())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "duo_misconfigured")
    assert duo.bad_signatures == 1
    assert duo.calls == []
    assert failmode_count() == before
    (event,) = [e for e in logs if e["event"] == "duo_misconfigured"]
    assert event["log_level"] == "error"
    assert duo.skey not in str(logs)
