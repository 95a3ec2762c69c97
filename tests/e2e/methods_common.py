"""What the end-to-end tests of the second-factor methods share: a local-directory
daemon configuration, direct access to its user store, and NAS steps that the plain
`login` helper does not cover (answering a given challenge, waiting for one reply,
a Status-Server barrier, reading codes out of delivered messages)."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher
from pyrad import packet as pyrad_packet

from mfaproxy.config.schema import load_config
from mfaproxy.store.factory import open_user_store
from mfaproxy.store.records import UserRepository
from tests.support.daemon import Daemon
from tests.support.nas import DICTIONARY, Reply, UdpNas, access_request, exchange
from tests.support.smtp import ReceivedMail, SmtpServer

SECRET = "methods-e2e-secret"
# The NAS entry in append mode (`password,code`) listens for this source address.
APPEND_SOURCE = "127.0.0.3"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
_CODE = re.compile(r"\b(\d{6})\b")


def password(user: str) -> str:
    return f"{user}-pw"


def daemon_config(
    tmp: Path, users: dict[str, dict[str, Any]], multifactor: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    """The local directory (fast argon2 hashes), a challenge NAS on 127.0.0.1 and an
    append NAS on 127.0.0.3, MFA required for everyone, and the given sections."""
    entries = {u: {"password_hash": FAST.hash(password(u)), **extra} for u, extra in users.items()}
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": entries}), encoding="utf-8")
    return {
        "clients": [
            {"name": "vpn", "address": ["127.0.0.1"], "secret": SECRET},
            {
                "name": "legacy",
                "address": [APPEND_SOURCE],
                "secret": SECRET,
                "second_factor": "append",
            },
        ],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_required"}},
        "multifactor": multifactor,
        **sections,
    }


def open_store(daemon: Daemon) -> UserRepository:
    """The daemon's own user store (SQLite under its state_dir), as the CLI opens it."""
    return open_user_store(load_config(daemon.config_path))


def answer(nas: UdpNas, challenge: Reply, user: str, text: str, **attributes: Any) -> Reply:
    """Answer one Access-Challenge: `text` as User-Password, with its State."""
    assert challenge.challenged, challenge.message
    assert challenge.state is not None
    request = access_request(SECRET, user, text, **attributes)
    request.AddAttribute("State", challenge.state)
    return exchange(nas, SECRET, request)


def receive_reply(nas: UdpNas, request: pyrad_packet.AuthPacket) -> Reply:
    """Wait for the (verified) reply to a request that was sent earlier."""
    while True:
        raw = nas.receive()
        if raw[1] == request.id:
            reply = Reply(raw, SECRET)
            assert request.VerifyReply(reply.packet, raw, enforce_ma=True)
            return reply


def status_server(nas: UdpNas) -> list[bytes]:
    """A Status-Server (RFC 5997) round trip from this NAS; returns the other datagrams
    that arrived before its reply (replies to earlier requests), for the caller to judge.

    The daemon takes datagrams from one FIFO queue and de-duplicates each one before
    anything in its handling waits, so once this is answered every datagram this NAS
    sent before it has been looked up in the duplicate table: a barrier, not a sleep.
    """
    request = pyrad_packet.AuthPacket(
        code=pyrad_packet.StatusServer, secret=SECRET.encode(), dict=DICTIONARY
    )
    request.add_message_authenticator()
    nas.send(request.RequestPacket())
    others: list[bytes] = []
    while True:
        raw = nas.receive()
        if raw[1] != request.id:
            others.append(raw)
            continue
        reply = Reply(raw, SECRET)
        assert request.VerifyReply(reply.packet, raw, enforce_ma=True)
        assert reply.accepted
        return others


def metric(port: int, name: str, labels: str) -> float:
    """One sample from the daemon's Prometheus endpoint (0 when not exported yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def code_in(text: str) -> str:
    """The one-time code a message carries (email body, SMS text)."""
    found = _CODE.search(text)
    assert found is not None, f"no code in {text!r}"
    return found.group(1)


def wait_mail(smtp: SmtpServer, to: str, after: int) -> ReceivedMail:
    """The first mail to `to` among those received after the first `after` ones."""
    wanted = after + 1
    while True:
        mails = smtp.wait_for(wanted)
        for mail in mails[after:]:
            if to in mail.recipients:
                return mail
        wanted = len(mails) + 1


def mails_to(mails: Iterable[ReceivedMail], to: str) -> list[ReceivedMail]:
    return [mail for mail in mails if to in mail.recipients]
