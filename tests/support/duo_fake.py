"""A local fake of Duo's Auth API v2 that speaks the real wire protocol.

HTTPS on 127.0.0.1 with a certificate for `localhost` issued by a throwaway CA, so the
real duo_client verifies it when given `ca_file`. Every endpoint but /ping checks the
request signature the way Duo does (signature version 5: HMAC-SHA512 over the Date
header, method, host, path, sorted query parameters, the SHA-512 of the body and of the
X-Duo-* headers; `Authorization: Basic base64(ikey:hexsig)`) and answers 401 when it is
wrong. Answers are Duo's JSON: `{"stat": "OK", "response": {...}}` or
`{"stat": "FAIL", "code": ..., "message": ...}`.

API:

    with FakeDuo() as duo:
        duo.ikey, duo.skey      credentials it accepts
        duo.api_hostname        "localhost:PORT", for DuoMethodConfig.api_hostname
        duo.ca_file             PEM of the CA, for DuoMethodConfig.ca_file
        user = duo.add_user("alice", push="approve", passcodes={"123456"}, hold=True)
            FakeUser fields (all mutable): preauth auth|allow|deny|enroll, status_msg,
            enroll_portal_url, devices (list of FakeDevice), passcodes (single use),
            push / phone outcome approve|deny|fraud|timeout, sms_passcode (accepted
            once an SMS was sent), hold (push and phone stay "waiting" until
            user.release is set), verified_push (Duo's policy asks this user for
            Verified Push: see below)
        user.push_sent          threading.Event, set when an /auth push or phone arrives
        user.release.set()      lets a held push or phone finish with its outcome
        user.polled             threading.Event, set when auth_status is asked about it
        user.enter_code("123")  the user types a Verified Push code into Duo Mobile
        duo.calls               every signed request that passed: Call(path, params)
        duo.calls_to("/auth/v2/auth", "alice"), duo.auth_calls("alice")
        duo.bad_signatures      how many requests were refused with 401
        duo.mode = "error"      every endpoint answers HTTP 500; "bad_json": 200 + garbage
        duo.fail("/auth/v2/auth", 429)   that endpoint answers 429 (or 500, 503...)
                                from now on; duo.fail(path, None) heals it
        duo.stop()              unreachable: connections are refused from then on

Users not added are unknown: preauth answers `enroll`, auth answers 400.

auth_status long-polls like Duo's: it answers at once when the transaction's status
changed since the last answer (the first poll sees "pushed"), otherwise it waits up to
`long_poll` seconds for a change (the user's answer) before answering "waiting" again.

Verified Push (Duo Auth API v2): for a user with `verified_push`, a preauth that says
`client_supports_verified_push=1` also answers `txid`, `verification_code` (six digits)
and `expiration`; the client shows the code, then calls /auth with factor=push and that
`txid`. The push is approved when the user enters the right code in Duo Mobile
(`user.enter_code`), denied when they enter another. A push for such a user without a
Verified Push txid is denied (Duo's policy cannot be met by a client that shows no code).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from tests.support.slapd import CertificateAuthority

Outcome = Literal["approve", "deny", "fraud", "timeout"]
Mode = Literal["ok", "error", "bad_json"]

HOSTNAME = "localhost"
MAX_CLOCK_SKEW = 300  # seconds; Duo refuses requests dated further away
OUTCOMES: dict[str, tuple[str, str, str]] = {
    "approve": ("allow", "allow", "Success. Logging you in..."),
    "deny": ("deny", "deny", "Login request denied."),
    "fraud": ("deny", "fraud", "Login request reported as fraudulent."),
    "timeout": ("deny", "timeout", "Login request timed out."),
}
WAITING = ("waiting", "pushed", "Pushed a login request to your device...")
VERIFIED_WAITING = ("waiting", "pushed", "Enter the verification code in Duo Mobile...")
VERIFIED_PUSH_UNSUPPORTED = ("deny", "deny", "Verified Duo Push is required for this login.")
VERIFIED_PUSH_SECONDS = 60  # a Verified Push txid from preauth expires after this
PREAUTH_MESSAGES = {
    "auth": "Account is active",
    "allow": "Bypass code in use",
    "deny": "Your account is disabled",
    "enroll": "Enroll an authentication device to proceed",
}


@dataclass
class FakeDevice:
    device: str = "DPFZRS9FB0D46QFTM891"
    capabilities: list[str] = field(
        default_factory=lambda: ["auto", "push", "sms", "phone", "mobile_otp"]
    )
    type: str = "phone"
    number: str = "XXX-XXX-0100"
    display_name: str = "iOS (XXX-XXX-0100)"

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "type": self.type,
            "number": self.number,
            "name": "",
            "display_name": self.display_name,
            "capabilities": self.capabilities,
        }


@dataclass
class FakeUser:
    preauth: Literal["auth", "allow", "deny", "enroll"] = "auth"
    status_msg: str | None = None
    enroll_portal_url: str = "https://localhost/portal?code=48bac5d9393fb2c2&akey=DAKEY"
    devices: list[FakeDevice] = field(default_factory=lambda: [FakeDevice()])
    passcodes: set[str] = field(default_factory=set)
    push: Outcome = "approve"
    phone: Outcome = "approve"
    sms_passcode: str = "7654321"
    hold: bool = False
    verified_push: bool = False
    push_sent: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    polled: threading.Event = field(default_factory=threading.Event)
    # Verified Push: the codes preauth handed out (txid -> code) and the user's entry.
    verification_codes: dict[str, str] = field(default_factory=dict)
    entered_code: str | None = None

    def enter_code(self, code: str) -> None:
        """The user types `code` into Duo Mobile: a Verified Push finishes with it."""
        self.entered_code = code
        self.release.set()


@dataclass(frozen=True)
class Call:
    path: str
    params: dict[str, str]


@dataclass
class _Transaction:
    user: FakeUser
    factor: str
    # The Verified Push code this push must be answered with (None: a plain push).
    verification_code: str | None = None
    # What the last auth_status answer said: a long poll waits for something else.
    reported: tuple[str, str, str] | None = None
    # Duo's policy wants a Verified Push and the client did not ask for one.
    refused: bool = False

    def state(self) -> tuple[str, str, str]:
        if self.refused:
            return VERIFIED_PUSH_UNSUPPORTED
        if self.verification_code is not None:
            if self.user.entered_code is None:
                return VERIFIED_WAITING
            if self.user.entered_code != self.verification_code:
                return OUTCOMES["deny"]
            return OUTCOMES["approve"]
        if self.user.hold and not self.user.release.is_set():
            return WAITING
        return OUTCOMES[self.user.push if self.factor == "push" else self.user.phone]


# Bodies Duo sends with these statuses (code: HTTP status then a sub-code).
FAILURES: dict[int, dict[str, Any]] = {
    429: {"stat": "FAIL", "code": 42901, "message": "Too Many Requests"},
    500: {"stat": "FAIL", "code": 50000, "message": "Internal server error"},
    503: {"stat": "FAIL", "code": 50300, "message": "Service Unavailable"},
}


class DuoError(Exception):
    def __init__(self, http_status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.http_status, self.code, self.message = http_status, code, message


# ---------------------------------------------------------------------- signing


def canonical_request(
    date: str,
    method: str,
    host: str,
    path: str,
    params: dict[str, list[str]],
    body: bytes,
    duo_headers: dict[str, str],
) -> bytes:
    """Duo's signature version 5 canonical form (an independent implementation)."""

    def quote(text: str) -> str:
        return urllib.parse.quote(text, safe="~")

    quoted = sorted((quote(k), sorted(quote(v) for v in vs)) for k, vs in params.items())
    canon_params = "&".join(f"{k}={v}" for k, vs in quoted for v in vs)
    lowered = {k.lower(): v for k, v in duo_headers.items()}
    header_text = "\x00".join(part for k in sorted(lowered) for part in (k, lowered[k]))
    lines = [
        date,
        method.upper(),
        host.lower(),
        path,
        canon_params,
        hashlib.sha512(body).hexdigest(),
        hashlib.sha512(header_text.encode()).hexdigest(),
    ]
    return "\n".join(lines).encode()


def signature(skey: str, canonical: bytes) -> str:
    return hmac.new(skey.encode(), canonical, hashlib.sha512).hexdigest()


# ------------------------------------------------------------------------ server


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a stuck client must not pin a thread forever

    def setup(self) -> None:
        # TLS handshake here, in the request's thread, not in the accept loop.
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        super().finish()
        self.request.close()

    def log_message(self, format: str, *args: Any) -> None:
        return None  # keep test output quiet

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        if fake.mode == "error":
            return self._send(500, {"stat": "FAIL", "code": 50000, "message": "Internal error"})
        if fake.mode == "bad_json":
            return self._send_raw(200, b"<html>not json</html>", "text/html")
        injected = fake.failures.get(url.path)
        if injected is not None:
            fake.record_failure(url.path)
            return self._send(injected, FAILURES.get(injected, FAILURES[500]))
        try:
            if url.path == "/auth/v2/ping":  # the only unsigned endpoint
                return self._ok({"time": int(time.time())})
            params = self._params(url.query, body)
            fake.verify(self.command, url.path, params, body, dict(self.headers.items()))
            response = fake.handle(url.path, {k: v[0] for k, v in params.items()})
        except DuoError as exc:
            return self._send(
                exc.http_status, {"stat": "FAIL", "code": exc.code, "message": exc.message}
            )
        return self._ok(response)

    def _params(self, query: str, body: bytes) -> dict[str, list[str]]:
        if self.command == "GET":
            return urllib.parse.parse_qs(query, keep_blank_values=True)
        if not body:
            return {}
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise DuoError(400, 40000, "Invalid request body") from exc
        if not isinstance(data, dict):
            raise DuoError(400, 40000, "Invalid request body")
        return {str(k): [str(v)] for k, v in data.items()}

    def _ok(self, response: Any) -> None:
        self._send(200, {"stat": "OK", "response": response})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json")

    def _send_raw(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeDuo, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake, self.tls = fake, tls

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # failed handshakes and dropped clients are expected in tests


class FakeDuo:
    """See the module docstring."""

    def __init__(self, long_poll: float = 0.5) -> None:
        self.ikey = "DI" + secrets.token_hex(9).upper()
        self.skey = secrets.token_urlsafe(30)
        self.long_poll = long_poll
        self.users: dict[str, FakeUser] = {}
        self.calls: list[Call] = []
        self.bad_signatures = 0
        self.mode: Mode = "ok"
        # Endpoint path -> HTTP status it answers (duo.fail); hits counted per path.
        self.failures: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._transactions: dict[str, _Transaction] = {}
        self._holding = 0
        self._dir = Path(tempfile.mkdtemp(prefix="duo-fake-"))
        # A fresh CA per fake; its certificate names localhost and 127.0.0.1.
        authority = CertificateAuthority.create("mfaproxy test Duo CA")
        self.ca_file = authority.write(self._dir / "ca.pem")
        cert, key = self._dir / "server.pem", self._dir / "server.key"
        authority.issue_server(cert, key)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self._server = _Server(self, tls)
        self.port: int = self._server.server_address[1]
        self.api_hostname = f"{HOSTNAME}:{self.port}"
        # A short poll interval keeps stop() quick (it waits for the loop to notice).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._running = False

    def __enter__(self) -> FakeDuo:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def start(self) -> None:
        self._thread.start()
        self._running = True

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        # Held long polls end on their own (`long_poll`); their threads are daemons.
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # ----------------------------------------------------------- test helpers

    def add_user(self, name: str, **settings: Any) -> FakeUser:
        user = FakeUser(**settings)
        self.users[name] = user
        return user

    def calls_to(self, path: str, username: str | None = None) -> list[Call]:
        with self._lock:
            return [
                c
                for c in self.calls
                if c.path == path and (username is None or c.params.get("username") == username)
            ]

    def auth_calls(self, username: str) -> int:
        return len(self.calls_to("/auth/v2/auth", username))

    def fail(self, path: str, status: int | None) -> None:
        """From now on `path` answers HTTP `status` (429, 500, 503...); None heals it."""
        with self._lock:
            if status is None:
                self.failures.pop(path, None)
            else:
                self.failures[path] = status

    def record_failure(self, path: str) -> None:
        with self._lock:
            self.failed[path] = self.failed.get(path, 0) + 1

    def pending_polls(self) -> int:
        """auth_status requests being held right now (long polls in progress)."""
        with self._lock:
            return self._holding

    # ------------------------------------------------------------- protocol

    def verify(
        self,
        method: str,
        path: str,
        params: dict[str, list[str]],
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        """Raise DuoError(401) unless the request is signed with our ikey and skey."""
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            scheme, _, token = lowered.get("authorization", "").partition(" ")
            ikey, _, sig = base64.b64decode(token, validate=True).decode().partition(":")
            date = lowered.get("date", "")
            sent = email.utils.parsedate_to_datetime(date).timestamp()
        except (ValueError, TypeError, binascii.Error):
            self._refused()
            raise DuoError(401, 40101, "Missing request credentials") from None
        if scheme != "Basic" or ikey != self.ikey:
            self._refused()
            raise DuoError(401, 40101, "Invalid integration key in request credentials")
        if abs(time.time() - sent) > MAX_CLOCK_SKEW:
            self._refused()
            raise DuoError(401, 40105, "Request has invalid date")
        # POST parameters are signed through the body hash, not the parameter list.
        signed = params if method == "GET" else {}
        duo_headers = {k: v for k, v in lowered.items() if k.startswith("x-duo-")}
        canonical = canonical_request(date, method, HOSTNAME, path, signed, body, duo_headers)
        if not hmac.compare_digest(sig, signature(self.skey, canonical)):
            self._refused()
            raise DuoError(401, 40103, "Invalid signature in request credentials")

    def _refused(self) -> None:
        with self._lock:
            self.bad_signatures += 1

    def handle(self, path: str, params: dict[str, str]) -> Any:
        with self._lock:
            self.calls.append(Call(path, params))
        handlers = {
            "/auth/v2/check": lambda p: {"time": int(time.time())},
            "/auth/v2/preauth": self._preauth,
            "/auth/v2/auth": self._auth,
            "/auth/v2/auth_status": self._auth_status,
        }
        if path not in handlers:
            raise DuoError(404, 40400, "Resource not found")
        return handlers[path](params)

    def _user(self, params: dict[str, str]) -> FakeUser:
        user = self.users.get(params.get("username", ""))
        if user is None:
            raise DuoError(400, 40002, "Invalid request parameters")
        return user

    def _preauth(self, params: dict[str, str]) -> dict[str, Any]:
        user = self.users.get(params.get("username", "")) or FakeUser(preauth="enroll")
        answer: dict[str, Any] = {
            "result": user.preauth,
            "status_msg": user.status_msg or PREAUTH_MESSAGES[user.preauth],
        }
        if user.preauth == "auth":
            answer["devices"] = [d.as_json() for d in user.devices]
            if user.verified_push and params.get("client_supports_verified_push") == "1":
                txid, code = secrets.token_hex(16), f"{secrets.randbelow(10**6):06d}"
                with self._lock:
                    user.verification_codes[txid] = code
                answer.update(
                    txid=txid,
                    verification_code=code,
                    expiration=int(time.time()) + VERIFIED_PUSH_SECONDS,
                )
        if user.preauth == "enroll":
            answer["enroll_portal_url"] = user.enroll_portal_url
        return answer

    def _auth(self, params: dict[str, str]) -> dict[str, Any]:
        user, factor = self._user(params), params.get("factor", "")
        if factor == "passcode":
            passcode = params.get("passcode", "")
            with self._lock:
                ok = passcode in user.passcodes
                user.passcodes.discard(passcode)  # passcodes are single use
            state = OUTCOMES["approve"] if ok else ("deny", "deny", "Incorrect passcode.")
            return dict(zip(("result", "status", "status_msg"), state, strict=True))
        if factor == "sms":
            with self._lock:
                user.passcodes.add(user.sms_passcode)
            return {"result": "deny", "status": "sent", "status_msg": "New SMS passcodes sent."}
        if factor not in ("push", "phone", "auto"):
            raise DuoError(400, 40002, "Invalid request parameters")
        txn = _Transaction(user, "phone" if factor == "phone" else "push")
        if txn.factor == "push" and user.verified_push:
            with self._lock:
                code = user.verification_codes.pop(params.get("txid", ""), None)
            txn.refused = code is None
            txn.verification_code = code
        user.push_sent.set()
        if params.get("async") == "1":
            txid = secrets.token_hex(16)
            with self._lock:
                self._transactions[txid] = txn
            return {"txid": txid}
        user.release.wait(30 if user.hold else 0)  # synchronous: answer when decided
        return dict(zip(("result", "status", "status_msg"), txn.state(), strict=True))

    def _auth_status(self, params: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            txn = self._transactions.get(params.get("txid", ""))
        if txn is None:
            raise DuoError(400, 40002, "Invalid request parameters")
        txn.user.polled.set()
        if txn.state() == txn.reported:  # nothing new: long-poll, as Duo does
            with self._lock:
                self._holding += 1
            try:
                txn.user.release.wait(self.long_poll)
            finally:
                with self._lock:
                    self._holding -= 1
        txn.reported = txn.state()
        return dict(zip(("result", "status", "status_msg"), txn.reported, strict=True))
