"""Accounting packet rules (RFC 2866), checked against pyrad's independent implementation
of the same authenticators, and attacked: wrong secrets, tampering, forged
Message-Authenticators, hostile framing (hypothesis)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyrad import packet as pyrad_packet

from mfaproxy.errors import (
    AccessOnAccountingPort,
    BadMessageAuthenticator,
    BadRequestAuthenticator,
    MissingMessageAuthenticator,
    PeerError,
    UnsupportedCode,
)
from mfaproxy.radius import accounting
from mfaproxy.radius.accounting import (
    decode_accounting,
    encode_request,
    encode_response,
    forwarded_attributes,
    verify_response,
)
from mfaproxy.radius.codec import load_dictionary, split_attributes

DICTIONARY = load_dictionary()
SECRET = b"acct-secret"


def pyrad_request(signed: bool = False, **attributes: Any) -> pyrad_packet.AcctPacket:
    pkt = pyrad_packet.AcctPacket(secret=SECRET, dict=DICTIONARY)
    for name, value in attributes.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            pkt.AddAttribute(name.replace("_", "-"), item)
    if signed:
        pkt.add_message_authenticator()
    return pkt


def raw_request(attrs: list[tuple[int, bytes]], secret: bytes = SECRET, ident: int = 7) -> bytes:
    """An Accounting-Request built by hand (RFC 2866 section 3), no Message-Authenticator."""
    body = b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)
    header = bytes([4, ident]) + struct.pack("!H", 20 + len(body))
    return header + hashlib.md5(header + bytes(16) + body + secret).digest() + body


STOP: dict[str, Any] = {
    "User_Name": "alice",
    "Acct_Status_Type": "Stop",
    "Acct_Session_Id": "sess-42",
    "NAS_IP_Address": "192.0.2.1",
    "NAS_Identifier": "vpn-1",
    "Framed_IP_Address": "10.8.0.6",
    "Calling_Station_Id": "203.0.113.9",
    "Acct_Input_Octets": 1000,
    "Acct_Output_Octets": 2000,
    "Acct_Input_Gigawords": 2,
    "Acct_Input_Packets": 10,
    "Acct_Output_Packets": 20,
    "Acct_Session_Time": 3600,
    "Acct_Terminate_Cause": "User-Request",
    "Acct_Delay_Time": 0,
}


def test_stop_record_is_read_with_gigawords_folded_in() -> None:
    raw = pyrad_request(**STOP).RequestPacket()
    packet = decode_accounting(raw, SECRET)
    assert packet.record is not None
    fields = packet.record.log_fields()
    assert fields == {
        "status_type": "stop",
        "user": "alice",
        "session_id": "sess-42",
        "nas_ip_address": "192.0.2.1",
        "nas_identifier": "vpn-1",
        "framed_ip_address": "10.8.0.6",
        "calling_station_id": "203.0.113.9",
        "input_octets": 2 * 2**32 + 1000,
        "output_octets": 2000,
        "input_packets": 10,
        "output_packets": 20,
        "session_time": 3600,
        "terminate_cause": "User-Request",
        "delay_time": 0,
    }
    assert not packet.signed


@pytest.mark.parametrize(
    ("value", "label"),
    [(1, "start"), (2, "stop"), (3, "interim_update"), (7, "accounting_on"), (8, "accounting_off"),
     (15, "failed"), (9, "other"), (2**32 - 1, "other")],
)  # fmt: skip
def test_status_types_are_a_bounded_label_set(value: int, label: str) -> None:
    packet = decode_accounting(raw_request([(40, struct.pack("!I", value))]), SECRET)
    assert packet.record is not None and packet.record.status_type == label
    if label == "other":
        assert packet.record.log_fields()["status_type_value"] == value


def test_missing_or_misshapen_status_type_is_other() -> None:
    for attrs in ([], [(40, b"\x00\x01")]):
        packet = decode_accounting(raw_request(attrs), SECRET)
        assert packet.record is not None and packet.record.status_type == "other"


def test_wrong_secret_fails_the_request_authenticator() -> None:
    raw = pyrad_request(**STOP).RequestPacket()
    with pytest.raises(BadRequestAuthenticator) as caught:
        decode_accounting(raw, b"other-secret")
    assert caught.value.reason == "bad_request_authenticator"


@pytest.mark.parametrize("index", [1, 2, 3, 4, 19, 22, 30])
def test_any_altered_octet_fails_verification(index: int) -> None:
    raw = bytearray(pyrad_request(**STOP).RequestPacket())
    raw[index] ^= 0x20
    with pytest.raises(PeerError):
        decode_accounting(bytes(raw), SECRET)


def test_signed_request_verifies_like_freeradius_computes_it() -> None:
    """pyrad computes the Message-Authenticator of an Accounting-Request over a zeroed
    Authenticator field, then the Request Authenticator, as FreeRADIUS does."""
    raw = pyrad_request(signed=True, **STOP).RequestPacket()
    packet = decode_accounting(raw, SECRET)
    assert packet.signed


def test_forged_message_authenticator_is_refused_even_with_a_valid_request_authenticator() -> None:
    raw = pyrad_request(signed=True, **STOP).RequestPacket()
    attrs = [(t, bytes(16) if t == 80 else v) for t, v in split_attributes(raw[20:])]
    with pytest.raises(BadMessageAuthenticator):
        decode_accounting(raw_request(attrs), SECRET)


def test_two_message_authenticators_are_refused() -> None:
    raw = pyrad_request(signed=True, **STOP).RequestPacket()
    attrs = split_attributes(raw[20:])
    with pytest.raises(BadMessageAuthenticator):
        decode_accounting(raw_request(attrs + [a for a in attrs if a[0] == 80]), SECRET)


def test_access_request_on_the_accounting_port_has_its_own_reason() -> None:
    raw = bytes([1]) + raw_request([])[1:]
    with pytest.raises(AccessOnAccountingPort) as caught:
        decode_accounting(raw, SECRET)
    assert caught.value.reason == "access_on_accounting_port"


@pytest.mark.parametrize("code", [2, 3, 5, 11, 40, 43, 255])
def test_other_codes_are_refused(code: int) -> None:
    with pytest.raises(UnsupportedCode):
        decode_accounting(bytes([code]) + raw_request([])[1:], SECRET)


def test_response_copies_proxy_state_in_order_and_verifies_at_the_nas() -> None:
    request = pyrad_request(Acct_Status_Type="Start", Proxy_State=[b"one", b"two"])
    raw = request.RequestPacket()
    reply = encode_response(decode_accounting(raw, SECRET), SECRET)
    assert reply[0] == 5 and reply[1] == request.id
    assert [v for t, v in split_attributes(reply[20:])] == [b"one", b"two"]
    received = pyrad_packet.AcctPacket(secret=SECRET, dict=DICTIONARY, packet=reply)
    assert request.VerifyReply(received, reply)


def test_response_to_a_signed_request_is_signed_and_verifies() -> None:
    request = pyrad_request(signed=True, Acct_Status_Type="Start", Proxy_State=b"p")
    reply = encode_response(decode_accounting(request.RequestPacket(), SECRET), SECRET)
    attrs = split_attributes(reply[20:])
    assert attrs[0][0] == 80 and attrs[1] == (33, b"p")
    received = pyrad_packet.AcctPacket(secret=SECRET, dict=DICTIONARY, packet=reply)
    assert request.VerifyReply(received, reply)  # checks the Message-Authenticator too


def test_status_server_needs_a_message_authenticator_and_gets_a_signed_answer() -> None:
    unsigned = bytes([12, 9]) + struct.pack("!H", 20) + bytes(16)
    with pytest.raises(MissingMessageAuthenticator):
        decode_accounting(unsigned, SECRET)
    status = pyrad_packet.AcctPacket(code=12, secret=SECRET, dict=DICTIONARY)
    raw = status.RequestPacket()
    packet = decode_accounting(raw, SECRET)
    assert packet.record is None
    reply = encode_response(packet, SECRET)
    received = pyrad_packet.AcctPacket(secret=SECRET, dict=DICTIONARY, packet=reply)
    assert reply[0] == 5
    assert status.VerifyReply(received, reply, enforce_ma=True)


def test_status_server_with_a_wrong_secret_is_refused() -> None:
    raw = pyrad_packet.AcctPacket(code=12, secret=b"wrong", dict=DICTIONARY).RequestPacket()
    with pytest.raises(BadMessageAuthenticator):
        decode_accounting(raw, SECRET)


def test_forwarded_copy_keeps_order_and_drops_what_is_bound_to_the_nas_secret() -> None:
    request = pyrad_request(signed=True, **STOP)
    request.AddAttribute("Proxy-State", b"nas")
    packet = decode_accounting(request.RequestPacket(), SECRET)
    forwarded = forwarded_attributes(packet)
    assert [t for t, _ in forwarded] == [t for t, _ in packet.attributes if t != 80]
    hidden = raw_request([(40, struct.pack("!I", 1)), (2, bytes(16)), (69, b"\x00" * 19)])
    assert forwarded_attributes(decode_accounting(hidden, SECRET)) == ((40, struct.pack("!I", 1)),)


def test_upstream_request_verifies_at_a_pyrad_server_and_its_answer_at_us() -> None:
    attrs = forwarded_attributes(decode_accounting(pyrad_request(**STOP).RequestPacket(), SECRET))
    raw, authenticator = encode_request(33, attrs, b"upstream")
    received = pyrad_packet.AcctPacket(secret=b"upstream", dict=DICTIONARY, packet=raw)
    assert received.VerifyAcctRequest()
    assert received["Acct-Session-Id"] == ["sess-42"]
    answer = received.CreateReply().ReplyPacket()
    assert verify_response(answer, 33, authenticator, b"upstream")
    assert not verify_response(answer, 34, authenticator, b"upstream")  # other Identifier
    assert not verify_response(answer, 33, authenticator, b"other")  # other secret
    assert not verify_response(answer, 33, bytes(16), b"upstream")  # other request
    forged = bytearray(answer)
    forged[0] = 2  # an Access-Accept is no acknowledgement
    assert not verify_response(bytes(forged), 33, authenticator, b"upstream")
    assert not verify_response(answer[:19], 33, authenticator, b"upstream")


def test_upstream_answer_with_a_bad_message_authenticator_is_not_an_acknowledgement() -> None:
    _, authenticator = encode_request(5, (), b"upstream")
    body = b"\x50\x12" + bytes(16)
    header = bytes([5, 5]) + struct.pack("!H", 20 + len(body))
    response = hashlib.md5(header + authenticator + body + b"upstream").digest()
    assert not verify_response(header + response + body, 5, authenticator, b"upstream")
    mac = hmac.new(b"upstream", header + bytes(16) + body, hashlib.md5).digest()
    good_body = b"\x50\x12" + mac
    good = hashlib.md5(header + authenticator + good_body + b"upstream").digest()
    assert verify_response(header + good + good_body, 5, authenticator, b"upstream")


# --------------------------------------------------------------------------- hostile input


def decode_or_peer_error(data: bytes) -> None:
    """Only PeerError may escape; a reply, when built, is never longer than the request."""
    with contextlib.suppress(PeerError):
        packet = decode_accounting(data, SECRET)
        reply = encode_response(packet, SECRET)
        assert len(reply) <= min(len(data), 4096)
        assert packet.record is None or isinstance(packet.record.log_fields(), dict)


@settings(max_examples=400)
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    decode_or_peer_error(data)


attribute = st.tuples(st.integers(0, 255), st.binary(max_size=60))


@settings(max_examples=400)
@given(st.lists(attribute, max_size=14), st.integers(0, 255))
def test_authentic_packets_with_arbitrary_attributes(
    attrs: list[tuple[int, bytes]], identifier: int
) -> None:
    """Correctly authenticated packets (a NAS with the secret, or a buggy one) with any
    attribute types, lengths and values: read, answered, or dropped as a PeerError."""
    decode_or_peer_error(raw_request(attrs, ident=identifier))


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=0, max_size=253), min_size=1, max_size=40))
def test_many_proxy_states_never_make_a_reply_longer_than_the_request(
    states: list[bytes],
) -> None:
    body_limit = 4096 - 20
    attrs: list[tuple[int, bytes]] = []
    for value in states:
        if sum(len(v) + 2 for _, v in attrs) + len(value) + 2 > body_limit:
            break
        attrs.append((33, value))
    raw = raw_request(attrs)
    reply = encode_response(decode_accounting(raw, SECRET), SECRET)
    assert len(reply) <= len(raw) <= 4096
    assert [v for _, v in split_attributes(reply[20:])] == [v for _, v in attrs]


def test_status_labels_match_the_dictionary_names() -> None:
    attr = DICTIONARY.attributes["Acct-Status-Type"]
    for value, label in accounting.STATUS_TYPES.items():
        name = attr.values.GetBackward(struct.pack("!I", value))
        assert name.lower().replace("-", "_") == label


# --------------------------------------------------------------------------- Acct-Delay-Time


def delay_values(attrs: accounting.Attributes) -> list[int]:
    return [struct.unpack("!I", v)[0] for t, v in attrs if t == 41]


def test_a_spooled_record_says_how_long_it_waited_in_the_nas_attribute_s_place() -> None:
    attrs = ((1, b"alice"), (41, struct.pack("!I", 5)), (44, b"s1"))
    later = accounting.with_delay(attrs, 12.9)  # whole seconds (RFC 2866 section 5.2)
    assert later == ((1, b"alice"), (41, struct.pack("!I", 17)), (44, b"s1"))
    # No Acct-Delay-Time from the NAS: one is added last; no wait leaves 0.
    assert accounting.with_delay(((1, b"a"),), 3.2) == ((1, b"a"), (41, struct.pack("!I", 3)))
    assert delay_values(accounting.with_delay(((1, b"a"),), -7)) == [0]


@given(
    attrs=st.lists(st.tuples(st.sampled_from([1, 41, 44]), st.binary(max_size=8)), max_size=12).map(
        tuple
    ),
    waited=st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
)
def test_delay_time_is_one_attribute_never_smaller_never_past_32_bits(
    attrs: accounting.Attributes, waited: float
) -> None:
    later = accounting.with_delay(attrs, waited)
    values = delay_values(later)
    assert len(values) == 1
    assert values[0] >= accounting.delay_seconds(attrs)
    assert values[0] == min(2**32 - 1, accounting.delay_seconds(attrs) + max(0, int(waited)))
    # Everything else is kept, in order.
    assert [a for a in later if a[0] != 41] == [a for a in attrs if a[0] != 41]


def test_a_record_with_no_room_left_goes_unchanged() -> None:
    full = (*tuple((26, bytes(253)) for _ in range(15)), (26, bytes(4096 - 20 - 15 * 255 - 2)))
    assert 20 + len(accounting.encode_attributes(full)) == 4096
    assert accounting.with_delay(full, 30) == full
