"""A fake YubiCloud (validation protocol 2.0 `verify`) on loopback, and simulated YubiKeys.

    key = SimulatedKey.random()             # a YubiKey: key.otp() is its next OTP
    with FakeYubicloud("4711", API_KEY_B64, [key]) as cloud:
        config yubikey.api_urls = [cloud.url]   # http://127.0.0.1:PORT/wsapi/2.0/verify
        cloud.fault = "bad_signature"       # or "wrong_nonce", "backend_error", "hang", None
        cloud.status_override = "NO_SUCH_CLIENT"  # answer this status to valid requests
        cloud.requests                      # every query received, as a dict, in order
        cloud.release()                     # lets "hang" requests go (stop() does it too)

It behaves as YubiCloud does for what mfaproxy relies on: requests must carry `id`, `otp`
and a 16-40 character alphanumeric `nonce` and be signed (`h`, HMAC-SHA1 with the
base64-decoded API key over the sorted `key=value&...` line), else MISSING_PARAMETER,
NO_SUCH_CLIENT (unsigned, as the real one cannot sign it) or BAD_SIGNATURE. It decrypts
OTPs of the keys it was given and answers BAD_OTP for anything else, REPLAYED_REQUEST for
an OTP and nonce seen together, REPLAYED_OTP for an OTP seen before or a counter not newer
than the key's last one, and OK otherwise. Answers echo `otp` and `nonce` and are signed.

Faults: `bad_signature` signs answers with another key, `wrong_nonce` echoes another
nonce, `backend_error` answers BACKEND_ERROR, `hang` holds each request open without an
answer until `release()` (a threading.Event: tests never sleep). It runs in a thread, so
it serves the daemon process of end-to-end tests as well as in-process tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from yubiotp.modhex import modhex
from yubiotp.otp import YubiKey, decode_otp, encode_otp

Fault = Literal["bad_signature", "wrong_nonce", "backend_error", "hang"]
MODHEX = frozenset("cbdefghijklnrtuv")


@dataclass
class SimulatedKey:
    """A YubiKey in Yubico OTP mode (yubiotp's simulator) with its identities."""

    public_id: str  # 12 modhex characters
    aes_key: bytes  # 16 bytes
    private_id: bytes  # 6 bytes
    session: int = 1
    device: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = YubiKey(self.private_id, self.session)

    @classmethod
    def random(cls, session: int = 1) -> SimulatedKey:
        public_id = modhex(secrets.token_bytes(6)).decode()
        return cls(public_id, secrets.token_bytes(16), secrets.token_bytes(6), session)

    def otp(self) -> str:
        """The next OTP, as if the button was touched (counters go up each time)."""
        token = encode_otp(self.device.generate(), self.aes_key, self.public_id.encode())
        return str(token.decode())

    @property
    def aes_key_hex(self) -> str:
        return self.aes_key.hex()

    @property
    def private_id_hex(self) -> str:
        return self.private_id.hex()


def sign(key: bytes, fields: Mapping[str, str]) -> str:
    line = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "h")
    return base64.b64encode(hmac.new(key, line.encode(), hashlib.sha1).digest()).decode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeYubicloud

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left is expected here, not an error


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        fields = self.server.fake.answer(query)
        if fields is None:
            return  # released from a hang: leave without an answer
        body = "".join(f"{k}={v}\r\n" for k, v in fields.items()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeYubicloud:
    def __init__(self, client_id: str, api_key_b64: str, keys: Iterable[SimulatedKey] = ()):
        self.client_id = client_id
        self.api_key = base64.b64decode(api_key_b64)
        self.keys = {key.public_id: key for key in keys}
        self.fault: Fault | None = None
        self.status_override: str | None = None
        self.requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._seen_otps: set[str] = set()
        self._seen_requests: set[tuple[str, str]] = set()
        self._counters: dict[str, int] = {}
        self._release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/wsapi/2.0/verify"
        # A short poll keeps stop() quick: shutdown() waits for the loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeYubicloud:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def add_key(self, key: SimulatedKey) -> None:
        self.keys[key.public_id] = key

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # ----------------------------------------------------------------- protocol

    def answer(self, query: dict[str, str]) -> dict[str, str] | None:
        with self._lock:
            self.requests.append(dict(query))
        if self.fault == "hang":
            self._release.wait(60)  # a safety net only; tests call release()
            return None
        status = self._status(query)
        if status is None:
            status = self._validate(query["otp"].lower(), query["nonce"])
        return self._signed_answer(query, status)

    def _status(self, query: dict[str, str]) -> str | None:
        """The status decided before looking at the OTP, if any."""
        nonce = query.get("nonce", "")
        if not {"id", "otp", "nonce"} <= query.keys():
            return "MISSING_PARAMETER"
        if not (16 <= len(nonce) <= 40 and nonce.isascii() and nonce.isalnum()):
            return "MISSING_PARAMETER"
        if query["id"] != self.client_id:
            return "NO_SUCH_CLIENT"
        if not hmac.compare_digest(query.get("h", ""), sign(self.api_key, query)):
            return "BAD_SIGNATURE"
        if self.status_override is not None:
            return self.status_override
        return "BACKEND_ERROR" if self.fault == "backend_error" else None

    def _validate(self, otp: str, nonce: str) -> str:
        key = self.keys.get(otp[:-32])
        if key is None or not 32 < len(otp) <= 48 or not set(otp) <= MODHEX:
            return "BAD_OTP"
        try:
            _public_id, token = decode_otp(otp.encode(), key.aes_key)
        except ValueError:
            return "BAD_OTP"
        if token.uid != key.private_id:
            return "BAD_OTP"
        counter = (token.session << 8) | token.counter
        with self._lock:
            if (otp, nonce) in self._seen_requests:
                return "REPLAYED_REQUEST"
            if otp in self._seen_otps or counter <= self._counters.get(key.public_id, -1):
                return "REPLAYED_OTP"
            self._seen_otps.add(otp)
            self._seen_requests.add((otp, nonce))
            self._counters[key.public_id] = counter
        return "OK"

    def _signed_answer(self, query: dict[str, str], status: str) -> dict[str, str]:
        fields = {
            "otp": query.get("otp", ""),
            "nonce": query.get("nonce", ""),
            "t": time.strftime("%Y-%m-%dT%H:%M:%SZ0000", time.gmtime()),
            "status": status,
        }
        if status == "OK":
            fields["sl"] = "100"
        if self.fault == "wrong_nonce":
            fields["nonce"] = secrets.token_hex(16)
        if status == "NO_SUCH_CLIENT":
            return fields  # no key to sign with
        key = secrets.token_bytes(20) if self.fault == "bad_signature" else self.api_key
        fields["h"] = sign(key, fields)
        return fields
