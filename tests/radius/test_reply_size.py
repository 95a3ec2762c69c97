"""No reply is longer than 4,096 octets (RFC 2865 section 3): a request carries at most
what a reply can echo, and a reply that would not fit raises instead of going out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfaproxy.errors import ReplyTooLarge, TooMuchProxyState
from mfaproxy.radius.codec import decode_request, encode_reply
from mfaproxy.radius.constants import (
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    MAX_LENGTH,
    MAX_PROXY_STATE_OCTETS,
)
from tests.radius.test_codec import DICTIONARY, RFC_71_REQUEST, RFC_71_SECRET, sign


def with_proxy_states(values: list[bytes]) -> bytes:
    body = RFC_71_REQUEST[20:] + b"".join(bytes([33, len(v) + 2]) + v for v in values)
    length = (20 + len(body)).to_bytes(2, "big")
    return sign(RFC_71_REQUEST[:2] + length + RFC_71_REQUEST[4:20] + body, RFC_71_SECRET)


@settings(max_examples=200)
@given(
    st.lists(st.binary(min_size=1, max_size=253), max_size=16).filter(
        lambda v: sum(len(x) + 2 for x in v) <= MAX_PROXY_STATE_OCTETS
    ),
    st.text(max_size=400),
    st.binary(min_size=16, max_size=64),
)
def test_a_challenge_echoing_any_accepted_proxy_state_fits(
    proxies: list[bytes], message: str, state: bytes
) -> None:
    request = decode_request(with_proxy_states(proxies), RFC_71_SECRET, DICTIONARY, True)
    reply = encode_reply(request, ACCESS_CHALLENGE, [], message, state=state)
    assert len(reply) <= MAX_LENGTH


def test_proxy_state_beyond_the_cap_is_refused() -> None:
    proxies = [b"x" * 250] * 5  # 1,260 octets with their headers
    with pytest.raises(TooMuchProxyState):
        decode_request(with_proxy_states(proxies), RFC_71_SECRET, DICTIONARY, True)


def test_a_reply_that_cannot_fit_raises_instead_of_being_sent() -> None:
    proxies = [b"x" * 250] * 4
    request = decode_request(with_proxy_states(proxies), RFC_71_SECRET, DICTIONARY, True)
    attributes = [("Filter-Id", "f" * 250)] * 14  # 3.5 kB of reply attributes on top
    with pytest.raises(ReplyTooLarge):
        encode_reply(request, ACCESS_REJECT, list(attributes), "Denied")
