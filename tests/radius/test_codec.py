"""Codec rules, with RFC 2865 section 7 packets as vectors."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyrad import packet as pyrad_packet

from mfaproxy.errors import (
    AccountingOnAuthPort,
    BadMessageAuthenticator,
    BadPassword,
    MalformedPacket,
    MissingMessageAuthenticator,
    UnsignedProxyState,
    UnsupportedCode,
)
from mfaproxy.radius.codec import (
    RadiusRequest,
    decode_request,
    encode_reply,
    load_dictionary,
    reply_packet,
    split_attributes,
)
from mfaproxy.radius.constants import ACCESS_ACCEPT, ACCESS_CHALLENGE, ACCESS_REJECT
from mfaproxy.radius.text import reply_message as fit_reply_message

DICTIONARY = load_dictionary()

# RFC 2865 section 7.1: "nemo" with password "arctangent", secret "xyzzy5461".
RFC_71_SECRET = b"xyzzy5461"
RFC_71_REQUEST = bytes.fromhex(
    "01000038 0f403f94 73978057 bd83d5cb 98f4227a 0106 6e656d6f"
    " 0212 0dbe708d 93d413ce 3196e43f 782a0aee 0406 c0a80110 0506 00000003".replace(" ", "")
)
RFC_71_ACCEPT = bytes.fromhex(
    "02000026 86fe220e 7624ba2a 1005f6bf 9b55e0b2 0606 00000001"
    " 0f06 00000000 0e06 c0a80103".replace(" ", "")
)


def sign(packet: bytes, secret: bytes) -> bytes:
    """Append a Message-Authenticator (RFC 3579 section 3.2) to a request."""
    body = packet[20:] + b"\x50\x12" + bytes(16)
    header = packet[:2] + struct.pack("!H", 20 + len(body)) + packet[4:20]
    mac = hmac.new(secret, header + body, hashlib.md5).digest()
    return header + body[:-16] + mac


def decode(
    data: bytes, secret: bytes = RFC_71_SECRET, require: bool = True, limit: bool = True
) -> RadiusRequest:
    return decode_request(data, secret, DICTIONARY, require, limit)


def test_rfc2865_71_request_decodes_with_password() -> None:
    request = decode(RFC_71_REQUEST, require=False)
    assert request.user_name == "nemo"
    assert request.password == "arctangent"
    assert request.nas_ip_address == "192.168.1.16"
    assert request.identifier == 0


def test_rfc2865_71_accept_matches_the_rfc_bytes() -> None:
    request = decode(RFC_71_REQUEST, require=False)
    reply = reply_packet(request)  # what encode_reply builds on, here unsigned as in 7.1
    reply.message_authenticator = False
    reply.code = ACCESS_ACCEPT
    reply.AddAttribute("Service-Type", "Login-User")
    OrderedDict.__setitem__(reply, 15, [bytes(4)])  # Login-Service = Telnet
    reply.AddAttribute("Login-IP-Host", "192.168.1.3")
    assert reply.ReplyPacket() == RFC_71_ACCEPT


def test_missing_message_authenticator_is_refused_by_default() -> None:
    with pytest.raises(MissingMessageAuthenticator):
        decode(RFC_71_REQUEST)


def test_signed_request_is_accepted() -> None:
    request = decode(sign(RFC_71_REQUEST, RFC_71_SECRET))
    assert request.password == "arctangent"


def test_message_authenticator_is_verified_in_any_position() -> None:
    signed = sign(RFC_71_REQUEST, RFC_71_SECRET)
    # move Message-Authenticator from last to first and re-sign there
    attrs = split_attributes(signed[20:])
    reordered = (
        b"\x50\x12" + bytes(16) + b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs if t != 80)
    )
    header = signed[:4] + signed[4:20]
    mac = hmac.new(RFC_71_SECRET, header + reordered, hashlib.md5).digest()
    packet = header + b"\x50\x12" + mac + reordered[18:]
    assert decode(packet).user_name == "nemo"


def test_wrong_secret_fails_message_authenticator() -> None:
    with pytest.raises(BadMessageAuthenticator):
        decode(sign(RFC_71_REQUEST, RFC_71_SECRET), secret=b"other")


def test_tampered_attribute_fails_message_authenticator() -> None:
    signed = bytearray(sign(RFC_71_REQUEST, RFC_71_SECRET))
    signed[24] ^= 0x01  # a letter of User-Name
    with pytest.raises(BadMessageAuthenticator):
        decode(bytes(signed))


def test_two_message_authenticators_are_refused() -> None:
    signed = sign(RFC_71_REQUEST, RFC_71_SECRET)
    doubled = signed + signed[-18:]
    doubled = doubled[:2] + struct.pack("!H", len(doubled)) + doubled[4:]
    with pytest.raises(BadMessageAuthenticator):
        decode(doubled)


def with_proxy_state(packet: bytes, *values: bytes) -> bytes:
    body = packet[20:] + b"".join(bytes([33, len(v) + 2]) + v for v in values)
    return packet[:2] + struct.pack("!H", 20 + len(body)) + packet[4:20] + body


def test_limit_proxy_state_drops_unsigned_proxy_state_under_its_own_reason() -> None:
    packet = with_proxy_state(RFC_71_REQUEST, b"abcd")
    with pytest.raises(UnsignedProxyState) as caught:
        decode(packet, require=False, limit=True)
    assert caught.value.reason == "proxy_state_without_message_authenticator"


def test_limit_proxy_state_off_lets_unsigned_proxy_state_through() -> None:
    request = decode(with_proxy_state(RFC_71_REQUEST, b"abcd"), require=False, limit=False)
    assert request.proxy_states == (b"abcd",)


def test_limit_proxy_state_leaves_unsigned_requests_without_proxy_state_alone() -> None:
    assert decode(RFC_71_REQUEST, require=False, limit=True).user_name == "nemo"


def test_limit_proxy_state_accepts_signed_proxy_state() -> None:
    signed = sign(with_proxy_state(RFC_71_REQUEST, b"abcd"), RFC_71_SECRET)
    assert decode(signed, require=False, limit=True).proxy_states == (b"abcd",)


def test_accounting_request_on_the_auth_port_has_its_own_reason() -> None:
    with pytest.raises(AccountingOnAuthPort) as caught:
        decode(bytes([4]) + RFC_71_REQUEST[1:], require=False)
    assert caught.value.reason == "accounting_on_auth_port"


def test_status_server_requires_message_authenticator() -> None:
    packet = bytes([12, 7]) + struct.pack("!H", 20) + bytes(16)
    with pytest.raises(MissingMessageAuthenticator):
        decode(packet, require=False)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00\x00",
        bytes(19),
        b"\x01\x00\x00\x13" + bytes(16),  # Length 19 < 20
        b"\x01\x00\x10\x01" + bytes(16),  # Length 4097 > 4096
        b"\x01\x00\x00\x30" + bytes(16),  # Length beyond the datagram
        b"\x01\x00\x00\x16" + bytes(16) + b"\x01\x01",  # attribute length 1
        b"\x01\x00\x00\x17" + bytes(16) + b"\x01\x05a",  # attribute overruns packet
        b"\x01\x00\x00\x15" + bytes(16) + b"\x01",  # truncated attribute header
    ],
)
def test_malformed_packets_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode(data, require=False)


def test_padding_after_length_is_ignored() -> None:
    request = decode(RFC_71_REQUEST + b"\x00\x00garbage", require=False)
    assert request.user_name == "nemo"


@pytest.mark.parametrize("code", [2, 3, 4, 11, 40, 255])
def test_codes_other_than_access_request_and_status_server_are_refused(code: int) -> None:
    with pytest.raises(UnsupportedCode):
        decode(bytes([code]) + RFC_71_REQUEST[1:], require=False)


def test_a_user_password_without_a_value_is_an_empty_password() -> None:
    # radcli sends an attribute of length 2 when the user presses Enter at a prompt
    body = b"\x01\x06nemo\x02\x02"
    packet = b"\x01\x00" + struct.pack("!H", 20 + len(body)) + bytes(16) + body
    assert decode(packet, require=False).password == ""


def test_password_of_bad_length_is_refused() -> None:
    body = b"\x01\x06nemo\x02\x07abcde"
    packet = b"\x01\x00" + struct.pack("!H", 20 + len(body)) + bytes(16) + body
    with pytest.raises(BadPassword):
        decode(packet, require=False)


def test_reply_has_message_authenticator_first_and_proxy_state_in_order() -> None:
    body = RFC_71_REQUEST[20:] + b"\x21\x05one\x21\x05two"
    unsigned = RFC_71_REQUEST[:2] + struct.pack("!H", 20 + len(body)) + RFC_71_REQUEST[4:20] + body
    signed = sign(unsigned, RFC_71_SECRET)
    request = decode(signed)
    reply = encode_reply(request, ACCESS_REJECT, [("Filter-Id", "x")], "Denied")
    attrs = split_attributes(reply[20:])
    assert attrs[0][0] == 80
    assert [v for t, v in attrs if t == 33] == [b"one", b"two"]
    assert (18, b"Denied") in attrs
    # the reply verifies as a NAS would verify it (pyrad's client-side check)
    sent = pyrad_packet.AuthPacket(secret=RFC_71_SECRET, dict=DICTIONARY, packet=signed)
    received = pyrad_packet.Packet(secret=RFC_71_SECRET, dict=DICTIONARY, packet=reply)
    assert sent.VerifyReply(received, reply, enforce_ma=True)


def test_challenge_reply_carries_state() -> None:
    request = decode(sign(RFC_71_REQUEST, RFC_71_SECRET))
    reply = encode_reply(request, ACCESS_CHALLENGE, [], "Enter code", state=b"s" * 16)
    assert (24, b"s" * 16) in split_attributes(reply[20:])
    assert reply[0] == ACCESS_CHALLENGE


def test_long_reply_message_is_cut_to_one_attribute() -> None:
    request = decode(sign(RFC_71_REQUEST, RFC_71_SECRET))
    reply = encode_reply(request, ACCESS_REJECT, [], "é" * 200)
    messages = [v for t, v in split_attributes(reply[20:]) if t == 18]
    assert len(messages) == 1 and len(messages[0]) <= 253
    messages[0].decode("utf-8")  # not cut inside a character


@given(
    proxy_states=st.lists(st.binary(min_size=1, max_size=40), max_size=4),
    identifier=st.integers(0, 255),
    code=st.sampled_from([ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE]),
    message=st.one_of(st.none(), st.text(max_size=300)),
    state=st.one_of(st.none(), st.binary(min_size=1, max_size=64)),
    filter_id=st.one_of(st.none(), st.text(min_size=1, max_size=40)),
)
def test_reply_is_the_bytes_pyrads_create_reply_gives(
    proxy_states: list[bytes],
    identifier: int,
    code: int,
    message: str | None,
    state: bytes | None,
    filter_id: str | None,
) -> None:
    """The reply is built without decoding the request through pyrad: it must be,
    octet for octet, what pyrad's CreateReply of the decoded request gives."""
    body = RFC_71_REQUEST[20:] + b"".join(bytes([33, len(v) + 2]) + v for v in proxy_states)
    length = struct.pack("!H", 20 + len(body))
    unsigned = bytes([1, identifier]) + length + RFC_71_REQUEST[4:20] + body
    signed = sign(unsigned, RFC_71_SECRET)
    attributes = [] if filter_id is None else [("Filter-Id", filter_id)]
    ours = encode_reply(decode(signed), code, list(attributes), message, state)
    theirs = pyrad_packet.AuthPacket(secret=RFC_71_SECRET, dict=DICTIONARY, packet=signed)
    reply = theirs.CreateReply()
    reply.code = code
    if message:
        OrderedDict.__setitem__(reply, 18, [fit_reply_message(message).encode("ascii")])
    if state is not None:
        OrderedDict.__setitem__(reply, 24, [state])
    for name, value in attributes:
        reply.AddAttribute(name, value)
    assert ours == reply.ReplyPacket()


def test_vendor_specific_attributes_still_go_through_pyrads_decoder() -> None:
    """A Vendor-Specific attribute is the one kind whose inside pyrad judges: the
    request decodes, and replies, as before."""
    vsa = bytes([26, 12]) + struct.pack("!L", 9) + bytes([1, 6]) + b"abcd"
    body = RFC_71_REQUEST[20:] + vsa
    unsigned = RFC_71_REQUEST[:2] + struct.pack("!H", 20 + len(body)) + RFC_71_REQUEST[4:20] + body
    request = decode(sign(unsigned, RFC_71_SECRET))
    assert request.user_name == "nemo"
    assert encode_reply(request, ACCESS_ACCEPT, [])[0] == ACCESS_ACCEPT


@given(
    password=st.text(min_size=1, max_size=40).filter(
        lambda text: "\x00" not in text and len(text.encode()) <= 128
    ),
    secret=st.binary(min_size=1, max_size=32),
)
def test_user_password_decrypts_what_pyrad_hides(password: str, secret: bytes) -> None:
    """RFC 2865 section 5.2, against pyrad's own hiding (an independent implementation)."""
    request = pyrad_packet.AuthPacket(secret=secret, dict=DICTIONARY)
    request.AddAttribute("User-Name", "nemo")
    request["User-Password"] = request.PwCrypt(password)
    request.add_message_authenticator()
    assert decode(request.RequestPacket(), secret=secret).password == password
