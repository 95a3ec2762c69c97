"""Property tests: nothing a datagram contains makes the codec fail other than by
raising a PeerError (which the transport counts and drops)."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from mfaproxy.errors import PeerError
from mfaproxy.radius.codec import decode_request, load_dictionary, split_attributes
from tests.radius.test_codec import RFC_71_REQUEST, RFC_71_SECRET, sign

DICTIONARY = load_dictionary()
SIGNED = sign(RFC_71_REQUEST, RFC_71_SECRET)


def decode_or_peer_error(data: bytes, require: bool) -> None:
    """Only PeerError may escape; anything else fails the test with its traceback."""
    with contextlib.suppress(PeerError):
        decode_request(data, RFC_71_SECRET, DICTIONARY, require)


@settings(max_examples=400)
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes(data: bytes, require: bool) -> None:
    decode_or_peer_error(data, require)


attribute = st.tuples(st.integers(0, 255), st.binary(max_size=60))


@settings(max_examples=400)
@given(
    st.sampled_from([1, 12]),
    st.lists(attribute, max_size=12),
    st.booleans(),
)
def test_well_framed_packets_with_arbitrary_attributes(
    code: int, attrs: list[tuple[int, bytes]], require: bool
) -> None:
    """Valid framing, any attribute types and values (vendor-specific, tagged, encrypted,
    wrong sizes for their dictionary type): decoding never escapes as a crash."""
    body = b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)
    packet = bytes([code, 1]) + struct.pack("!H", 20 + len(body)) + bytes(16) + body
    decode_or_peer_error(packet, require)
    decode_or_peer_error(sign(packet, RFC_71_SECRET), require)


@settings(max_examples=300)
@given(st.integers(0, len(SIGNED) - 1), st.integers(1, 255))
def test_single_byte_mutations_of_a_signed_request(index: int, flip: int) -> None:
    mutated = bytearray(SIGNED)
    mutated[index] ^= flip
    decode_or_peer_error(bytes(mutated), True)


@given(st.binary(max_size=300))
def test_split_attributes_covers_the_body_exactly_or_refuses(body: bytes) -> None:
    try:
        attrs = split_attributes(body)
    except PeerError:
        return
    assert sum(len(v) + 2 for _, v in attrs) == len(body)
