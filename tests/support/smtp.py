"""A real SMTP server (aiosmtpd) on loopback that keeps every message it receives.

`SmtpServer()` speaks plain SMTP. `SmtpServer(tls_dir=DIR, users={"u": "pw"})` also
offers STARTTLS, with a certificate for 127.0.0.1 issued by a throwaway CA (`ca_file`),
and AUTH (PLAIN, LOGIN; only after STARTTLS) for those users.
"""

from __future__ import annotations

import email
import hmac
import ssl
import threading
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.ports import free_port
from tests.support.slapd import CertificateAuthority


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: Message

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        payload = self.message.get_payload(decode=True)
        return payload.decode() if isinstance(payload, bytes) else str(payload)


class _Handler:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content)
        self.server.add(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


class SmtpServer:
    """`with SmtpServer() as smtp:` then `smtp.port`, `smtp.wait_for(count)`, `smtp.messages`."""

    def __init__(self, tls_dir: Path | None = None, users: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.messages: list[ReceivedMail] = []
        self.users = dict(users or {})
        self.ca_file: Path | None = None
        self._cond = threading.Condition()
        self._running = False
        options: dict[str, Any] = {}
        if tls_dir is not None:
            ca = CertificateAuthority.create("mfaproxy smtp test CA")
            self.ca_file = ca.write(tls_dir / "smtp-ca.pem")
            ca.issue_server(tls_dir / "smtp.pem", tls_dir / "smtp.key")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls_dir / "smtp.pem", tls_dir / "smtp.key")
            options["tls_context"] = context
        if self.users:
            options["authenticator"] = self._authenticate
            options["auth_require_tls"] = tls_dir is not None
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, **options
        )

    def _authenticate(
        self, _server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self.users.get(data.login.decode(errors="replace"))
        ok = expected is not None and hmac.compare_digest(data.password, expected.encode())
        return AuthResult(success=ok, handled=False)

    def add(self, mail: ReceivedMail) -> None:
        with self._cond:
            self.messages.append(mail)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> list[ReceivedMail]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} mails, got {len(self.messages)}")
            return list(self.messages)

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop listening (a mail server outage); safe to call twice."""
        if self._running:
            self._running = False
            self._controller.stop()

    def __exit__(self, *_: object) -> None:
        self.stop()
