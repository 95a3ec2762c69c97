"""Which configured NAS a datagram comes from: longest-prefix match on the source."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from mfaproxy.config.schema import ClientConfig, IPNetwork


def normalise_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an address; map IPv4-mapped IPv6 (::ffff:a.b.c.d) from dual-stack sockets."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class ClientTable:
    """Clients by network, most specific first, so a /32 beats an overlapping /24."""

    def __init__(self, clients: Sequence[ClientConfig]):
        entries: list[tuple[IPNetwork, ClientConfig]] = [
            (network, client) for client in clients for network in client.address
        ]
        entries.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self._entries = entries

    def match(self, address: str) -> ClientConfig | None:
        ip = normalise_address(address)
        if ip is None:
            return None
        for network, client in self._entries:
            if ip.version == network.version and ip in network:
                return client
        return None
