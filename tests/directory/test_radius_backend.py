"""The upstream-RADIUS primary backend against a real FreeRADIUS."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from mfaproxy.config.directory import RadiusDirectoryConfig
from mfaproxy.core.primary import PrimaryOutcome, ReplyAttribute
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.directory.radius import RadiusChecker
from mfaproxy.observability.metrics import REGISTRY
from mfaproxy.radius.codec import load_dictionary
from tests.support.freeradius import Challenge, FreeRadiusServer, UserSpec, rfc_dictionary
from tests.support.ports import free_udp_port

DICTIONARY = rfc_dictionary()
SECRET = "upstream-secret"
USERS = {
    "alice": UserSpec(
        "alice-pw",
        reply={"Class": b"vpn-users", "Filter-Id": "staff", "Reply-Message": "Hello alice"},
    ),
    "carol": UserSpec("carol-pw", challenge=Challenge("123456")),
    "dave": UserSpec("dave-pw", checks={"NAS-Identifier": "mfaproxy-test"}),
}


@pytest.fixture(scope="module")
def freeradius() -> Iterator[FreeRadiusServer]:
    with FreeRadiusServer(USERS, secret=SECRET) as server:
        yield server


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A bound UDP socket that never reads or answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def server(port: int, secret: str = SECRET) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "secret": secret}


def checker(servers: list[dict[str, Any]], **options: Any) -> RadiusChecker:
    options.setdefault("timeout", 2.0)
    options.setdefault("retries", 1)
    config = RadiusDirectoryConfig.model_validate({"servers": servers, **options})
    return RadiusChecker(config, DICTIONARY)


def up(port: int) -> float | None:
    labels = {"service": "radius", "server": f"127.0.0.1:{port}"}
    return REGISTRY.get_sample_value("mfaproxy_upstream_up", labels)


def latency_count(result: str) -> float:
    labels = {"service": "radius", "result": result}
    value = REGISTRY.get_sample_value("mfaproxy_upstream_duration_seconds_count", labels)
    return value or 0.0


async def test_is_a_password_checker(freeradius: FreeRadiusServer) -> None:
    backend: PasswordChecker = checker([server(freeradius.port)])
    assert backend.name == "radius"
    await backend.close()


async def test_accept_copies_only_configured_attributes(freeradius: FreeRadiusServer) -> None:
    before = latency_count("accept")
    backend = checker([server(freeradius.port)], pass_through_attributes=["Class", "Filter-Id"])
    result = await backend.authenticate("alice", "alice-pw")
    assert result.outcome is PrimaryOutcome.ACCEPT and result.accepted
    assert result.backend == "radius" and result.identity == "alice"
    assert set(result.reply_attributes) == {
        ReplyAttribute("Class", b"vpn-users"),
        ReplyAttribute("Filter-Id", "staff"),
    }
    assert up(freeradius.port) == 1
    assert latency_count("accept") == before + 1


async def test_wrong_password_is_rejected(freeradius: FreeRadiusServer) -> None:
    backend = checker([server(freeradius.port)], pass_through_attributes=["Class"])
    result = await backend.authenticate("alice", "not-her-password")
    assert result.outcome is PrimaryOutcome.REJECT
    assert result.reason == "bad_password" and result.reply_attributes == ()


async def test_unknown_user_is_rejected(freeradius: FreeRadiusServer) -> None:
    result = await checker([server(freeradius.port)]).authenticate("mallory", "anything")
    assert result.outcome is PrimaryOutcome.REJECT and result.reason == "bad_password"


async def test_upstream_challenge_is_refused(freeradius: FreeRadiusServer) -> None:
    result = await checker([server(freeradius.port)]).authenticate("carol", "carol-pw")
    assert result.outcome is PrimaryOutcome.REJECT
    assert result.reason == "upstream_challenge_unsupported"


@pytest.mark.parametrize(
    ("nas_identifier", "outcome"),
    [
        ("mfaproxy-test", PrimaryOutcome.ACCEPT),
        (None, PrimaryOutcome.REJECT),
    ],
)
async def test_nas_identifier_is_sent_when_configured(
    freeradius: FreeRadiusServer, nas_identifier: str | None, outcome: PrimaryOutcome
) -> None:
    """dave's entry needs NAS-Identifier == mfaproxy-test on the FreeRADIUS side."""
    backend = checker([server(freeradius.port)], nas_identifier=nas_identifier)
    result = await backend.authenticate("dave", "dave-pw")
    assert result.outcome is outcome


async def test_fails_over_to_the_next_server(
    freeradius: FreeRadiusServer, silent_port: int
) -> None:
    closed = free_udp_port()
    servers = [server(closed), server(silent_port), server(freeradius.port)]
    backend = checker(servers, timeout=0.1, retries=1)
    with capture_logs() as logs:
        result = await backend.authenticate("alice", "alice-pw")
    assert result.outcome is PrimaryOutcome.ACCEPT
    assert (up(closed), up(silent_port), up(freeradius.port)) == (0, 0, 1)
    # Timeouts were logged, and no log line carries the password or the secret.
    assert any(entry["event"] == "radius_server_timeout" for entry in logs)
    assert "alice-pw" not in repr(logs) and SECRET not in repr(logs)


async def test_all_servers_down_is_unavailable(silent_port: int) -> None:
    before = latency_count("unavailable")
    closed = free_udp_port()
    backend = checker([server(closed), server(silent_port)], timeout=0.1, retries=1)
    result = await backend.authenticate("alice", "alice-pw")
    assert result.outcome is PrimaryOutcome.UNAVAILABLE and result.reason == "unreachable"
    assert not result.accepted
    assert (up(closed), up(silent_port)) == (0, 0)
    assert latency_count("unavailable") == before + 1


async def test_wrong_shared_secret_is_unavailable_not_rejected(
    freeradius: FreeRadiusServer,
) -> None:
    """Replies signed with another secret fail verification: no answer, not a no."""
    backend = checker([server(freeradius.port, "wrong-secret")], timeout=0.2, retries=0)
    result = await backend.authenticate("alice", "alice-pw")
    assert result.outcome is PrimaryOutcome.UNAVAILABLE


async def test_overlong_password_is_rejected_without_asking(silent_port: int) -> None:
    result = await checker([server(silent_port)]).authenticate("alice", "x" * 129)
    assert result.outcome is PrimaryOutcome.REJECT and result.reason == "password_too_long"


def test_unknown_pass_through_attribute_is_refused() -> None:
    with pytest.raises(ValueError, match="No-Such-Attribute"):
        checker([server(1812)], pass_through_attributes=["No-Such-Attribute"])


async def test_works_with_the_shipped_dictionary(freeradius: FreeRadiusServer) -> None:
    config = RadiusDirectoryConfig.model_validate(
        {"servers": [server(freeradius.port)], "pass_through_attributes": ["Class"]}
    )
    backend = RadiusChecker(config, load_dictionary())
    result = await backend.authenticate("alice", "alice-pw")
    assert result.reply_attributes == (ReplyAttribute("Class", b"vpn-users"),)


async def test_an_unsigned_upstream_is_named_as_such() -> None:
    # FreeRADIUS before 3.2.5 (Debian 12 ships 3.2.1) and older NPS do not sign their
    # replies: the log must say exactly that, with the setting, not "verification failed".
    with FreeRadiusServer(USERS, secret=SECRET, sign_replies=False) as unsigned:
        backend = checker([server(unsigned.port)], retries=0, timeout=1.0)
        with capture_logs() as logs:
            result = await backend.authenticate("alice", "alice-pw")
        assert result.outcome is PrimaryOutcome.UNAVAILABLE
        assert result.reason == "upstream_unsigned"
        events = [e for e in logs if e["event"] == "radius_reply_unsigned"]
        assert events and events[0]["server"] == f"127.0.0.1:{unsigned.port}"
        assert "directory.radius.require_message_authenticator: false" in events[0]["fix"]
        assert "Message-Authenticator" in events[0]["detail"]
        assert not any(e.get("reason") == "verification_failed" for e in logs)
        # With the setting the warning names, the same server works.
        relaxed = checker([server(unsigned.port)], require_message_authenticator=False)
        assert (await relaxed.authenticate("alice", "alice-pw")).accepted
