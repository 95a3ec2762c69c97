"""End to end: `limit_proxy_state`, the BlastRADIUS fallback for clients that cannot sign,
through the real daemon. Three clients on three loopback addresses: one that must sign,
one unsigned with the default (limited), one unsigned with the limit turned off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import scrape
from tests.support.daemon import REPO, Daemon
from tests.support.nas import UdpNas, access_request, exchange
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

SECRET = "proxy-state-testing"
DROP_KEY = "mfaproxy_packets_dropped_total{reason=proxy_state_without_message_authenticator}"
SIGNING, LIMITED, UNLIMITED = "127.0.0.1", "127.0.0.2", "127.0.0.3"


def config(metrics_port: int) -> dict[str, Any]:
    def client(name: str, address: str, **options: Any) -> dict[str, Any]:
        return {"name": name, "address": [f"{address}/32"], "secret": SECRET, **options}

    return {
        "server": {"metrics": {"listen": f"127.0.0.1:{metrics_port}"}},
        "clients": [
            client("signing", SIGNING),
            client("limited", LIMITED, require_message_authenticator=False),
            client(
                "unlimited", UNLIMITED, require_message_authenticator=False, limit_proxy_state=False
            ),
        ],
        "directory": {"backend": "local", "local": {"users_file": str(REPO / "config/users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    metrics_port = free_port()
    tmp: Path = tmp_path_factory.mktemp("proxy-state")
    with Daemon(tmp, config(metrics_port)) as running:
        yield running, metrics_port


def send(daemon: Daemon, source: str, *, sign: bool, proxy_state: bool) -> UdpNas:
    nas = UdpNas(daemon.port, source=source)
    request = access_request(SECRET, "alice", "demo-password", sign=sign)
    if proxy_state:
        request.AddAttribute("Proxy-State", b"from-a-proxy")
    nas.send(request.RequestPacket())
    return nas


def test_unsigned_proxy_state_is_dropped_under_its_own_reason(daemon: tuple[Daemon, int]) -> None:
    running, metrics_port = daemon
    before = scrape(metrics_port).get(DROP_KEY, 0)
    nas = send(running, LIMITED, sign=False, proxy_state=True)
    nas.close()
    running.wait_for(
        lambda e: (
            e.get("event") == "packet_dropped"
            and e.get("reason") == "proxy_state_without_message_authenticator"
            and e.get("client") == "limited"
        )
    )
    assert scrape(metrics_port)[DROP_KEY] == before + 1
    assert running.audit(client="limited", login_name="alice") == []


def test_the_limited_client_still_logs_in_unsigned_without_proxy_state(
    daemon: tuple[Daemon, int],
) -> None:
    running, _ = daemon
    nas = UdpNas(running.port, source=LIMITED)
    try:
        request = access_request(SECRET, "alice", "demo-password", sign=False)
        nas.send(request.RequestPacket())
        assert nas.receive()[0] == 2  # Access-Accept
    finally:
        nas.close()


def test_a_signed_request_with_proxy_state_passes_everywhere(daemon: tuple[Daemon, int]) -> None:
    running, _ = daemon
    for source in (SIGNING, LIMITED):
        nas = UdpNas(running.port, source=source)
        try:
            request = access_request(SECRET, "alice", "demo-password")
            request.AddAttribute("Proxy-State", b"signed-proxy")
            reply = exchange(nas, SECRET, request)
        finally:
            nas.close()
        assert reply.accepted and reply.values("Proxy-State") == [b"signed-proxy"]


def test_with_the_limit_off_unsigned_proxy_state_is_served(daemon: tuple[Daemon, int]) -> None:
    running, _ = daemon
    nas = send(running, UNLIMITED, sign=False, proxy_state=True)
    try:
        assert nas.receive()[0] == 2
    finally:
        nas.close()
    running.wait_audit(client="unlimited", login_name="alice", outcome="accept")
