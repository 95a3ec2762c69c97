"""Duo as a second factor, over Duo's Auth API v2 (factors/duo_api.py).

`begin` asks Duo about the user (preauth): bypass, deny, enrol, or a menu of what the
user's devices can do. `check` turns the answer into one Duo call: `push` and `phone`
start an asynchronous transaction (auth with async) that is long-polled with
auth_status until the user answers or `duo.timeout` runs out (factors/duo_push.py, with
the push fatigue limits); `sms` sends passcodes and asks again; digits are a passcode.
In append mode (`password,push`) `begin` is not called, so `check` runs preauth itself
first: bypass, deny and enrolment then behave the same.

Verified Duo Push (`duo.verified_push`, challenge mode only): preauth declares
`client_supports_verified_push`; when Duo's policy asks for it, preauth answers a
verification code and a txid. The push is sent with that txid, the code is shown in an
Access-Challenge ("enter 123456 in Duo Mobile, then press Enter"), Duo checks what the
user types into the app, and the answer to the challenge waits for Duo's verdict.

One `check` sends at most one push or call: the engine de-duplicates RADIUS
retransmissions, and nothing here retries `auth` (a timed-out `auth` may still have
reached Duo, and a retry would buzz the phone twice).

Failmodes mean outages, and only before the user was asked:
- preauth finds Duo unreachable (connection failure, timeout, TLS failure, HTTP 5xx,
  nonsense): `failmode` decides. `safe` accepts on the primary password alone (warning
  log `duo_failmode_safe` and a metric); `secure` answers UNAVAILABLE `duo_unreachable`.
- preauth answered 429 (DuoRateLimited): UNAVAILABLE `duo_rate_limited`, whatever the
  failmode: Duo is up; whoever could make it rate-limit a user must not turn MFA off.
- Duo answered 4xx (DuoMisconfigured): UNAVAILABLE `duo_misconfigured` with an error
  log, whatever the failmode. Duo's own proxy fails open on a 401 in safe mode; we do
  not: a wrong key or secret is a standing misconfiguration, not an outage, and failing
  open on it would silently turn MFA off for everyone until someone read the logs.
- Our own bound is reached (DuoBusy): UNAVAILABLE `duo_busy`, whatever the failmode:
  otherwise one password holder could start enough pushes to fill it and then log in
  without Duo.
- Any error once the user was asked (at /auth: push, call, SMS, passcode; at
  /auth_status) is a REJECT `duo_error_after_prompt`, never a failmode accept: a wrong
  passcode followed by a 5xx must not log anyone in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import structlog

from mfaproxy.config.multifactor import DuoMethodConfig, MultifactorConfig
from mfaproxy.errors import DuoBusy, DuoError, DuoFailure, DuoRateLimited
from mfaproxy.factors.base import (
    Factor,
    FactorRequest,
    FactorResult,
    FactorServices,
    FactorUser,
    Verdict,
)
from mfaproxy.factors.duo_api import REQUEST_TIMEOUT, DuoApi
from mfaproxy.factors.duo_push import Claim, PushLedger, verified_push_offer, wait_for_answer
from mfaproxy.observability.metrics import DUO_PUSHES, SECOND_FACTOR_ATTEMPTS
from mfaproxy.otp.codes import digit_code
from mfaproxy.radius.text import fits_reply_message, reply_message
from mfaproxy.store.state import StateStore

log = structlog.get_logger(__name__)

# Pause between auth_status calls that came back "waiting" (Duo long-polls, so this
# only adds latency after a status change such as "pushed").
POLL_INTERVAL = 0.25
# Reply-Message carries at most 253 octets.
# Out-of-band words in menu order; a passcode is always offered (bypass codes and
# hardware tokens need no capability).
OUT_OF_BAND = ("push", "phone", "sms")
# Duo passcodes: 6 (Duo Mobile, tokens), 7 (SMS), 8 (tokens), 9-10 (bypass codes).
PASSCODE = re.compile(r"[0-9]{6,16}")
# Bound what the challenge session keeps about a user's devices.
MAX_DEVICES = 10
MSG_PUSH_PENDING = "A Duo request is already waiting on your phone. Answer it first."
MSG_PUSH_LIMITED = "Too many Duo requests. Wait a few minutes, or use a passcode."
MSG_INTERRUPTED = "Your Duo login was interrupted. Try again."
MSG_AFTER_PROMPT = "Duo could not finish the check. Try again later."
# auth/auth_status `status` values that get their own reason label.
DENY_REASONS = {"fraud": "fraud", "locked_out": "duo_locked_out"}


def menu(capabilities: set[str], pending: Mapping[str, Any], reason: str) -> FactorResult:
    """The challenge that offers what the user's devices can do (a passcode always)."""
    words = [w for w in OUT_OF_BAND if w in capabilities]
    if not words:
        return FactorResult.prompted("duo_passcode", None, pending, reason)
    return FactorResult.prompted("duo_menu", {"choices": ", ".join(words)}, pending, reason)


def menu_prompt(capabilities: set[str]) -> str:
    return menu(capabilities, {}, "challenge").prompt or ""


def device_summary(devices: object) -> list[dict[str, Any]]:
    """What the challenge session keeps of preauth's device list: ids and the
    capabilities this factor can use."""
    if not isinstance(devices, list):
        return []
    kept = []
    for device in devices[:MAX_DEVICES]:
        if isinstance(device, dict):
            caps = device.get("capabilities")
            caps = caps if isinstance(caps, list) else []
            usable = [c for c in OUT_OF_BAND if c in caps]
            kept.append(
                {"device": reply_message(device.get("device", ""), 64), "capabilities": usable}
            )
    return kept


def capabilities(pending: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for device in pending.get("devices") or []:
        if isinstance(device, Mapping):
            found.update(c for c in device.get("capabilities") or [] if c in OUT_OF_BAND)
    return found


def client_ip(request: FactorRequest) -> str | None:
    """Calling-Station-Id, when it is an address (it may be a MAC or a phone number)."""
    if not request.client_ip:
        return None
    try:
        return str(ipaddress.ip_address(request.client_ip.strip()))
    except ValueError:
        return None


def with_prompt(
    verdict: Verdict, reason: str, message: object, counts: bool = True
) -> FactorResult:
    prompt = reply_message(message) or None
    return FactorResult(verdict, reason, prompt=prompt, counts_as_failure=counts)


class DuoFactor:
    name = "duo"
    code_length: int | None = None
    keywords: frozenset[str] = frozenset(OUT_OF_BAND)

    def __init__(
        self,
        settings: DuoMethodConfig,
        state: StateStore,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.settings = settings
        self._poll_interval = poll_interval
        self.api = DuoApi(settings, request_timeout)
        self.pushes = PushLedger(state, settings)

    def looks_like_code(self, text: str) -> bool:
        return digit_code(text, 6, 16) is not None  # a Duo passcode: 6 to 16 digits

    def is_enrolled(self, user: FactorUser) -> bool:
        return True  # Duo knows its own users; preauth decides

    def can_enrol_inline(self, user: FactorUser) -> bool:
        return False  # enrolment happens in Duo's portal

    async def begin(self, request: FactorRequest) -> FactorResult:
        # Only a challenge can show a Verified Push code: declare support here only.
        try:
            return await self._preauth(request, verified_push=self.settings.verified_push)
        except DuoError as exc:
            return self._unreachable(request, exc)

    async def check(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        if isinstance(pending.get(PENDING_PUSH), Mapping):  # a Verified Push waits
            return await self._finish_verified(request, pending[PENDING_PUSH])
        if "devices" not in pending:  # append mode or a direct push: no begin
            try:
                first = await self._preauth(request, verified_push=False)
            except DuoError as exc:
                return self._unreachable(request, exc)
            if first.verdict is not Verdict.CHALLENGE:
                return first
            pending = first.pending
        try:
            return await self._answer(request, answer.strip().lower(), pending)
        except DuoError as exc:
            return self._failed_after_prompt(request, exc)

    async def begin_enrolment(self, request: FactorRequest) -> FactorResult:
        return FactorResult.reject("enrol_at_duo", counts_as_failure=False)

    async def finish_enrolment(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        return FactorResult.reject("enrol_at_duo", counts_as_failure=False)

    async def close(self) -> None:
        await self.api.close()

    # ------------------------------------------------------------------ flow

    async def _preauth(self, request: FactorRequest, verified_push: bool) -> FactorResult:
        answer = await self.api.preauth(request.user.name, client_ip(request), verified_push)
        result, message = answer.get("result"), answer.get("status_msg", "")
        if result == "allow":
            return FactorResult.accept("duo_bypass")
        if result == "deny":
            return with_prompt(Verdict.REJECT, "duo_denied", message or "Access denied by Duo")
        if result == "enroll":
            url = reply_message(answer.get("enroll_portal_url", ""))
            prompt = f"Enroll in Duo first: {url}"
            if not url or not fits_reply_message(prompt):
                prompt = "Enroll in Duo first; ask your administrator how"
            return with_prompt(Verdict.REJECT, "duo_enroll", prompt, counts=False)
        if result == "auth":
            pending: dict[str, Any] = {"devices": device_summary(answer.get("devices"))}
            verified = verified_push_offer(answer)
            if verified is not None:
                pending[PENDING_VERIFIED] = verified
            return menu(capabilities(pending), pending, "challenge")
        raise DuoFailure(f"unexpected preauth result {reply_message(result, 40)!r}")

    async def _answer(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        caps = capabilities(pending)
        word = answer or self._default_word(caps)
        if word is None:
            return FactorResult.prompted("duo_passcode", None, pending, "passcode_needed")
        if word in OUT_OF_BAND:
            if word not in caps:
                prompt = reply_message(f"No Duo device can do {word}. {menu_prompt(caps)}")
                return FactorResult.challenge(prompt, pending, reason="factor_unavailable")
            if word == "sms":
                return await self._sms(request, pending)
            return await self._out_of_band(request, word, pending)
        if PASSCODE.fullmatch(word):
            return await self._passcode(request, word)
        return FactorResult.reject("malformed_code")

    def _default_word(self, caps: set[str]) -> str | None:
        """What an empty answer means: the configured factor; `auto` is push, else a
        phone call, else a passcode must be typed."""
        factor = self.settings.factor
        if factor == "auto":
            return next((w for w in ("push", "phone") if w in caps), None)
        return None if factor == "passcode" else factor

    async def _out_of_band(
        self, request: FactorRequest, factor: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        user, key, now = request.user.name, request.request_key, request.now
        ticket = await self.pushes.claim(user, key, now)
        if ticket.claim is Claim.CONTINUE and ticket.txid is not None:
            # This very request sent the push from a node that is gone: keep waiting.
            remaining = ticket.started + self.settings.timeout - now
            return await self._wait(request, factor, ticket.txid, remaining)
        if ticket.claim is not Claim.NEW:
            return REFUSED[ticket.claim]
        verified = pending.get(PENDING_VERIFIED) if factor == "push" else None
        verified = verified if isinstance(verified, Mapping) else None
        try:
            started = await self.api.auth(
                factor=factor,
                username=request.user.name,
                device="auto",
                ipaddr=client_ip(request),
                txid=str(verified["txid"]) if verified else None,
                **{"async": "1"},
            )
            txid = started.get("txid")
            if not isinstance(txid, str) or not txid:
                raise DuoFailure("auth answered without a txid")
        except Exception:
            # Not on cancellation (shutdown): the push may be out, and the record
            # keeps a retransmission on another node from sending a second one.
            await self.pushes.release(user)
            raise
        await self.pushes.sent(user, key, txid, now)
        if verified is not None:
            # The user types the code into Duo Mobile; the answer to this challenge
            # waits for Duo's verdict. The pending record stays until then.
            record = {"txid": txid, "started": now, "factor": factor}
            fields = {"code": str(verified["code"])}
            pending_push = {PENDING_PUSH: record}
            return FactorResult.prompted("duo_verified_push", fields, pending_push, "verified_push")
        return await self._wait(request, factor, txid, self.settings.timeout)

    async def _finish_verified(
        self, request: FactorRequest, record: Mapping[str, Any]
    ) -> FactorResult:
        txid, started, factor = record.get("txid"), record.get("started"), "push"
        if not isinstance(txid, str) or not isinstance(started, int | float):
            return FactorResult.reject("invalid_pending", counts_as_failure=False)
        remaining = float(started) + self.settings.timeout - request.now
        return await self._wait(request, factor, txid, remaining)

    async def _wait(
        self, request: FactorRequest, factor: str, txid: str, seconds: float
    ) -> FactorResult:
        try:
            status = await wait_for_answer(self.api, txid, seconds, self._poll_interval)
        except DuoError as exc:
            await self.pushes.release(request.user.name)
            return self._failed_after_prompt(request, exc)
        # Released only once answered: a node stopped mid-wait leaves the record, so the
        # NAS's retransmission to another node continues this push (duo_push.py).
        await self.pushes.release(request.user.name)
        if status is None:
            # Unanswered: counts as a failure (push fatigue); the push is not sent again.
            DUO_PUSHES.labels(result="timeout").inc()
            return FactorResult.reject(f"{factor}_timeout")
        if status.get("success"):
            DUO_PUSHES.labels(result="approved").inc()
            return FactorResult.accept(f"{factor}_approved")
        DUO_PUSHES.labels(result="denied").inc()
        return self._denied(factor, status)

    async def _sms(self, request: FactorRequest, pending: Mapping[str, Any]) -> FactorResult:
        # Sending passcodes completes in one request: no transaction to poll.
        answer = await self.api.auth(
            factor="sms",
            username=request.user.name,
            device="auto",
            ipaddr=client_ip(request),
        )
        if answer.get("status") == "sent":
            return FactorResult.prompted("duo_sms", None, pending, "sms_sent")
        if answer.get("result") == "allow":
            return FactorResult.accept("sms_allowed")
        return self._denied("sms", answer)

    async def _passcode(self, request: FactorRequest, passcode: str) -> FactorResult:
        # A passcode is verified in one request: no transaction to poll.
        answer = await self.api.auth(
            factor="passcode",
            username=request.user.name,
            passcode=passcode,
            ipaddr=client_ip(request),
        )
        if answer.get("result") == "allow":
            return FactorResult.accept("passcode_ok")
        return self._denied("passcode", answer)

    @staticmethod
    def _denied(factor: str, answer: Mapping[str, Any]) -> FactorResult:
        status = answer.get("status")
        message = answer.get("status_msg", "")
        if status == "timeout":
            # Ignored by the user: a failure like a denial (push fatigue).
            return with_prompt(Verdict.REJECT, f"{factor}_timeout", message)
        default = "bad_passcode" if factor == "passcode" else f"{factor}_denied"
        reason = DENY_REASONS.get(str(status), default)
        return with_prompt(Verdict.REJECT, reason, message)

    # -------------------------------------------------------------- plumbing

    def _unreachable(self, request: FactorRequest, exc: DuoError) -> FactorResult:
        """A preauth failure: the user was not asked yet, so this is where failmode may
        apply, and only to an outage (DuoFailure)."""
        user, error = request.user.name, str(exc)
        if isinstance(exc, DuoBusy):
            # Never fail open on our own load: one password holder could otherwise
            # start enough pushes to fill the bound and then log in without Duo.
            log.warning("duo_busy", user=user, error=error)
            return FactorResult.unavailable("duo_busy")
        if isinstance(exc, DuoRateLimited):
            log.warning("duo_rate_limited", user=user, error=error)
            return FactorResult.unavailable("duo_rate_limited")
        if not isinstance(exc, DuoFailure):
            # DuoMisconfigured: never fail open here, see the module docstring.
            log.error("duo_misconfigured", user=user, error=error)
            return FactorResult.unavailable("duo_misconfigured")
        if self.settings.failmode == "safe":
            log.warning("duo_failmode_safe", user=user, error=error)
            SECOND_FACTOR_ATTEMPTS.labels(method="duo", result="failmode_safe").inc()
            return FactorResult.accept("failmode_safe")
        log.warning("duo_unreachable", user=user, error=error)
        return FactorResult.unavailable("duo_unreachable")

    @staticmethod
    def _failed_after_prompt(request: FactorRequest, exc: DuoError) -> FactorResult:
        """Any error once the user was asked is a reject, whatever the failmode: what
        they typed or tapped was never confirmed by Duo."""
        DUO_PUSHES.labels(result="error").inc()
        log.warning(
            "duo_error_after_prompt",
            user=request.user.name,
            error=str(exc),
            kind=type(exc).__name__,
        )
        return with_prompt(Verdict.REJECT, "duo_error_after_prompt", MSG_AFTER_PROMPT, counts=False)


PENDING_VERIFIED = "verified_push"  # the preauth offer, in the challenge session
PENDING_PUSH = "push"  # a Verified Push sent and waiting for Duo's verdict
REFUSED: Mapping[Claim, FactorResult] = {
    Claim.PENDING: with_prompt(Verdict.REJECT, "push_pending", MSG_PUSH_PENDING, counts=False),
    Claim.LIMITED: with_prompt(Verdict.REJECT, "push_limited", MSG_PUSH_LIMITED, counts=False),
    Claim.INTERRUPTED: with_prompt(
        Verdict.REJECT, "push_interrupted", MSG_INTERRUPTED, counts=False
    ),
}


def build(config: MultifactorConfig, services: FactorServices) -> Factor:
    if config.duo is None:
        raise ValueError("duo is enabled but the 'duo' section is missing")
    return DuoFactor(config.duo, services.state)
