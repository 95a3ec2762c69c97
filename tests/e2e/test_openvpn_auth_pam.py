"""End to end: OpenVPN's auth-pam plugin with pam_radius_auth (Debian
libpam-radius-auth 2.0), a real OpenVPN server and client, and mfaproxy in challenge
mode. The client's password is the static-challenge encoding (SCRV1); auth-pam splits
it and answers PAM's questions by the first word of each: pam_radius_auth asks with
mfaproxy's challenge Reply-Message, so the `openvpn` prompt profile (first prompt
starting with OTP) logs in, and the default wording does not (README: Prompt profiles)."""

from __future__ import annotations

import base64
from pathlib import Path

import pyotp
import pytest

from tests.e2e.methods_common import SECRET, daemon_config, open_store, password
from tests.support.daemon import Daemon
from tests.support.openvpn import OpenVpnServer, PamRadiusService, free_short_udp_port, pam_unusable

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(pam_unusable() is not None, reason=str(pam_unusable())),
]


def scrv1(secret: str, response: str) -> str:
    """What an OpenVPN client with `static-challenge "OTP" 1` sends as its password (the
    client would ask the response at a terminal; the file here carries the same bytes)."""
    parts = (base64.b64encode(text.encode()).decode() for text in (secret, response))
    return "SCRV1:" + ":".join(parts)


def login(tmp: Path, prompts: str, code: str | None = None) -> tuple[Daemon, str]:
    """Log alice in through auth-pam; returns the daemon and how the client ended.
    `code`: what she types as the static-challenge response (default: the right one)."""
    auth_port = free_short_udp_port()
    config = daemon_config(tmp, {"alice": {}}, {"enabled": ["totp"], "default": "totp"})
    config["clients"] = [
        {
            "name": "openvpn",
            "address": ["127.0.0.1"],
            "secret": SECRET,
            "require_message_authenticator": False,  # pam_radius_auth 2.0 cannot sign
            "prompts": prompts,
        }
    ]
    config["server"] = {"listen": [f"127.0.0.1:{auth_port}"]}
    daemon = Daemon(tmp, config)
    store = open_store(daemon)
    key = pyotp.random_base32()
    store.set_totp_secret("alice", key, 0)
    store.set_method("alice", "totp", 0)
    store.close()
    response = code if code is not None else pyotp.TOTP(key).now()
    workdir = tmp / "openvpn"
    workdir.mkdir()
    with (
        daemon,
        PamRadiusService(workdir, auth_port, SECRET) as pam,
        OpenVpnServer(workdir, auth_port, free_short_udp_port(), SECRET, pam.name) as server,
    ):
        client = server.client("alice", scrv1(password("alice"), response))
        try:
            client.wait_for("Initialization Sequence Completed" if code is None else "AUTH_FAILED")
            last = "connected" if code is None else "refused"
            daemon.wait_audit(user="alice", outcome="accept" if code is None else "challenge")
        finally:
            client.stop()
    return daemon, last


def test_the_openvpn_profile_logs_in_with_the_static_challenge_response(tmp_path: Path) -> None:
    daemon, last = login(tmp_path, "openvpn")
    assert last == "connected"
    decisions = [e for e in daemon.events if e.get("event") == "auth_decision"]
    assert [d["outcome"] for d in decisions] == ["challenge", "accept"]
    assert decisions[-1]["reason"] == "mfa_code_ok"


def test_the_default_wording_is_not_answered_by_auth_pam(tmp_path: Path) -> None:
    daemon, last = login(tmp_path, "default", code=pyotp.TOTP(pyotp.random_base32()).now())
    assert last == "refused"
    decisions = [e for e in daemon.events if e.get("event") == "auth_decision"]
    assert [d["outcome"] for d in decisions] == ["challenge"]  # never answered


def test_a_wrong_code_is_counted_once(tmp_path: Path) -> None:
    daemon, last = login(tmp_path, "openvpn", code="000000")
    assert last == "refused"
    store = open_store(daemon)
    record = store.get_user("alice")
    store.close()
    # The retry prompt does not start with OTP: auth-pam does not send 000000 again.
    assert record is not None and record.failures == 1
