"""An asyncio RADIUS client for Access-Request and Accounting-Request exchanges, on top
of pyrad's codec (access) and radius/accounting.py (accounting).

pyrad's bundled clients block (or poll) in their own send loops; this module only borrows
pyrad's packet encoding, password hiding and reply verification, and does the I/O with
an asyncio DatagramProtocol.

Design choices, with the rules they follow:

- One connected UDP socket per exchange with one server. The kernel then gives each
  exchange its own source port, so the 8-bit Identifier never collides with another
  request in flight (RFC 2865 section 3 only requires uniqueness per source port), and
  the kernel already drops datagrams from other peers; we check the peer address again.
- Every Access-Request carries a Message-Authenticator as its first attribute
  (RFC 3579 section 3.2, and the BlastRADIUS advice of CVE-2024-3596).
- A timeout retransmits the *same* datagram, same Identifier and Request Authenticator
  (RFC 5080 section 2.2.1), so the server can recognise the duplicate; after `retries`
  retransmissions the next server is tried with a fresh packet (new Identifier,
  authenticator, and the password hidden again with that server's secret).
- A reply is accepted only when `VerifyReply` passes: matching Identifier, Response
  Authenticator (RFC 2865 section 3), Message-Authenticator when present or required,
  no injected Proxy-State. Anything else is ignored, not treated as an answer, so a
  forged or corrupted datagram cannot end an exchange early.

ICMP errors (port unreachable) are not treated as a final answer either: they are not
authenticated, so we keep waiting for the timeout as FreeRADIUS does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import structlog
from pyrad import packet as radpacket

from mfaproxy.errors import UpstreamUnavailable, UpstreamUnsigned
from mfaproxy.observability import metrics
from mfaproxy.radius import accounting
from mfaproxy.radius.constants import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    ACCESS_REQUEST,
    ACCOUNTING_RESPONSE,
    ATTR_MESSAGE_AUTHENTICATOR,
    STATUS_SERVER,
)

log = structlog.get_logger(__name__)

AttributeValue: TypeAlias = str | int | bytes
# Values given for a request attribute: one value or several (repeated attribute).
RequestAttributes: TypeAlias = Mapping[str, AttributeValue | Sequence[AttributeValue]]


# RFC 2865 section 5.2: User-Password is at most 128 octets.
MAX_PASSWORD_OCTETS = 128
# Where an operator turns off the Message-Authenticator requirement on replies; each
# caller names its own configuration key.
DEFAULT_SETTING = "require_message_authenticator: false"


class UnsignedReply(Exception):
    """A reply that verifies except that it carries no Message-Authenticator."""


# Errors a hostile or broken reply can make pyrad's decoders raise.
_DECODE_ERRORS = (
    radpacket.PacketError,
    struct.error,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    UnicodeDecodeError,
)


@dataclass(frozen=True)
class RadiusServer:
    """One upstream server: an IP literal, a UDP port and its shared secret."""

    host: str
    port: int
    secret: bytes = field(repr=False)

    @property
    def label(self) -> str:
        """`host:port` (`[v6]:port`), for logs and metric labels; never the secret."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RadiusReply:
    """A verified reply to an Access-Request.

    `attributes` maps dictionary names to their decoded values in packet order.
    Attributes unknown to the dictionary and the Message-Authenticator are left out.
    """

    code: int
    attributes: Mapping[str, tuple[AttributeValue, ...]]
    # The server that answered, and those that were tried before it and failed.
    server: RadiusServer
    failed_servers: tuple[RadiusServer, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.code == ACCESS_ACCEPT

    @property
    def rejected(self) -> bool:
        return self.code == ACCESS_REJECT

    @property
    def challenged(self) -> bool:
        return self.code == ACCESS_CHALLENGE

    def first(self, name: str) -> AttributeValue | None:
        values = self.attributes.get(name, ())
        return values[0] if values else None

    @property
    def state(self) -> bytes | None:
        """The State to send back with the answer to an Access-Challenge (RFC 2865 5.24)."""
        value = self.first("State")
        if isinstance(value, str):
            return value.encode()
        return value if isinstance(value, bytes) else None


def _same_peer(addr: Any, server: RadiusServer) -> bool:
    try:
        return bool(
            ipaddress.ip_address(addr[0]) == ipaddress.ip_address(server.host)
            and addr[1] == server.port
        )
    except (ValueError, TypeError, IndexError):
        return False


class _Exchange(asyncio.DatagramProtocol):
    """Receives on one exchange's socket; resolves `reply` with the first valid reply.

    `accept` turns a datagram into the verified reply, or None when it does not verify."""

    def __init__(
        self,
        server: RadiusServer,
        accept: Callable[[bytes], Any | None],
        setting: str = DEFAULT_SETTING,
    ) -> None:
        self._server = server
        self._setting = setting
        # A reply came that was right in all but its missing Message-Authenticator.
        self.unsigned = False
        self._accept = accept
        self.reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.reply.done():
            return
        if not _same_peer(addr, self._server):
            self._ignore("wrong_peer")
            return
        try:
            reply = self._accept(data)
        except UnsignedReply:
            self.unsigned = True
            log.error(
                "radius_reply_unsigned",
                server=self._server.label,
                detail="the server answers without Message-Authenticator, so its reply is"
                " refused (BlastRADIUS, CVE-2024-3596); FreeRADIUS before 3.2.5 and NPS"
                " before the July 2024 update do not sign replies",
                fix=f"make the server sign its replies, or set {self._setting}"
                " (and accept the risk)",
            )
            return
        except _DECODE_ERRORS:
            self._ignore("malformed")
            return
        if reply is None:
            self._ignore("verification_failed")
            return
        self.reply.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # Usually ICMP port unreachable: unauthenticated, so only noted.
        log.debug("radius_client_socket_error", server=self._server.label, error=str(exc))

    def _ignore(self, reason: str) -> None:
        log.warning("radius_reply_ignored", server=self._server.label, reason=reason)


def _access_reply(request: Any, require_ma: bool) -> Callable[[bytes], Any | None]:
    """Accept a reply to an Access-Request: pyrad's `VerifyReply` (Identifier, Response
    Authenticator, Message-Authenticator, no injected Proxy-State)."""

    def accept(data: bytes) -> Any | None:
        reply = request.CreateReply(packet=data)
        if not request.VerifyReply(reply, data, enforce_ma=require_ma):
            unsigned = require_ma and ATTR_MESSAGE_AUTHENTICATOR not in reply
            if unsigned and request.VerifyReply(reply, data, enforce_ma=False):
                raise UnsignedReply  # authentic by its Response Authenticator, not signed
            return None
        # Salt-encrypted reply attributes (RFC 2868 3.5) decrypt with the request's
        # authenticator, which pyrad only finds here.
        reply.request_authenticator = request.authenticator
        return reply

    return accept


def _decode_attributes(reply: Any) -> dict[str, tuple[AttributeValue, ...]]:
    """Decode every dictionary-known attribute; skip (and log) undecodable ones."""
    decoded: dict[str, tuple[AttributeValue, ...]] = {}
    # pyrad's keys() names the attributes; iterating the packet would give raw codes.
    for key in reply.keys():  # noqa: SIM118
        if not isinstance(key, str) or key == "Message-Authenticator":
            continue
        try:
            values = reply[key]
        except _DECODE_ERRORS:
            log.warning("radius_attribute_undecodable", attribute=key)
            continue
        kept = tuple(v for v in values if isinstance(v, str | int | bytes))
        if kept:
            decoded[key] = kept
    return decoded


def _accounting_reply(
    identifier: int, authenticator: bytes, secret: bytes
) -> Callable[[bytes], bytes | None]:
    """Accept the Accounting-Response to one Accounting-Request (RFC 2866 section 3)."""

    def accept(data: bytes) -> bytes | None:
        valid = accounting.verify_response(data, identifier, authenticator, secret)
        return data if valid else None

    return accept


class RadiusClient:
    """Sends Access-Requests to a list of servers in order, with retransmission and
    failover. Stateless between calls, so one instance serves concurrent requests."""

    def __init__(
        self,
        servers: Sequence[RadiusServer],
        dictionary: Any,
        *,
        timeout: float = 3.0,
        retries: int = 2,
        require_message_authenticator: bool = True,
        setting: str = DEFAULT_SETTING,
    ) -> None:
        if not servers:
            raise ValueError("at least one RADIUS server is needed")
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        self._servers = tuple(servers)
        self._dictionary = dictionary
        self._timeout = timeout
        self._retries = retries
        self._require_ma = require_message_authenticator
        # The configuration key that accepts unsigned replies, named in the log.
        self._setting = setting

    @property
    def servers(self) -> tuple[RadiusServer, ...]:
        return self._servers

    async def access_request(
        self,
        attributes: RequestAttributes,
        *,
        password: str | None = None,
        state: bytes | None = None,
    ) -> RadiusReply:
        """Send an Access-Request and return the first verified reply.

        `attributes` are given by dictionary name. `password` is hidden into User-Password
        (RFC 2865 section 5.2); `state` is the State of a previous Access-Challenge
        (RFC 2865 section 5.24). Raises UpstreamUnavailable when no server answered,
        ValueError when the request cannot be encoded (unknown attribute, password over
        128 octets).
        """
        if password is not None and len(password.encode()) > MAX_PASSWORD_OCTETS:
            raise ValueError("User-Password is limited to 128 octets (RFC 2865 section 5.2)")
        failed: list[RadiusServer] = []
        unsigned: list[RadiusServer] = []
        for server in self._servers:
            request, raw = self._build(server, attributes, password, state)
            accept = _access_reply(request, self._require_ma)
            reply = await self._exchange(server, raw, accept, unsigned)
            if reply is not None:
                return RadiusReply(
                    code=int(reply.code),
                    attributes=_decode_attributes(reply),
                    server=server,
                    failed_servers=tuple(failed),
                )
            failed.append(server)
        labels = ", ".join(s.label for s in self._servers)
        if unsigned:
            names = ", ".join(s.label for s in unsigned)
            raise UpstreamUnsigned(f"RADIUS servers {names} answered without Message-Authenticator")
        raise UpstreamUnavailable(f"no valid answer from RADIUS servers {labels}")

    def _build(
        self,
        server: RadiusServer,
        attributes: RequestAttributes,
        password: str | None,
        state: bytes | None,
    ) -> tuple[Any, bytes]:
        """A new Access-Request for `server` (its secret hides the password), encoded."""
        try:
            request = radpacket.AuthPacket(
                code=ACCESS_REQUEST,
                id=secrets.randbelow(256),
                secret=server.secret,
                dict=self._dictionary,
            )
            # Sets the random Request Authenticator too (RFC 2865 section 3).
            request.add_message_authenticator()
            for name, value in attributes.items():
                if isinstance(value, str | int | bytes):
                    request.AddAttribute(name, value)
                else:
                    request.AddAttribute(name, list(value))
            if password is not None:
                request["User-Password"] = request.PwCrypt(password)
            if state is not None:
                request["State"] = state
            raw = cast(bytes, request.RequestPacket())
        except KeyError as exc:
            raise ValueError(f"attribute {exc} is not in the RADIUS dictionary") from exc
        except (TypeError, struct.error) as exc:
            raise ValueError(f"an attribute value does not fit its type: {exc}") from exc
        return request, raw

    async def status_server(self, server: RadiusServer) -> int | None:
        """Ask one server whether it is alive (Status-Server, RFC 5997 section 3: sent
        with a Message-Authenticator, answered with Access-Accept). Returns the code of
        its answer, None when no valid one came. The answer's Response Authenticator is
        checked (so the shared secret is right) but no Message-Authenticator is required
        of it: servers that sign their Access-Accepts often leave it out here
        (FreeRADIUS 3.2.1 does), and it proves nothing about their logins either way."""
        try:
            request = radpacket.AuthPacket(
                code=STATUS_SERVER,
                id=secrets.randbelow(256),
                secret=server.secret,
                dict=self._dictionary,
            )
            request.add_message_authenticator()
            raw = cast(bytes, request.RequestPacket())
        except (KeyError, TypeError, struct.error) as exc:
            raise ValueError(f"cannot encode a Status-Server: {exc}") from exc
        reply = await self._exchange(server, raw, _access_reply(request, require_ma=False))
        return int(reply.code) if reply is not None else None

    async def accounting_request(self, attributes: accounting.Attributes) -> RadiusReply:
        """Forward an accounting record (raw attributes, in order) as an Accounting-Request
        (RFC 2866) and return once a server acknowledged it with a verified
        Accounting-Response. Each server gets a packet of its own (new Identifier, Request
        Authenticator under its secret); retransmissions repeat it unchanged. Raises
        UpstreamUnavailable when no server acknowledged."""
        failed: list[RadiusServer] = []
        for server in self._servers:
            identifier = secrets.randbelow(256)
            raw, authenticator = accounting.encode_request(identifier, attributes, server.secret)
            accept = _accounting_reply(identifier, authenticator, server.secret)
            if await self._exchange(server, raw, accept) is not None:
                return RadiusReply(ACCOUNTING_RESPONSE, {}, server, tuple(failed))
            failed.append(server)
        labels = ", ".join(s.label for s in self._servers)
        raise UpstreamUnavailable(f"no accounting server acknowledged: {labels}")

    async def _exchange(
        self,
        server: RadiusServer,
        raw: bytes,
        accept: Callable[[bytes], Any | None],
        unsigned: list[RadiusServer] | None = None,
    ) -> Any | None:
        """Send `raw` to one server, retransmitting it unchanged on timeout; `server` is
        added to `unsigned` when it answered, but without a Message-Authenticator."""
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Exchange(server, accept, self._setting),
                remote_addr=(server.host, server.port),
            )
        except OSError as exc:
            log.warning("radius_server_unreachable", server=server.label, error=exc.strerror)
            return None
        try:
            for attempt in range(self._retries + 1):
                transport.sendto(raw)
                done, _ = await asyncio.wait({protocol.reply}, timeout=self._timeout)
                if done:
                    return protocol.reply.result()
                log.info("radius_server_timeout", server=server.label, attempt=attempt + 1)
            return None
        finally:
            transport.close()
            protocol.reply.cancel()
            if protocol.unsigned and unsigned is not None:
                unsigned.append(server)


def observe_exchange(
    service: str,
    started: float,
    result: str,
    up: tuple[RadiusServer, ...],
    down: tuple[RadiusServer, ...],
) -> None:
    """Record one exchange in the upstream metrics. The client keeps none itself: the
    caller knows which service (primary directory, OTP server) the servers are."""
    elapsed = asyncio.get_running_loop().time() - started
    metrics.UPSTREAM_LATENCY.labels(service=service, result=result).observe(elapsed)
    for server in down:
        metrics.UPSTREAM_UP.labels(service=service, server=server.label).set(0)
    for server in up:
        metrics.UPSTREAM_UP.labels(service=service, server=server.label).set(1)
