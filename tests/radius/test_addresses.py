from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.radius.addresses import parse_ip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # what a dual-stack socket reports
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("00-11-22-33-44-55", None),  # a MAC address in Calling-Station-Id
        ("+15551234567", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_ip(text: str | None, expected: str | None) -> None:
    parsed = parse_ip(text)
    assert (None if parsed is None else str(parsed)) == expected


@given(st.ip_addresses(v=4))
def test_mapped_v4_is_the_v4_address(address: ipaddress.IPv4Address) -> None:
    assert parse_ip(f"::ffff:{address}") == address


@given(st.text(max_size=50))
def test_never_raises(text: str) -> None:
    parse_ip(text)
