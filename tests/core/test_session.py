"""The State attribute mfaproxy issues (RFC 2865 section 5.24): what every client keeps."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.core.session import (
    STATE_LENGTH,
    STATE_RANDOM_BYTES,
    is_well_formed_state,
    state_from_random,
)

PRINTABLE = set(string.printable.encode()) - set(string.whitespace.encode())
randoms = st.binary(min_size=STATE_RANDOM_BYTES, max_size=STATE_RANDOM_BYTES)


def test_a_state_carries_at_least_192_bits() -> None:
    assert STATE_RANDOM_BYTES * 8 >= 192


@given(randoms)
def test_a_state_has_no_nul_is_printable_and_well_formed(random: bytes) -> None:
    state = state_from_random(random)
    assert b"\x00" not in state
    assert set(state) <= PRINTABLE
    assert len(state) == STATE_LENGTH <= 253  # one attribute (RFC 2865 section 5)
    assert is_well_formed_state(state)


@given(randoms)
def test_no_entropy_is_lost(random: bytes) -> None:
    # one-to-one: the State decodes back to the random octets it was made of
    state = state_from_random(random)
    assert base64.urlsafe_b64decode(state + b"=") == random


@given(randoms, st.integers(min_value=1, max_value=STATE_LENGTH))
def test_a_trimmed_state_is_not_well_formed(random: bytes, cut: int) -> None:
    state = state_from_random(random)
    assert not is_well_formed_state(state[:-cut])
    assert not is_well_formed_state(state + b"A")


@given(st.binary(max_size=80))
def test_arbitrary_octets_are_not_taken_for_a_state_unless_they_have_its_shape(
    data: bytes,
) -> None:
    if is_well_formed_state(data):
        assert len(data) == STATE_LENGTH and b"\x00" not in data


def test_a_state_needs_its_full_randomness() -> None:
    with pytest.raises(ValueError, match="random octets"):
        state_from_random(b"\x01" * 16)
