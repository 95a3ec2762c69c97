"""RADIUS accounting (RFC 2866) packet rules: verify an Accounting-Request, read the
record it carries, build the Accounting-Response and the copy forwarded upstream.

Pure: bytes in, values out. Every check that can make us drop a packet raises a
`PeerError` subclass whose `reason` is the metric label. Attributes are read straight
from the wire (no dictionary needed): the record's fields are fixed by RFC 2866.

Authenticators, as FreeRADIUS computes them (and pyrad, and radclient):

- Request Authenticator of an Accounting-Request (RFC 2866 section 3): MD5 over Code,
  Identifier, Length, 16 zero octets, the attributes and the shared secret.
- Message-Authenticator (RFC 3579 section 3.2), allowed in any packet: HMAC-MD5 over the
  packet with the attribute's value zeroed; the Authenticator field holds 16 zero octets
  for an Accounting-Request and its Accounting-Response (RFC 5176 section 3.3 uses the
  same rule), and the Request Authenticator for Status-Server and the answer to it
  (RFC 5997 section 3).
- Response Authenticator (RFC 2866 section 3): MD5 over Code, Identifier, Length, the
  request's Request Authenticator, the attributes and the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from mfaproxy.errors import (
    AccessOnAccountingPort,
    BadMessageAuthenticator,
    BadRequestAuthenticator,
    MissingMessageAuthenticator,
    PeerError,
    UnsupportedCode,
)
from mfaproxy.radius import constants as c
from mfaproxy.radius.codec import read_header, split_attributes

Attributes = tuple[tuple[int, bytes], ...]
ZERO_VECTOR = bytes(16)

# RFC 2866 section 5.1 (and RFC 2867 for the tunnel values, left as "other"): bounded
# metric labels. Anything else, or no Acct-Status-Type at all, is "other".
STATUS_TYPES = {
    1: "start",
    2: "stop",
    3: "interim_update",
    7: "accounting_on",
    8: "accounting_off",
    15: "failed",
}
STATUS_OTHER = "other"

# RFC 2866 section 5.10, RFC 3580 section 3.32 (the names FreeRADIUS prints).
TERMINATE_CAUSES = {
    1: "User-Request",
    2: "Lost-Carrier",
    3: "Lost-Service",
    4: "Idle-Timeout",
    5: "Session-Timeout",
    6: "Admin-Reset",
    7: "Admin-Reboot",
    8: "Port-Error",
    9: "NAS-Error",
    10: "NAS-Request",
    11: "NAS-Reboot",
    12: "Port-Unneeded",
    13: "Port-Preempted",
    14: "Port-Suspended",
    15: "Service-Unavailable",
    16: "Callback",
    17: "User-Error",
    18: "Host-Request",
    19: "Supplicant-Restart",
    20: "Reauthentication-Failure",
    21: "Port-Reinitialized",
    22: "Port-Administratively-Disabled",
}

# Attributes hidden with the NAS's secret and Request Authenticator cannot be forwarded
# as they are, and the Message-Authenticator is recomputed (or left out) per hop.
NOT_FORWARDED = frozenset(
    {
        c.ATTR_USER_PASSWORD,
        c.ATTR_CHAP_PASSWORD,
        c.ATTR_TUNNEL_PASSWORD,
        c.ATTR_MESSAGE_AUTHENTICATOR,
    }
)


@dataclass(frozen=True)
class AccountingRecord:
    """What an Accounting-Request says about a session, for the audit log."""

    status_type: str
    status_value: int | None
    user_name: str | None = None
    session_id: str | None = None
    multi_session_id: str | None = None
    nas_ip_address: str | None = None
    nas_identifier: str | None = None
    nas_port: int | None = None
    calling_station_id: str | None = None
    called_station_id: str | None = None
    framed_ip_address: str | None = None
    framed_ipv6_address: str | None = None
    # Octet counters include the Gigawords attributes (RFC 2869 section 5.1-5.2).
    input_octets: int | None = None
    output_octets: int | None = None
    input_packets: int | None = None
    output_packets: int | None = None
    session_time: int | None = None
    terminate_cause: str | None = None
    delay_time: int | None = None
    event_timestamp: int | None = None

    def log_fields(self) -> dict[str, Any]:
        """The fields present, for one audit event (absent ones are left out)."""
        fields = {k: v for k, v in self.__dict__.items() if v is not None}
        fields.pop("status_value", None)
        if "user_name" in fields:  # the key the auth_decision events use
            fields["user"] = fields.pop("user_name")
        if self.status_type == STATUS_OTHER:
            fields["status_type_value"] = self.status_value
        return fields


@dataclass(frozen=True)
class AccountingPacket:
    """One verified Accounting-Request (or Status-Server) from an accounting port."""

    code: int
    identifier: int
    authenticator: bytes
    attributes: Attributes
    signed: bool  # carried a Message-Authenticator, so the answer carries one too
    record: AccountingRecord | None  # None for Status-Server

    @property
    def proxy_states(self) -> tuple[bytes, ...]:
        return tuple(v for t, v in self.attributes if t == c.ATTR_PROXY_STATE)


# --------------------------------------------------------------------------- values


# The first value of each attribute type: what the record's fields read.
FirstValues = dict[int, bytes]


def _text(first: FirstValues, attr_type: int) -> str | None:
    value = first.get(attr_type)
    return value.decode("utf-8", errors="replace") if value is not None else None


def _integer(first: FirstValues, attr_type: int) -> int | None:
    """A 32-bit unsigned integer (RFC 2865 section 5); any other length reads as absent."""
    value = first.get(attr_type)
    if value is None or len(value) != 4:
        return None
    return int(struct.unpack("!I", value)[0])


def _address(first: FirstValues, attr_type: int, size: int) -> str | None:
    value = first.get(attr_type)
    if value is None or len(value) != size:
        return None
    return str(ipaddress.ip_address(value))


def _octets(first: FirstValues, low: int, high: int) -> int | None:
    octets = _integer(first, low)
    if octets is None:
        return None
    return ((_integer(first, high) or 0) << 32) + octets


def read_record(attrs: Attributes) -> AccountingRecord:
    first: FirstValues = {}
    for attr_type, value in attrs:
        first.setdefault(attr_type, value)
    status = _integer(first, c.ATTR_ACCT_STATUS_TYPE)
    cause = _integer(first, c.ATTR_ACCT_TERMINATE_CAUSE)
    nas_ip = _address(first, c.ATTR_NAS_IP_ADDRESS, 4) or _address(
        first, c.ATTR_NAS_IPV6_ADDRESS, 16
    )
    return AccountingRecord(
        status_type=STATUS_TYPES.get(status, STATUS_OTHER) if status is not None else STATUS_OTHER,
        status_value=status,
        user_name=_text(first, c.ATTR_USER_NAME),
        session_id=_text(first, c.ATTR_ACCT_SESSION_ID),
        multi_session_id=_text(first, c.ATTR_ACCT_MULTI_SESSION_ID),
        nas_ip_address=nas_ip,
        nas_identifier=_text(first, c.ATTR_NAS_IDENTIFIER),
        nas_port=_integer(first, c.ATTR_NAS_PORT),
        calling_station_id=_text(first, c.ATTR_CALLING_STATION_ID),
        called_station_id=_text(first, c.ATTR_CALLED_STATION_ID),
        framed_ip_address=_address(first, c.ATTR_FRAMED_IP_ADDRESS, 4),
        framed_ipv6_address=_address(first, c.ATTR_FRAMED_IPV6_ADDRESS, 16),
        input_octets=_octets(first, c.ATTR_ACCT_INPUT_OCTETS, c.ATTR_ACCT_INPUT_GIGAWORDS),
        output_octets=_octets(first, c.ATTR_ACCT_OUTPUT_OCTETS, c.ATTR_ACCT_OUTPUT_GIGAWORDS),
        input_packets=_integer(first, c.ATTR_ACCT_INPUT_PACKETS),
        output_packets=_integer(first, c.ATTR_ACCT_OUTPUT_PACKETS),
        session_time=_integer(first, c.ATTR_ACCT_SESSION_TIME),
        terminate_cause=TERMINATE_CAUSES.get(cause, str(cause)) if cause is not None else None,
        delay_time=_integer(first, c.ATTR_ACCT_DELAY_TIME),
        event_timestamp=_integer(first, c.ATTR_EVENT_TIMESTAMP),
    )


# --------------------------------------------------------------------------- wire


def encode_attributes(attrs: Attributes) -> bytes:
    return b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)


def _zero_message_authenticator(attrs: Attributes) -> bytes:
    return encode_attributes(
        tuple((t, ZERO_VECTOR if t == c.ATTR_MESSAGE_AUTHENTICATOR else v) for t, v in attrs)
    )


def _message_authenticator(header: bytes, vector: bytes, attrs: Attributes, secret: bytes) -> bytes:
    """RFC 3579 section 3.2 over `header` (Code, Identifier, Length) and `vector`."""
    body = _zero_message_authenticator(attrs)
    return hmac.new(secret, header + vector + body, hashlib.md5).digest()


def request_authenticator(header: bytes, body: bytes, secret: bytes) -> bytes:
    """RFC 2866 section 3: the Request Authenticator of an Accounting-Request."""
    return hashlib.md5(header + ZERO_VECTOR + body + secret).digest()


def _check_message_authenticator(
    header: bytes, vector: bytes, attrs: Attributes, secret: bytes
) -> bool:
    values = [v for t, v in attrs if t == c.ATTR_MESSAGE_AUTHENTICATOR]
    if not values:
        return False
    if len(values) != 1 or len(values[0]) != 16:
        raise BadMessageAuthenticator("Message-Authenticator must appear once, 16 octets")
    expected = _message_authenticator(header, vector, attrs, secret)
    if not hmac.compare_digest(expected, values[0]):
        raise BadMessageAuthenticator("Message-Authenticator does not verify")
    return True


def decode_accounting(data: bytes, secret: bytes) -> AccountingPacket:
    """Decode and verify one datagram received on an accounting port."""
    header = read_header(data)
    raw = data[: header.length]  # RFC 2865 section 3: octets past Length are padding
    if header.code == c.ACCESS_REQUEST:
        raise AccessOnAccountingPort("Access-Request sent to an accounting port")
    if header.code not in (c.ACCOUNTING_REQUEST, c.STATUS_SERVER):
        raise UnsupportedCode(f"code {header.code} is not served on an accounting port")
    attrs = tuple(split_attributes(raw[c.MIN_LENGTH :]))
    if header.code == c.STATUS_SERVER:
        # RFC 5997 section 3: random Request Authenticator, Message-Authenticator required.
        if not _check_message_authenticator(raw[:4], header.authenticator, attrs, secret):
            raise MissingMessageAuthenticator("Status-Server without Message-Authenticator")
        return AccountingPacket(
            header.code, header.identifier, header.authenticator, attrs, True, None
        )
    expected = request_authenticator(raw[:4], raw[c.MIN_LENGTH :], secret)
    if not hmac.compare_digest(expected, header.authenticator):
        raise BadRequestAuthenticator("Request Authenticator does not verify (wrong secret?)")
    signed = _check_message_authenticator(raw[:4], ZERO_VECTOR, attrs, secret)
    return AccountingPacket(
        header.code, header.identifier, header.authenticator, attrs, signed, read_record(attrs)
    )


def encode_response(request: AccountingPacket, secret: bytes) -> bytes:
    """The Accounting-Response: Message-Authenticator first when the request was signed
    (always for Status-Server), then the Proxy-State attributes unchanged and in order
    (RFC 2866 section 4.2 copies RFC 2865's rule).

    Its attributes are a subset of the request's, so it is never longer than the
    request, hence never over 4,096 octets (RFC 2865 section 3)."""
    attrs: list[tuple[int, bytes]] = []
    if request.signed:
        attrs.append((c.ATTR_MESSAGE_AUTHENTICATOR, ZERO_VECTOR))
    attrs += [(c.ATTR_PROXY_STATE, value) for value in request.proxy_states]
    length = c.MIN_LENGTH + len(encode_attributes(tuple(attrs)))
    header = struct.pack("!BBH", c.ACCOUNTING_RESPONSE, request.identifier, length)
    if request.signed:
        vector = request.authenticator if request.code == c.STATUS_SERVER else ZERO_VECTOR
        mac = _message_authenticator(header, vector, tuple(attrs), secret)
        attrs[0] = (c.ATTR_MESSAGE_AUTHENTICATOR, mac)
    body = encode_attributes(tuple(attrs))
    response = hashlib.md5(header + request.authenticator + body + secret).digest()
    return header + response + body


def forwarded_attributes(request: AccountingPacket) -> Attributes:
    """What goes upstream: every attribute in order, less those bound to the NAS's secret."""
    return tuple((t, v) for t, v in request.attributes if t not in NOT_FORWARDED)


def encode_request(identifier: int, attrs: Attributes, secret: bytes) -> tuple[bytes, bytes]:
    """An Accounting-Request for an upstream server; returns (packet, its authenticator)."""
    body = encode_attributes(attrs)
    length = c.MIN_LENGTH + len(body)
    if length > c.MAX_LENGTH:
        raise ValueError(f"Accounting-Request of {length} octets exceeds 4096")
    header = struct.pack("!BBH", c.ACCOUNTING_REQUEST, identifier, length)
    authenticator = request_authenticator(header, body, secret)
    return header + authenticator + body, authenticator


def verify_response(data: bytes, identifier: int, authenticator: bytes, secret: bytes) -> bool:
    """Whether `data` is the upstream's Accounting-Response to our request: Identifier,
    Response Authenticator, and Message-Authenticator when present. Never raises."""
    try:
        header = read_header(data)
        raw = data[: header.length]
        attrs = tuple(split_attributes(raw[c.MIN_LENGTH :]))
        if header.code != c.ACCOUNTING_RESPONSE or header.identifier != identifier:
            return False
        expected = hashlib.md5(raw[:4] + authenticator + raw[c.MIN_LENGTH :] + secret).digest()
        if not hmac.compare_digest(expected, header.authenticator):
            return False
        _check_message_authenticator(raw[:4], ZERO_VECTOR, attrs, secret)
    except PeerError:  # malformed, or a Message-Authenticator that does not verify
        return False
    return True


# RFC 2866 section 5.2: Acct-Delay-Time is a 32-bit count of seconds.
MAX_DELAY_SECONDS = 2**32 - 1


def first_text(attrs: Attributes, attr_type: int) -> str | None:
    """The first value of one attribute as text (for logs), None when absent."""
    for found, value in attrs:
        if found == attr_type:
            return value.decode("utf-8", errors="replace")
    return None


def delay_seconds(attrs: Attributes) -> int:
    """The Acct-Delay-Time the NAS sent (its first copy), 0 when absent or malformed."""
    for attr_type, value in attrs:
        if attr_type == c.ATTR_ACCT_DELAY_TIME:
            return int(struct.unpack("!I", value)[0]) if len(value) == 4 else 0
    return 0


def with_delay(attrs: Attributes, waited_seconds: float) -> Attributes:
    """The record re-sent after waiting `waited_seconds` in mfaproxy's spool.

    RFC 2866 section 5.2: Acct-Delay-Time says how long the client has been trying to
    send the record, so the server can subtract it from the arrival time to find when
    the event happened. A record that waited here is the same record sent later: the
    whole seconds it waited are added to what the NAS said (as FreeRADIUS's detail
    reader does), in the place of the NAS's attribute, or last when it sent none; any
    further copies are dropped (one value, one meaning). The sum stops at 2**32 - 1. A
    record with no room left for the attribute (4,096 octets) goes as it came."""
    waited = max(0, int(waited_seconds))
    total = min(MAX_DELAY_SECONDS, delay_seconds(attrs) + waited)
    value = struct.pack("!I", total)
    out: list[tuple[int, bytes]] = []
    placed = False
    for attr_type, attr_value in attrs:
        if attr_type != c.ATTR_ACCT_DELAY_TIME:
            out.append((attr_type, attr_value))
        elif not placed:
            out.append((attr_type, value))
            placed = True
    if not placed:
        if c.MIN_LENGTH + len(encode_attributes(attrs)) + 6 > c.MAX_LENGTH:
            return attrs
        out.append((c.ATTR_ACCT_DELAY_TIME, value))
    return tuple(out)
