"""End to end with a NAS nobody on the project wrote: OpenVPN's radiusplugin (Debian
openvpn-auth-radius 2.1) in a real OpenVPN server, a real OpenVPN client logging in,
and mfaproxy alone answering authentication (password and TOTP appended, since
radiusplugin cannot show a challenge nor sign its requests) and accounting (Start,
Interim-Update every Acct-Interim-Interval seconds, Stop when the client leaves)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.e2e.methods_common import SECRET, daemon_config, open_store, password
from tests.support.daemon import Daemon, LogEvent
from tests.support.openvpn import OpenVpnServer, free_short_udp_port, unusable

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(unusable() is not None, reason=str(unusable())),
]


def wait_record(daemon: Daemon, status: str, timeout: float = 30, **fields: Any) -> LogEvent:
    return daemon.wait_for(
        lambda e: (
            e.get("event") == "accounting_record"
            and e.get("status_type") == status
            and all(e.get(k) == v for k, v in fields.items())
        ),
        timeout,
    )


def openvpn_daemon(tmp: Path, auth_port: int, acct_port: int, **client: Any) -> tuple[Daemon, str]:
    config = daemon_config(tmp, {"alice": {}}, {"enabled": ["totp"], "default": "totp"})
    config["clients"] = [
        {
            "name": "openvpn",
            "address": ["127.0.0.1"],
            "secret": SECRET,
            "require_message_authenticator": False,  # radiusplugin cannot sign
            "second_factor": "append",  # nor show a challenge: password,123456
            **client,
        }
    ]
    config["server"] = {
        "listen": [f"127.0.0.1:{auth_port}"],
        "accounting": {"listen": [f"127.0.0.1:{acct_port}"]},
    }
    config["replies"] = {"attributes": {"Acct-Interim-Interval": 2}}
    daemon = Daemon(tmp, config)
    store = open_store(daemon)
    key = pyotp.random_base32()
    store.set_totp_secret("alice", key, 0)
    store.set_method("alice", "totp", 0)
    store.close()
    return daemon, key


def test_radiusplugin_logs_in_with_totp_and_is_accounted_start_interim_stop(
    tmp_path: Path,
) -> None:
    auth_port, acct_port = free_short_udp_port(), free_short_udp_port()
    daemon, key = openvpn_daemon(tmp_path, auth_port, acct_port)
    with daemon, OpenVpnServer(tmp_path / "openvpn", auth_port, acct_port, SECRET) as server:
        client = server.client("alice", f"{password('alice')},{pyotp.TOTP(key).now()}")
        try:
            client.wait_for("Initialization Sequence Completed")
            decision = daemon.wait_audit(user="alice", outcome="accept")
            start = wait_record(daemon, "start")
            session = start["session_id"]
            interim = wait_record(daemon, "interim_update", session_id=session)
        finally:
            client.stop()
        stop = wait_record(daemon, "stop", session_id=session)
    assert (decision["client"], decision["method"]) == ("openvpn", "totp")
    for record in (start, interim, stop):
        assert record["user"] == "alice" and record["client"] == "openvpn"
        assert record["outcome"] == "recorded"
        assert record["nas_identifier"] == "openvpn-test"
        assert record["framed_ip_address"] == "10.201.0.10"  # the address it gave the client
    assert interim["input_octets"] > 0 and interim["output_octets"] > 0  # from its status file
    assert stop["session_time"] >= interim["session_time"]
    assert stop["input_octets"] >= interim["input_octets"]
    assert not [e for e in daemon.events if e.get("event") == "packet_dropped"]


def test_radiusplugin_with_a_wrong_code_is_refused(tmp_path: Path) -> None:
    auth_port, acct_port = free_short_udp_port(), free_short_udp_port()
    daemon, key = openvpn_daemon(tmp_path, auth_port, acct_port)
    wrong = f"{(int(pyotp.TOTP(key).now()) + 1) % 1_000_000:06d}"
    with daemon, OpenVpnServer(tmp_path / "openvpn", auth_port, acct_port, SECRET) as server:
        client = server.client("alice", f"{password('alice')},{wrong}")
        try:
            client.wait_for("AUTH_FAILED")
        finally:
            client.stop()
        daemon.wait_audit(user="alice", outcome="reject")
    assert not [e for e in daemon.events if e.get("event") == "accounting_record"]


def scrv1(secret: str, response: str) -> str:
    """What an OpenVPN client with `static-challenge` sends as its password (OpenVPN
    management-notes.txt), and radiusplugin passes on as User-Password unchanged."""
    parts = (base64.b64encode(text.encode()).decode() for text in (secret, response))
    return "SCRV1:" + ":".join(parts)


def test_radiusplugin_with_openvpns_static_challenge_logs_in(tmp_path: Path) -> None:
    """The client's password is the static-challenge encoding (the bytes an OpenVPN
    client with `static-challenge "OTP" 1` puts on the wire; written into its
    auth-user-pass file here, since a static challenge is otherwise typed at a
    terminal); mfaproxy reads it with append_format scrv1."""
    auth_port, acct_port = free_short_udp_port(), free_short_udp_port()
    daemon, key = openvpn_daemon(tmp_path, auth_port, acct_port, append_format="scrv1")
    with daemon, OpenVpnServer(tmp_path / "openvpn", auth_port, acct_port, SECRET) as server:
        client = server.client("alice", scrv1(password("alice"), pyotp.TOTP(key).now()))
        try:
            client.wait_for("Initialization Sequence Completed")
            decision = daemon.wait_audit(user="alice", outcome="accept")
        finally:
            client.stop()
    assert (decision["client"], decision["reason"]) == ("openvpn", "mfa_code_ok")
