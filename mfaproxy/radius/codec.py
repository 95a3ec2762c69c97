"""RADIUS packet rules on top of pyrad's codec: decode once, check, build replies.

Pure: bytes in, values out. Every check that can make us drop a packet raises a
`PeerError` subclass whose `reason` is the metric label.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrad import packet as pyrad_packet
from pyrad.dictionary import Dictionary

from mfaproxy.errors import (
    AccountingOnAuthPort,
    BadMessageAuthenticator,
    BadPassword,
    MalformedPacket,
    MissingMessageAuthenticator,
    ReplyTooLarge,
    TooMuchProxyState,
    UnsignedProxyState,
    UnsupportedCode,
)
from mfaproxy.radius.constants import (
    ACCESS_ACCEPT,
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    ATTR_CALLING_STATION_ID,
    ATTR_CHAP_PASSWORD,
    ATTR_EAP_MESSAGE,
    ATTR_MESSAGE_AUTHENTICATOR,
    ATTR_NAS_IDENTIFIER,
    ATTR_NAS_IP_ADDRESS,
    ATTR_NAS_IPV6_ADDRESS,
    ATTR_PROXY_STATE,
    ATTR_REPLY_MESSAGE,
    ATTR_STATE,
    ATTR_USER_NAME,
    ATTR_USER_PASSWORD,
    ATTR_VENDOR_SPECIFIC,
    MAX_LENGTH,
    MAX_PROXY_STATE_OCTETS,
    MIN_LENGTH,
    STATUS_SERVER,
)
from mfaproxy.radius.text import reply_message as fit_reply_message

# Shipped inside the package (dictionaries/ at the top of the repository links here).
DICTIONARY_DIR = Path(__file__).resolve().parent.parent / "dictionaries"


def load_dictionary(extra: list[Path] | None = None) -> Dictionary:
    """The shipped dictionaries, then the operator's extra files."""
    files = [str(DICTIONARY_DIR / "dictionary"), *(str(p) for p in extra or [])]
    return Dictionary(*files)


@dataclass(frozen=True)
class Header:
    code: int
    identifier: int
    length: int
    authenticator: bytes


def read_header(data: bytes) -> Header:
    """The fixed header, with RFC 2865 section 3 length rules applied."""
    if len(data) < MIN_LENGTH:
        raise MalformedPacket(f"datagram of {len(data)} octets is shorter than a header")
    code, identifier, length = struct.unpack("!BBH", data[:4])
    if length < MIN_LENGTH or length > MAX_LENGTH:
        raise MalformedPacket(f"Length field {length} outside 20..4096")
    if length > len(data):
        # RFC 2865 section 3: shorter than Length means the packet MUST be discarded.
        raise MalformedPacket(f"Length field {length} exceeds datagram size {len(data)}")
    return Header(code, identifier, length, data[4:20])


def split_attributes(body: bytes) -> list[tuple[int, bytes]]:
    """Raw (type, value) pairs in wire order; refuses any bad attribute length."""
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < 2:
            raise MalformedPacket("truncated attribute header")
        attr_type, attr_len = body[offset], body[offset + 1]
        if attr_len < 2 or offset + attr_len > len(body):
            raise MalformedPacket(f"attribute {attr_type} has bad length {attr_len}")
        out.append((attr_type, body[offset + 2 : offset + attr_len]))
        offset += attr_len
    return out


def carries_state(data: bytes) -> bool:
    """Whether a datagram looks like an answer to a challenge (has a State attribute),
    read before anything is verified, only to queue it ahead of first rounds. Never
    raises: a malformed datagram is simply not one (decoding drops it later)."""
    if len(data) < MIN_LENGTH:
        return False
    end = min(len(data), struct.unpack("!H", data[2:4])[0])
    offset = MIN_LENGTH
    while offset + 2 <= end:
        attr_type, attr_len = data[offset], data[offset + 1]
        if attr_len < 2:
            return False
        if attr_type == ATTR_STATE:
            return True
        offset += attr_len
    return False


@dataclass(frozen=True)
class RadiusRequest:
    """One decoded, verified request. Built once per datagram."""

    code: int
    identifier: int
    authenticator: bytes
    user_name: str | None
    password: str | None
    state: bytes | None
    nas_ip_address: str | None
    nas_identifier: str | None
    calling_station_id: str | None
    has_chap: bool
    has_eap: bool
    proxy_states: tuple[bytes, ...]
    # What the reply is built and signed with (encode_reply).
    secret: bytes = field(repr=False, compare=False)
    dictionary: Dictionary = field(repr=False, compare=False)


def _verify_message_authenticator(raw: bytes, values: list[bytes], secret: bytes) -> None:
    """RFC 3579 section 3.2: HMAC-MD5 over the packet with the attribute zeroed."""
    if len(values) != 1 or len(values[0]) != 16:
        raise BadMessageAuthenticator("Message-Authenticator must appear once, 16 octets")
    zeroed = pyrad_packet.Packet._zero_message_authenticator(raw[MIN_LENGTH:])
    expected = hmac.new(secret, raw[:MIN_LENGTH] + zeroed, hashlib.md5).digest()
    if not hmac.compare_digest(expected, values[0]):
        raise BadMessageAuthenticator("Message-Authenticator does not verify")


def _decrypt_password(value: bytes, secret: bytes, authenticator: bytes) -> str:
    """RFC 2865 section 5.2; strict about length, UTF-8 and padding.

    An attribute with no value at all is an empty password: section 5.2 wants at least
    16 octets, but radcli (ocserv) sends none when the user presses Enter at a prompt.
    Dropping it would leave the user waiting for the NAS's timeout with no message; an
    empty password (or answer) gets its answer now, as the 16 octets of padding that
    other clients send would."""
    if not value:
        return ""
    if len(value) % 16 or len(value) > 128:
        raise BadPassword("User-Password length must be a multiple of 16, at most 128")
    plain = bytearray()
    last = authenticator
    for offset in range(0, len(value), 16):
        block = value[offset : offset + 16]
        pad = hashlib.md5(secret + last).digest()
        plain.extend(b ^ p for b, p in zip(block, pad, strict=True))
        last = block
    text = bytes(plain).rstrip(b"\x00")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A wrong shared secret gives random octets; callers answer Access-Reject.
        raise BadPassword("User-Password is not UTF-8 (wrong shared secret?)") from exc


def _text(values: list[bytes] | None) -> str | None:
    if not values:
        return None
    return values[0].decode("utf-8", errors="replace")


def _address(values: list[bytes] | None) -> str | None:
    if not values or len(values[0]) not in (4, 16):
        return None
    return str(ipaddress.ip_address(values[0]))


def decode_request(
    data: bytes,
    secret: bytes,
    dictionary: Dictionary,
    require_message_authenticator: bool,
    limit_proxy_state: bool = True,
) -> RadiusRequest:
    """Decode and verify one Access-Request or Status-Server datagram.

    `limit_proxy_state` (FreeRADIUS's client setting of that name) drops an unsigned
    Access-Request that carries Proxy-State; it matters only for a client exempted from
    `require_message_authenticator`."""
    header = read_header(data)
    raw = data[: header.length]  # RFC 2865 section 3: octets past Length are padding
    if header.code == ACCOUNTING_REQUEST:
        raise AccountingOnAuthPort("Accounting-Request sent to an authentication port")
    if header.code not in (ACCESS_REQUEST, STATUS_SERVER):
        raise UnsupportedCode(f"code {header.code} is not served")
    attrs: dict[int, list[bytes]] = {}
    for attr_type, value in split_attributes(raw[MIN_LENGTH:]):
        attrs.setdefault(attr_type, []).append(value)

    if ATTR_MESSAGE_AUTHENTICATOR in attrs:
        _verify_message_authenticator(raw, attrs[ATTR_MESSAGE_AUTHENTICATOR], secret)
    elif header.code == STATUS_SERVER:
        # RFC 5997 section 3: Status-Server MUST carry a Message-Authenticator.
        raise MissingMessageAuthenticator("Status-Server without Message-Authenticator")
    elif require_message_authenticator:
        raise MissingMessageAuthenticator("Access-Request without Message-Authenticator")
    elif limit_proxy_state and ATTR_PROXY_STATE in attrs:
        # BlastRADIUS (CVE-2024-3596) fallback for clients that cannot sign: the forged
        # reply is built around an attacker-chosen Proxy-State, so an unsigned request
        # may not carry one (FreeRADIUS 3.2.5 `limit_proxy_state`).
        raise UnsignedProxyState("Proxy-State without Message-Authenticator")

    proxy_state_octets = sum(len(v) + 2 for v in attrs.get(ATTR_PROXY_STATE, []))
    if proxy_state_octets > MAX_PROXY_STATE_OCTETS:
        raise TooMuchProxyState(f"{proxy_state_octets} octets of Proxy-State")
    if header.code == ACCESS_REQUEST and len(attrs.get(ATTR_USER_PASSWORD, [])) > 1:
        raise MalformedPacket("more than one User-Password")
    if not attrs.keys().isdisjoint(_structured_types(dictionary)):
        # Vendor-Specific or TLV attributes: pyrad's own decoder judges their inner
        # structure. The rest was checked above; decoding it again (a pyrad packet per
        # request) was a tenth of a request's CPU.
        try:
            pyrad_packet.AuthPacket(secret=secret, dict=dictionary, packet=raw)
        except Exception as exc:  # pyrad raises many types on hostile input
            raise MalformedPacket(f"undecodable: {type(exc).__name__}") from exc

    password = None
    if ATTR_USER_PASSWORD in attrs:
        password = _decrypt_password(attrs[ATTR_USER_PASSWORD][0], secret, header.authenticator)
    nas_ip = _address(attrs.get(ATTR_NAS_IP_ADDRESS)) or _address(attrs.get(ATTR_NAS_IPV6_ADDRESS))
    return RadiusRequest(
        code=header.code,
        identifier=header.identifier,
        authenticator=header.authenticator,
        user_name=_text(attrs.get(ATTR_USER_NAME)),
        password=password,
        state=attrs[ATTR_STATE][0] if ATTR_STATE in attrs else None,
        nas_ip_address=nas_ip,
        nas_identifier=_text(attrs.get(ATTR_NAS_IDENTIFIER)),
        calling_station_id=_text(attrs.get(ATTR_CALLING_STATION_ID)),
        has_chap=ATTR_CHAP_PASSWORD in attrs,
        has_eap=ATTR_EAP_MESSAGE in attrs,
        proxy_states=tuple(attrs.get(ATTR_PROXY_STATE, [])),
        secret=secret,
        dictionary=dictionary,
    )


_STRUCTURED: dict[int, tuple[Dictionary, frozenset[int]]] = {}


def _structured_types(dictionary: Dictionary) -> frozenset[int]:
    """Vendor-Specific and the dictionary's TLV attribute types (read once per
    dictionary: a reload brings a new one)."""
    found = _STRUCTURED.get(id(dictionary))
    if found is None or found[0] is not dictionary:
        if len(_STRUCTURED) >= 8:
            _STRUCTURED.clear()  # dictionaries of runtimes retired by reloads
        tlvs = {
            int(attr.code)
            for attr in dictionary.attributes.values()
            if attr.type == "tlv" and not attr.vendor and not attr.is_sub_attribute
        }
        found = _STRUCTURED[id(dictionary)] = (dictionary, frozenset({ATTR_VENDOR_SPECIFIC, *tlvs}))
    return found[1]


def reply_packet(request: RadiusRequest) -> Any:
    """What pyrad's CreateReply makes of a decoded request, without decoding it: the
    request's id, authenticator, secret and dictionary, its Proxy-State copied in order
    (RFC 2865 section 5.33), and signed (Message-Authenticator, against BlastRADIUS)."""
    reply = pyrad_packet.AuthPacket(
        ACCESS_ACCEPT,
        request.identifier,
        request.secret,
        request.authenticator,
        dict=request.dictionary,
    )
    reply.message_authenticator = True
    reply._request_code = request.code
    if request.proxy_states:
        OrderedDict.__setitem__(reply, ATTR_PROXY_STATE, list(request.proxy_states))
    return reply


def encode_reply(
    request: RadiusRequest,
    code: int,
    attributes: list[tuple[str, Any]],
    reply_message: str | None = None,
    state: bytes | None = None,
) -> bytes:
    """Build a signed reply: Message-Authenticator first, Proxy-State copied in order.
    Raises ReplyTooLarge rather than return more than 4,096 octets (RFC 2865 section 3)."""
    reply = reply_packet(request)
    reply.code = code
    if reply_message:
        OrderedDict.__setitem__(
            reply, ATTR_REPLY_MESSAGE, [fit_reply_message(reply_message).encode("ascii")]
        )
    if state is not None:
        OrderedDict.__setitem__(reply, ATTR_STATE, [state])
    for name, value in attributes:
        reply.AddAttribute(name, value)
    # pyrad puts Message-Authenticator first and copies Proxy-State (RFC 2865 5.33).
    data: bytes = reply.ReplyPacket()
    if len(data) > MAX_LENGTH:
        raise ReplyTooLarge(f"reply of {len(data)} octets")
    return data
