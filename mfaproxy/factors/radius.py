"""The `radius` method: another RADIUS server (an OTP server) checks the second factor.

RSA Authentication Manager, privacyIDEA, LinOTP or a FreeRADIUS with an OTP module own
the user's token and its enrolment; mfaproxy only forwards what the user typed, as the
User-Password of an Access-Request (hidden as RFC 2865 section 5.2 says), and relays
the upstream's own challenge rounds to the NAS.

Challenge relay (RFC 2865 sections 4.4, 5.18 and 5.24): an upstream Access-Challenge
means "ask the user something else" (next token code, new PIN, a second code after a
resync). Its Reply-Message is the text to show, and its State must come back unchanged
in the next Access-Request. The upstream State never reaches the NAS: the NAS gets our
own State from the engine, and the upstream one waits in `pending` (as hex, since
`pending` must be JSON-compatible for a shared state store) until the user answers.

Outcomes of `check`:
- Access-Accept: ACCEPT `otp_ok`.
- Access-Reject: REJECT `bad_code`.
- Access-Challenge: CHALLENGE with the upstream prompt, pending `upstream_state`.
- another code: REJECT `unexpected_reply` (a protocol error: fail closed).
- no server gave a verified reply: UNAVAILABLE `unreachable` (`upstream_unsigned` when
  a server answered without the Message-Authenticator we require).

The typed answer is never logged, nor is any State value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

import structlog

from mfaproxy.adapters.radius_client import (
    MAX_PASSWORD_OCTETS,
    RadiusClient,
    RadiusReply,
    RadiusServer,
    RequestAttributes,
    observe_exchange,
)
from mfaproxy.config.multifactor import MultifactorConfig, OtpRadiusServer, RadiusMethodConfig
from mfaproxy.errors import UpstreamUnavailable, UpstreamUnsigned
from mfaproxy.factors.base import Factor, FactorRequest, FactorResult, FactorServices, FactorUser
from mfaproxy.otp.codes import digit_code
from mfaproxy.radius.constants import MAX_STRING_OCTETS
from mfaproxy.radius.text import reply_message

log = structlog.get_logger(__name__)

SERVICE: Final = "otp_radius"
# Shown when an upstream Access-Challenge carries no Reply-Message (RFC 2865 section
# 5.18 makes it optional), so the user still sees a question.
NEXT_PROMPT: Final = "Enter the next code"
PENDING_STATE: Final = "upstream_state"
PENDING_ROUNDS: Final = "upstream_rounds"
# An upstream that keeps challenging (broken, or hostile) must not hold a login open
# forever; real OTP servers need two or three rounds at most (new PIN, next code).
MAX_ROUNDS: Final = 8


def strip_domain(login_name: str) -> str:
    """`DOMAIN\\user`, `user@realm` and `DOMAIN\\user@realm` give `user`.

    Only the last `@` starts the realm, so `first@last@realm` keeps `first@last`. A name
    that would become empty (`@realm`) is sent as it came: the upstream decides.
    """
    bare = login_name.rpartition("\\")[2]
    if "@" in bare:
        bare = bare.rpartition("@")[0]
    return bare or login_name


def upstream_prompt(reply: RadiusReply) -> str:
    """The text of an upstream Access-Challenge, made fit for our own Reply-Message.

    RFC 2865 section 5.18: several Reply-Messages are displayed in packet order, as one
    text (long messages are split across attributes), so they are joined without a
    separator, then made fit for one Reply-Message by the one rule (radius/text.py).
    """
    parts = [
        value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
        for value in reply.attributes.get("Reply-Message", ())
    ]
    return reply_message("".join(parts)) or NEXT_PROMPT


def _server(settings: OtpRadiusServer) -> RadiusServer:
    # The schema already refused host names (replies are matched by source address).
    return RadiusServer(settings.host, settings.port, settings.secret.get_secret_value().encode())


def _servers(config: RadiusMethodConfig) -> list[RadiusServer]:
    servers = [_server(config.server)]
    if config.failover is not None:
        servers.append(_server(config.failover))
    return servers


class RadiusFactor:
    name = "radius"
    code_length: int | None = None  # tokens differ (6 or 8 digits, PIN + code...)
    keywords: frozenset[str] = frozenset()

    def __init__(self, config: RadiusMethodConfig, client: RadiusClient) -> None:
        nas_id = config.nas_identifier
        # RFC 2865 section 5.32: NAS-Identifier is a string of at most 253 octets.
        if nas_id is not None and len(nas_id.encode()) > MAX_STRING_OCTETS:
            raise ValueError("multifactor.radius.nas_identifier is over 253 octets")
        self._config = config
        self._client = client

    @property
    def client(self) -> RadiusClient:
        return self._client

    def looks_like_code(self, text: str) -> bool:
        # OTP tokens: 4 to 12 digits (PIN-prefixed codes need a challenge).
        return digit_code(text, 4, 12) is not None

    def is_enrolled(self, user: FactorUser) -> bool:
        return True  # the OTP server owns tokens and enrolment; it says no if need be

    def can_enrol_inline(self, user: FactorUser) -> bool:
        return False

    async def begin(self, request: FactorRequest) -> FactorResult:
        # No network call: the upstream is asked only once there is a code to check.
        return FactorResult.prompted("otp")

    async def check(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        if len(answer.encode()) > MAX_PASSWORD_OCTETS:
            # Cannot be hidden in User-Password (RFC 2865 section 5.2): not a valid code.
            return FactorResult.reject("malformed_code")
        try:
            state = _pending_state(pending)
        except ValueError:
            log.warning("otp_radius_bad_pending", user=request.user.name)
            return FactorResult.reject("invalid_pending", counts_as_failure=False)
        rounds = _pending_rounds(pending)
        started = asyncio.get_running_loop().time()
        try:
            reply = await self._client.access_request(
                self._attributes(request), password=answer, state=state
            )
        except UpstreamUnavailable as exc:
            observe_exchange(SERVICE, started, "unavailable", (), self._client.servers)
            # Unsigned replies are a configuration mismatch, logged as such by the client.
            reason = "upstream_unsigned" if isinstance(exc, UpstreamUnsigned) else "unreachable"
            log.warning("otp_radius_unavailable", user=request.user.name, reason=reason)
            return FactorResult.unavailable(reason)
        except ValueError as exc:  # an attribute that does not encode; not the user's fault
            log.warning("otp_radius_request_unencodable", user=request.user.name, error=str(exc))
            return FactorResult.reject("unencodable_request", counts_as_failure=False)
        result = self._interpret(reply, request, rounds)
        observe_exchange(
            SERVICE, started, result.verdict.value, (reply.server,), reply.failed_servers
        )
        return result

    async def begin_enrolment(self, request: FactorRequest) -> FactorResult:
        return FactorResult.reject("enrolment_not_supported", counts_as_failure=False)

    async def finish_enrolment(
        self, request: FactorRequest, answer: str, pending: Mapping[str, Any]
    ) -> FactorResult:
        return FactorResult.reject("enrolment_not_supported", counts_as_failure=False)

    async def close(self) -> None:
        # RadiusClient opens one socket per exchange: nothing is held between requests.
        return None

    def _attributes(self, request: FactorRequest) -> RequestAttributes:
        # The identity, not the name as typed: an alias spelling must not reach another
        # user (or no user) on the OTP server.
        identity = request.user.name
        name = strip_domain(identity) if self._config.strip_domain else identity
        attributes: dict[str, str] = {"User-Name": name}
        if self._config.nas_identifier:
            attributes["NAS-Identifier"] = self._config.nas_identifier
        return attributes

    def _interpret(self, reply: RadiusReply, request: FactorRequest, rounds: int) -> FactorResult:
        if reply.accepted:
            return FactorResult.accept("otp_ok")
        if reply.rejected:
            return FactorResult.reject("bad_code")
        if reply.challenged:
            if rounds + 1 >= MAX_ROUNDS:
                log.warning("otp_radius_too_many_rounds", user=request.user.name, rounds=rounds)
                return FactorResult.reject("too_many_rounds")
            pending: dict[str, Any] = {PENDING_ROUNDS: rounds + 1}
            # RFC 2865 section 5.24: State is optional in an Access-Challenge; when it is
            # present it must be returned unmodified with the answer.
            if reply.state is not None:
                pending[PENDING_STATE] = reply.state.hex()
            return FactorResult.challenge(upstream_prompt(reply), pending)
        # RFC 2865 section 4: only Accept, Reject or Challenge answer an Access-Request.
        log.warning("otp_radius_unexpected_code", server=reply.server.label, packet_code=reply.code)
        return FactorResult.reject("unexpected_reply", counts_as_failure=False)


def _pending_state(pending: Mapping[str, Any]) -> bytes | None:
    """The upstream State kept from the previous round; ValueError when it is corrupt."""
    value = pending.get(PENDING_STATE)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("upstream_state is not a hex string")
    return bytes.fromhex(value)


def _pending_rounds(pending: Mapping[str, Any]) -> int:
    value = pending.get(PENDING_ROUNDS, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def build(config: MultifactorConfig, services: FactorServices) -> Factor:
    settings = config.radius
    if settings is None:
        raise ValueError("the radius method is enabled but multifactor.radius is missing")
    client = RadiusClient(
        _servers(settings),
        services.dictionary,
        timeout=settings.timeout,
        retries=settings.retries,
        require_message_authenticator=settings.require_message_authenticator,
        setting="multifactor.radius.require_message_authenticator: false",
    )
    return RadiusFactor(settings, client)
