"""End to end: per-NAS prompt profiles through the real daemon. A one-line portal
(profile `short`) gets every prompt on one line of at most 80 characters and its
keywords still work; a NAS with its own templates and max_prompt gets exactly them."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest

from mfaproxy.otp.backup_codes import generate_codes
from tests.e2e.methods_common import SECRET, answer, daemon_config, open_store, password
from tests.support.daemon import Daemon
from tests.support.nas import UdpNas, access_request, exchange

pytestmark = pytest.mark.e2e

PORTAL = "127.0.0.4"
OWN = "127.0.0.5"


def test_a_one_line_portal_and_a_nas_with_its_own_wording(tmp_path: Path) -> None:
    config = daemon_config(
        tmp_path,
        {"alice": {}},
        {"enabled": ["totp"], "default": "totp", "alternate": ["backup_codes"]},
        prompt_profiles={
            "kiosk": {
                "base": "short",
                "templates": {"totp": "PIN{options}", "totp_enrol": "Key {key}, then its code"},
            }
        },
    )
    config["clients"] += [
        {"name": "portal", "address": [PORTAL], "secret": SECRET, "prompts": "short"},
        {"name": "kiosk", "address": [OWN], "secret": SECRET, "prompts": "kiosk", "max_prompt": 64},
    ]
    daemon = Daemon(tmp_path, config)
    store = open_store(daemon)
    key = pyotp.random_base32()
    store.set_totp_secret("alice", key, 0)
    store.set_method("alice", "totp", 0)
    codes = generate_codes(2)
    store.replace_backup_codes("alice", codes, 0)
    store.close()
    with daemon:
        portal = UdpNas(daemon.port, source=PORTAL)
        try:
            first = exchange(portal, SECRET, access_request(SECRET, "alice", password("alice")))
            assert first.challenged
            assert first.message == "Authenticator code (or backup, reset)"
            asked = answer(portal, first, "alice", "backup")
            assert (asked.challenged, asked.message) == (True, "Backup code")
            done = answer(portal, asked, "alice", codes[0])
            assert done.accepted
        finally:
            portal.close()
        kiosk = UdpNas(daemon.port, source=OWN)
        try:
            first = exchange(kiosk, SECRET, access_request(SECRET, "alice", password("alice")))
            assert first.message == "PIN (or backup, reset)"
            retry = answer(kiosk, first, "alice", "000000")
            assert retry.message == "Wrong code. PIN (or backup, reset)"
            assert answer(kiosk, retry, "alice", pyotp.TOTP(key).now()).accepted
        finally:
            kiosk.close()
    decisions = daemon.audit(user="alice", outcome="accept")
    assert {d["client"] for d in decisions} == {"portal", "kiosk"}
