"""End to end: trusted reconnects through the real daemon. A user passes TOTP from a
station; the reconnect from that station skips the second factor (audited as
mfa_trusted_reconnect, metered); another station is challenged; `mfaproxy users
forget-trust`, run as the operator would from another process, ends it at once."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pyotp
import pytest

from tests.e2e.methods_common import SECRET, answer, daemon_config, open_store, password
from tests.support.daemon import REPO, Daemon
from tests.support.nas import UdpNas, access_request, exchange
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

HOME, CAFE = "198.51.100.7", "203.0.113.9"


def test_a_trusted_reconnect_skips_the_code_until_the_operator_forgets_it(tmp_path: Path) -> None:
    metrics_port = free_port()
    config = daemon_config(
        tmp_path,
        {"alice": {}},
        {"enabled": ["totp"], "default": "totp"},
        server={"metrics": {"listen": f"127.0.0.1:{metrics_port}"}},
        password_throttle={"enabled": False},
    )
    config["access_policies"]["mfa"]["policies"] = [
        {
            "name": "reconnects",
            "rules": [
                {"type": "trusted_reconnect", "minutes": 60},
                {"type": "clients", "clients": ["vpn"]},
            ],
            "action_when_matched": "mfa_skipped",
        }
    ]
    daemon = Daemon(tmp_path, config)
    store = open_store(daemon)
    key = pyotp.random_base32()
    store.set_totp_secret("alice", key, 0)
    store.set_method("alice", "totp", 0)
    store.close()

    def first(nas: UdpNas, station: str) -> tuple[int, str]:
        request = access_request(SECRET, "alice", password("alice"), Calling_Station_Id=station)
        reply = exchange(nas, SECRET, request)
        return reply.code, reply.message

    with daemon:
        nas = UdpNas(daemon.port)
        try:
            challenge = exchange(
                nas,
                SECRET,
                access_request(SECRET, "alice", password("alice"), Calling_Station_Id=HOME),
            )
            assert answer(
                nas, challenge, "alice", pyotp.TOTP(key).now(), Calling_Station_Id=HOME
            ).accepted
            assert first(nas, HOME)[0] == 2  # Access-Accept, no challenge
            assert first(nas, CAFE)[0] == 11  # another station: Access-Challenge
            forget = subprocess.run(
                [sys.executable, "-m", "mfaproxy", "users", "forget-trust", "alice",
                 "--config", str(daemon.config_path)],
                capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
            )  # fmt: skip
            assert forget.returncode == 0, forget.stderr
            assert "trusted reconnects ended" in forget.stdout
            assert first(nas, HOME)[0] == 11  # asked again, on the next login already
        finally:
            nas.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
            metrics = page.read().decode()
    trusted = daemon.audit(user="alice", reason="mfa_trusted_reconnect")
    assert len(trusted) == 1 and trusted[0]["calling_station_id"] == HOME
    assert 'mfaproxy_trusted_reconnects_total{result="trusted"} 1.0' in metrics
    assert 'mfaproxy_trusted_reconnects_total{result="recorded"} 1.0' in metrics
