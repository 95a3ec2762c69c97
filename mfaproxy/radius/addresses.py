"""IP addresses as a RADIUS server sees them: from dual-stack sockets and attributes."""

from __future__ import annotations

import functools
import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Every request parses its source address (and its NAS-IP-Address) more than once; the
# set of NAS is small. Bounded, since an attribute's value is the peer's choice.
@functools.lru_cache(maxsize=4096)
def parse_ip(text: str | None) -> IPAddress | None:
    """An IP literal, or None for anything else (a MAC address, a phone number, junk).

    Surrounding space and an IPv6 zone (`fe80::1%eth0`) are ignored. IPv4-mapped IPv6
    addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports for an IPv4 peer)
    become IPv4, so that IPv4 client entries and policy ranges still apply to them.
    """
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    return unmap(address)


def unmap(address: IPAddress) -> IPAddress:
    """`::ffff:a.b.c.d` as the IPv4 address `a.b.c.d`; any other address unchanged."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
