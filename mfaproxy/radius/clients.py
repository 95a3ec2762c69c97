"""Which configured NAS a datagram comes from: longest-prefix match on the source."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from mfaproxy.radius.addresses import parse_ip

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class HasNetworks(Protocol):
    @property
    def address(self) -> Sequence[IPNetwork]: ...


Client = TypeVar("Client", bound=HasNetworks)


class ClientTable(Generic[Client]):
    """Clients by network, most specific first, so a /32 beats an overlapping /24."""

    def __init__(self, clients: Sequence[Client]):
        entries: list[tuple[IPNetwork, Client]] = [
            (network, client) for client in clients for network in client.address
        ]
        entries.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self._entries = entries

    def match(self, address: str) -> Client | None:
        ip = parse_ip(address)
        if ip is None:
            return None
        for network, client in self._entries:
            if ip.version == network.version and ip in network:
                return client
        return None
