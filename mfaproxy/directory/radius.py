"""Primary password check against an upstream RADIUS server (PAP).

The user's name and password are forwarded in an Access-Request (User-Password hidden
as RFC 2865 section 5.2 says) to the configured servers in order, with retransmission
and failover done by mfaproxy.adapters.radius_client.

Outcomes:
- Access-Accept: ACCEPT, with the configured `pass_through_attributes` found in the
  reply (only those: the upstream must not be able to inject, say, a Session-Timeout
  or a VLAN the operator did not ask for). The identity is the User-Name of the Accept
  when it has one (RFC 2865 section 5.1: the name the NAS should use from then on),
  else the name asked about, both read through the realm rules and normalised; an
  Accept whose User-Name is no usable name is REJECT `upstream_identity_invalid`.
- Access-Reject: REJECT, reason `bad_password` (RFC 2865 does not say whether the user
  or the password was wrong, and we must not guess).
- Access-Challenge: REJECT, reason `upstream_challenge_unsupported`. An upstream that
  wants its own second round (its own OTP) cannot be relayed through our own challenge
  flow yet: the primary check must end in a yes or no. Operators who need it should
  let the upstream accept on the password and use mfaproxy's second factor instead.
- No server answered with a valid reply: UNAVAILABLE, reason `unreachable`; the
  caller fails closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog

from mfaproxy.adapters.radius_client import (
    MAX_PASSWORD_OCTETS,
    RadiusClient,
    RadiusReply,
    RadiusServer,
    RequestAttributes,
    observe_exchange,
)
from mfaproxy.config.directory import RadiusDirectoryConfig, RealmRule
from mfaproxy.core.identity import directory_identity
from mfaproxy.core.primary import (
    IdentityLookup,
    Located,
    LookupStatus,
    PrimaryOutcome,
    PrimaryResult,
    ReplyAttribute,
)
from mfaproxy.errors import UpstreamUnavailable, UpstreamUnsigned

log = structlog.get_logger(__name__)

SERVICE = "radius"


def servers_from_config(config: RadiusDirectoryConfig) -> list[RadiusServer]:
    return [
        RadiusServer(s.host, s.port, s.secret.get_secret_value().encode()) for s in config.servers
    ]


class RadiusChecker:
    """PasswordChecker that forwards PAP credentials to upstream RADIUS servers.

    `dictionary` is a pyrad Dictionary that must define the RFC 2865 attributes, the
    Message-Authenticator (RFC 2869) and every pass-through attribute.
    """

    name = "radius"

    def __init__(
        self, config: RadiusDirectoryConfig, dictionary: Any, realms: Sequence[RealmRule] = ()
    ) -> None:
        named = [*config.pass_through_attributes, *filter(None, [config.group_attribute])]
        unknown = [a for a in named if a not in dictionary]
        if unknown:
            raise ValueError(f"attributes not in the dictionary: {unknown}")
        self._config = config
        self._realms = tuple(realms)
        self._pass_through = frozenset(config.pass_through_attributes)
        self._down: str | None = None  # why the last exchange found no server
        self._client = RadiusClient(
            servers_from_config(config),
            dictionary,
            timeout=config.timeout,
            retries=config.retries,
            require_message_authenticator=config.require_message_authenticator,
            setting="directory.radius.require_message_authenticator: false",
        )

    async def locate(self, username: str) -> Located:
        # RADIUS has no question without the password: the identity comes with the
        # Accept only, so the password guard counts on the typed name (and the identity
        # it learnt from an earlier Accept) until then.
        return Located(username)

    async def verify(self, located: Located, password: str) -> PrimaryResult:
        return await self.authenticate(located.username, password)

    async def authenticate(self, username: str, password: str) -> PrimaryResult:
        if len(password.encode()) > MAX_PASSWORD_OCTETS:
            # Cannot be hidden in User-Password (RFC 2865 section 5.2): not a valid login.
            return self._result(PrimaryOutcome.REJECT, "password_too_long")
        attributes: RequestAttributes = {"User-Name": username}
        if self._config.nas_identifier:
            attributes = {**attributes, "NAS-Identifier": self._config.nas_identifier}
        started = asyncio.get_running_loop().time()
        try:
            reply = await self._client.access_request(attributes, password=password)
        except UpstreamUnavailable as exc:
            observe_exchange(SERVICE, started, "unavailable", (), self._client.servers)
            # Unsigned replies are a configuration mismatch, logged as such by the client.
            reason = "upstream_unsigned" if isinstance(exc, UpstreamUnsigned) else "unreachable"
            log.warning("radius_primary_unavailable", user=username, reason=reason)
            self._down = f"upstream RADIUS unavailable at the last login ({reason})"
            return self._result(PrimaryOutcome.UNAVAILABLE, reason)
        self._down = None
        result = self._interpret(reply, username)
        observe_exchange(
            SERVICE, started, result.outcome.value, (reply.server,), reply.failed_servers
        )
        return result

    async def health(self) -> str | None:
        """Passive: the last exchange's outcome. Many upstreams (NPS) do not answer
        Status-Server, so probing would call a working server down."""
        return self._down

    async def find_identity(self, username: str) -> IdentityLookup:
        # RADIUS has no lookup without a password (a Status-Server says nothing of users).
        return IdentityLookup(
            LookupStatus.UNKNOWN, detail="an upstream RADIUS server cannot be asked about a user"
        )

    async def close(self) -> None:
        # One socket per exchange: nothing is held between requests.
        return None

    def _interpret(self, reply: RadiusReply, username: str) -> PrimaryResult:
        if reply.accepted:
            identity = self._identity(reply, username)
            if identity is None:
                log.warning("radius_primary_identity_invalid", server=reply.server.label)
                return self._result(PrimaryOutcome.REJECT, "upstream_identity_invalid")
            return PrimaryResult(
                outcome=PrimaryOutcome.ACCEPT,
                backend=self.name,
                identity=identity,
                groups=self._groups(reply),
                reply_attributes=self._copy_attributes(reply),
            )
        if reply.challenged:
            log.warning("radius_primary_challenge_unsupported", server=reply.server.label)
            return self._result(PrimaryOutcome.REJECT, "upstream_challenge_unsupported")
        if reply.rejected:
            return self._result(PrimaryOutcome.REJECT, "bad_password")
        # Any other code in answer to an Access-Request is a protocol error: fail closed.
        log.warning(
            "radius_primary_unexpected_code", server=reply.server.label, packet_code=reply.code
        )
        return self._result(PrimaryOutcome.REJECT, "unexpected_reply")

    def _groups(self, reply: RadiusReply) -> frozenset[str] | None:
        """The values of group_attribute; None (no group data) when none is configured."""
        name = self._config.group_attribute
        if name is None:
            return None
        values = reply.attributes.get(name, ())
        return frozenset(
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values
        )

    def _identity(self, reply: RadiusReply, username: str) -> str | None:
        named = reply.first("User-Name")
        if named is None:
            return directory_identity(username, self._realms)
        text = named.decode("utf-8", "replace") if isinstance(named, bytes) else str(named)
        return directory_identity(text, self._realms)

    def _copy_attributes(self, reply: RadiusReply) -> tuple[ReplyAttribute, ...]:
        return tuple(
            ReplyAttribute(name, value)
            for name, values in reply.attributes.items()
            if name in self._pass_through
            for value in values
        )

    def _result(self, outcome: PrimaryOutcome, reason: str) -> PrimaryResult:
        return PrimaryResult(outcome=outcome, backend=self.name, reason=reason)
