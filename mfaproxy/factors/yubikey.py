"""The YubiKey method: Yubico OTPs checked locally (AES key in the user store) or by YubiCloud.

An OTP is 44 modhex characters: the key's public id (12, not secret), then an AES-128
token holding the private id, a CRC and usage counters. A user is bound to one public
id; another key's OTP is `wrong_key` before anything is asked, even if YubiCloud would
accept it. `local` decrypts the token (yubiotp), checks the private id in constant time
and accepts the (session, use) counters only when newer than the last accepted ones, by
one conditional UPDATE in the store, so a replay or a concurrent twin is `replayed`.

`yubicloud` speaks validation protocol 2.0, HMAC-SHA1 signed both ways. The request goes
to every `api_urls` entry at once, as Yubico's own clients do; the first decisive answer
wins, so a dead or slow server costs nothing. Answers not signed with our API key, or not
echoing our OTP and nonce, are ignored; so are REPLAYED_REQUEST (a server that saw our
own fan-out through its peers), BACKEND_ERROR and NOT_ENOUGH_ANSWERS while others may
still answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from yubiotp.otp import decode_otp

from mfaproxy.config.multifactor import MultifactorConfig, YubikeyMethodConfig
from mfaproxy.errors import ConfigError, UpstreamUnavailable, YubikeyEnrolmentError
from mfaproxy.factors.base import (
    Factor,
    FactorRequest,
    FactorResult,
    FactorServices,
    FactorUser,
    Verdict,
)
from mfaproxy.observability import metrics
from mfaproxy.store.records import UserRepository

log = structlog.get_logger(__name__)

OTP_LENGTH = 44
PUBLIC_ID_LENGTH = 12
MODHEX = frozenset("cbdefghijklnrtuv")
# A verify answer is a dozen short lines; anything much longer is not YubiCloud.
_MAX_BODY = 4096


def normalise_otp(answer: str) -> str | None:
    """The OTP in lower case, or None when it cannot be one (checked before any network)."""
    otp = answer.strip().lower()
    if len(otp) != OTP_LENGTH or not set(otp) <= MODHEX:
        return None
    return otp


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


# ----------------------------------------------------------------- local validation


@dataclass(frozen=True)
class LocalKey:
    """What local validation needs of one key (sealed at rest by the user store)."""

    public_id: str
    aes_key: bytes
    private_id: bytes

    @classmethod
    def from_hex(cls, public_id: str, aes_key_hex: str, private_id_hex: str) -> LocalKey:
        try:
            aes_key, private_id = bytes.fromhex(aes_key_hex), bytes.fromhex(private_id_hex)
        except ValueError as exc:
            raise YubikeyEnrolmentError("AES key and private id must be hexadecimal") from exc
        if len(aes_key) != 16 or len(private_id) != 6:
            raise YubikeyEnrolmentError("the AES key is 16 bytes and the private id 6 bytes")
        return cls(public_id, aes_key, private_id)

    @classmethod
    def from_enrolment(cls, data: Mapping[str, Any]) -> LocalKey | None:
        """None for a key bound through YubiCloud only (no AES secret known)."""
        if not data.get("aes_key") or not data.get("private_id"):
            return None
        return cls.from_hex(str(data["public_id"]), data["aes_key"], data["private_id"])

    def enrolment(self) -> dict[str, str]:
        return {
            "public_id": self.public_id,
            "aes_key": self.aes_key.hex(),
            "private_id": self.private_id.hex(),
        }

    def counter(self, otp: str) -> int | None:
        """The OTP's (session, use) counters as one ordered integer; None if not ours."""
        try:
            _public_id, token = decode_otp(otp.encode("ascii"), self.aes_key)
        except ValueError:  # bad modhex, or yubiotp's CRCError: another key or garbage
            return None
        if not hmac.compare_digest(bytes(token.uid), self.private_id):
            return None
        return (int(token.session) << 8) | int(token.counter)


# ----------------------------------------------------------------- YubiCloud


@dataclass(frozen=True)
class _Answer:
    result: FactorResult
    decisive: bool  # False: wait for the other servers before believing it


_STATUS: dict[str, _Answer] = {
    "OK": _Answer(FactorResult.accept("code_ok"), True),
    "BAD_OTP": _Answer(FactorResult.reject("bad_code"), True),
    "REPLAYED_OTP": _Answer(FactorResult.reject("replayed"), True),
    "REPLAYED_REQUEST": _Answer(FactorResult.reject("replayed"), False),
    "BACKEND_ERROR": _Answer(FactorResult.unavailable("yubicloud_error"), False),
    "NOT_ENOUGH_ANSWERS": _Answer(FactorResult.unavailable("yubicloud_error"), False),
}
# Our client id or key is wrong: YubiCloud cannot sign these with our key, so they are
# believed unsigned. At worst a forger makes the factor unavailable, as dropping could.
_MISCONFIGURED = frozenset(
    {"NO_SUCH_CLIENT", "BAD_SIGNATURE", "MISSING_PARAMETER", "OPERATION_NOT_ALLOWED"}
)
# When no server was decisive, the most telling of the other answers is reported.
_FALLBACK_ORDER = ("yubicloud_misconfigured", "bad_response", "yubicloud_error")


def _fallback(results: list[FactorResult]) -> FactorResult:
    rejected = [r for r in results if r.verdict is Verdict.REJECT]
    if rejected:
        return rejected[0]
    reasons = {r.reason for r in results}
    reason = next((r for r in _FALLBACK_ORDER if r in reasons), "unreachable")
    return FactorResult.unavailable(reason)


async def _first_decisive(tasks: list[asyncio.Task[_Answer]]) -> FactorResult:
    seen: list[FactorResult] = []
    for next_answer in asyncio.as_completed(tasks):
        answer = await next_answer
        if answer.decisive:
            return answer.result
        seen.append(answer.result)
    return _fallback(seen)


def _parse(body: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in body.splitlines():
        key, sep, value = line.strip().partition("=")  # values (h) may contain "="
        if sep and key:
            fields[key] = value
    return fields


async def _read_body(response: aiohttp.ClientResponse) -> str:
    body = bytearray()
    async for chunk in response.content.iter_chunked(1024):
        body += chunk
        if len(body) > _MAX_BODY:
            raise aiohttp.ClientPayloadError("verify answer too long")
    return body.decode("utf-8", "replace")


class YubicloudClient:
    """Validation protocol 2.0 client; the HTTP session is made inside the running loop."""

    def __init__(self, settings: YubikeyMethodConfig):
        if settings.client_id is None or settings.api_key is None:
            raise ConfigError(["multifactor.yubikey: yubicloud needs client_id and api_key"])
        try:
            key = base64.b64decode(settings.api_key.get_secret_value(), validate=True)
        except ValueError as exc:
            raise ConfigError(["multifactor.yubikey.api_key: not base64"]) from exc
        self.settings = settings
        self._client_id = settings.client_id
        self._key = key
        self._tls: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            self._tls = ssl.create_default_context(cafile=str(settings.ca_file))
        self._session: aiohttp.ClientSession | None = None

    def sign(self, fields: Mapping[str, str]) -> str:
        line = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "h")
        return base64.b64encode(hmac.new(self._key, line.encode(), hashlib.sha1).digest()).decode()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            )
        return self._session

    async def verify(self, otp: str) -> FactorResult:
        """ACCEPT, REJECT (bad_code, replayed) or UNAVAILABLE; never raises for the network."""
        params = {"id": self._client_id, "nonce": secrets.token_hex(16), "otp": otp}
        params["h"] = self.sign(params)
        session, started = self._http(), time.monotonic()
        tasks = [asyncio.create_task(self._ask(session, u, params)) for u in self.settings.api_urls]
        try:
            result = await _first_decisive(tasks)
        finally:
            for task in tasks:  # the slower servers are not waited for
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        metrics.UPSTREAM_LATENCY.labels(service="yubicloud", result=result.reason).observe(
            time.monotonic() - started
        )
        return result

    async def _ask(
        self, session: aiohttp.ClientSession, url: str, params: dict[str, str]
    ) -> _Answer:
        up = metrics.UPSTREAM_UP.labels(service="yubicloud", server=url)
        try:
            async with session.get(url, params=params) as response:
                response.raise_for_status()
                fields = _parse(await _read_body(response))
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Only the type: aiohttp's messages carry the URL, and so the OTP.
            log.warning("yubicloud_unreachable", server=url, error=type(exc).__name__)
            up.set(0)
            return _Answer(FactorResult.unavailable("unreachable"), False)
        answer = self._judge(url, fields, params)
        up.set(0 if answer.result.reason in ("bad_response", "yubicloud_error") else 1)
        return answer

    def _judge(self, url: str, fields: dict[str, str], sent: dict[str, str]) -> _Answer:
        status = fields.get("status", "")
        if status in _MISCONFIGURED:
            log.error("yubicloud_misconfigured", server=url, status=status)
            return _Answer(FactorResult.unavailable("yubicloud_misconfigured"), False)
        authentic = (
            _same(fields.get("h", ""), self.sign(fields))
            and _same(fields.get("otp", ""), sent["otp"])
            and _same(fields.get("nonce", ""), sent["nonce"])
        )
        if not authentic or status not in _STATUS:
            log.warning("yubicloud_bad_response", server=url, signed=authentic)
            return _Answer(FactorResult.unavailable("bad_response"), False)
        return _STATUS[status]

    async def check(self) -> tuple[bool, str]:
        """`mfaproxy doctor`: verify an OTP no key made. A signed BAD_OTP proves the
        service answers and knows our client id and API key."""
        otp = "".join(secrets.choice(sorted(MODHEX)) for _ in range(OTP_LENGTH))
        result = await self.verify(otp)
        if result.reason == "bad_code":
            return True, "answered, signed with our API key"
        detail = {
            "yubicloud_misconfigured": "refused our client id or API key",
            "bad_response": "answered without a valid signature (wrong API key?)",
        }.get(result.reason, result.reason)
        return False, detail

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ----------------------------------------------------------------- the factor


class YubikeyFactor:
    name = "yubikey"
    keywords: frozenset[str] = frozenset()

    def __init__(self, settings: YubikeyMethodConfig, services: FactorServices):
        self.settings = settings
        self.services = services
        self.code_length: int | None = OTP_LENGTH
        self.cloud = YubicloudClient(settings) if settings.validation == "yubicloud" else None

    def looks_like_code(self, text: str) -> bool:
        return normalise_otp(text) is not None

    def is_enrolled(self, user: FactorUser) -> bool:
        return user.record is not None and "yubikey" in user.record.enrolled

    def can_enrol_inline(self, user: FactorUser) -> bool:
        # Local validation needs the AES key, which no prompt can carry: operators enrol.
        return self.cloud is not None

    async def begin(self, request: FactorRequest) -> FactorResult:
        return FactorResult.prompted("yubikey")

    async def check(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        otp = normalise_otp(answer)
        if otp is None:
            return FactorResult.reject("malformed_code")
        user = request.user.name
        data = await self.services.users.run(lambda s: s.get_enrolment(user, "yubikey"))
        if data is None:
            return FactorResult.reject("not_enrolled")
        public_id = otp[:PUBLIC_ID_LENGTH]
        if not _same(public_id, str(data.get("public_id", ""))):
            result = FactorResult.reject("wrong_key")
        elif self.cloud is not None:
            result = await self.cloud.verify(otp)
        else:
            result = await self._check_local(user, otp, data)
        log.debug("yubikey_checked", public_id=public_id, reason=result.reason)
        return result

    async def _check_local(self, user: str, otp: str, data: Mapping[str, Any]) -> FactorResult:
        key = LocalKey.from_enrolment(data)
        if key is None:
            # Bound through YubiCloud, then the operator switched to local: not the
            # user's fault, and not fixable by them.
            log.warning("yubikey_no_local_key", user=user)
            return FactorResult.reject("no_local_key", counts_as_failure=False)
        counter = key.counter(otp)
        if counter is None:
            return FactorResult.reject("bad_code")
        accepted = await self.services.users.run(lambda s: s.accept_yubikey_counter(user, counter))
        return FactorResult.accept("code_ok") if accepted else FactorResult.reject("replayed")

    async def begin_enrolment(self, request: FactorRequest) -> FactorResult:
        if self.cloud is None:
            return FactorResult.reject("enrolment_unavailable", counts_as_failure=False)
        return FactorResult.prompted("yubikey_enrol", reason="enrolment")

    async def finish_enrolment(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        if self.cloud is None:
            return FactorResult.reject("enrolment_unavailable", counts_as_failure=False)
        otp = normalise_otp(answer)
        if otp is None:
            return FactorResult.reject("malformed_code")
        result = await self.cloud.verify(otp)
        if result.verdict is not Verdict.ACCEPT:
            return result
        public_id = otp[:PUBLIC_ID_LENGTH]
        await _bind(self.services, request.user.name, {"public_id": public_id}, request.now)
        log.debug("yubikey_enrolled", public_id=public_id)
        return FactorResult.accept("enrolled")

    async def close(self) -> None:
        if self.cloud is not None:
            await self.cloud.close()


async def _bind(
    services: FactorServices,
    user: str,
    data: Mapping[str, str],
    now: float,
    counter: int | None = None,
) -> None:
    """Store the key (public id, and key material for local validation) as the user's
    method; `counter` is the enrolment OTP's, used up so that it cannot be replayed."""

    def store(s: UserRepository) -> None:
        s.set_enrolment(user, "yubikey", data, now)
        if counter is not None:
            s.accept_yubikey_counter(user, counter)
        s.set_method(user, "yubikey", now)

    await services.users.run(store)


async def enrol(
    services: FactorServices,
    settings: YubikeyMethodConfig,
    user: str,
    otp: str,
    now: float,
    aes_key_hex: str | None = None,
    private_id_hex: str | None = None,
) -> str:
    """Bind `user` to the key that typed `otp` (for the CLI); returns its public id.

    Local validation needs the key's AES secret and private id (hex, as the personalisation
    tool printed them) and checks that `otp` decrypts with them; that OTP is then used up.
    YubiCloud validation verifies `otp` with YubiCloud. Raises YubikeyEnrolmentError, or
    UpstreamUnavailable when YubiCloud does not answer.
    """
    token = normalise_otp(otp)
    if token is None:
        raise YubikeyEnrolmentError("not a YubiKey OTP (44 modhex characters)")
    if settings.validation == "yubicloud":
        if aes_key_hex is not None or private_id_hex is not None:
            raise YubikeyEnrolmentError("AES key and private id are for validation: local")
        await _verify_with_cloud(settings, token)
        await _bind(services, user, {"public_id": token[:PUBLIC_ID_LENGTH]}, now)
        return token[:PUBLIC_ID_LENGTH]
    if aes_key_hex is None or private_id_hex is None:
        raise YubikeyEnrolmentError("local validation needs the AES key and the private id")
    key = LocalKey.from_hex(token[:PUBLIC_ID_LENGTH], aes_key_hex, private_id_hex)
    counter = key.counter(token)
    if counter is None:
        raise YubikeyEnrolmentError("the OTP does not decrypt with this AES key and private id")
    await _bind(services, user, key.enrolment(), now, counter)
    return key.public_id


async def _verify_with_cloud(settings: YubikeyMethodConfig, otp: str) -> None:
    client = YubicloudClient(settings)
    try:
        result = await client.verify(otp)
    finally:
        await client.close()
    if result.verdict is Verdict.UNAVAILABLE:
        raise UpstreamUnavailable(f"YubiCloud did not verify the OTP ({result.reason})")
    if result.verdict is not Verdict.ACCEPT:
        raise YubikeyEnrolmentError(f"YubiCloud refused the OTP ({result.reason})")


def build(config: MultifactorConfig, services: FactorServices) -> Factor:
    if config.yubikey is None:
        raise ConfigError(["multifactor.yubikey: the section is missing"])
    return YubikeyFactor(config.yubikey, services)
