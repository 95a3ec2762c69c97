from __future__ import annotations

from mfaproxy.config.schema import ClientConfig
from mfaproxy.radius.clients import ClientTable


def client(name: str, *addresses: str) -> ClientConfig:
    return ClientConfig.model_validate({"name": name, "address": list(addresses), "secret": "s"})


def test_longest_prefix_wins() -> None:
    table = ClientTable([client("net", "10.0.0.0/8"), client("host", "10.1.2.3")])
    assert table.match("10.1.2.3").name == "host"  # type: ignore[union-attr]
    assert table.match("10.9.9.9").name == "net"  # type: ignore[union-attr]


def test_unknown_address_matches_nothing() -> None:
    table = ClientTable([client("net", "10.0.0.0/8")])
    assert table.match("192.0.2.1") is None
    assert table.match("not an address") is None


def test_ipv6_and_mapped_ipv4() -> None:
    table = ClientTable([client("v4", "192.0.2.0/24"), client("v6", "2001:db8::/32")])
    assert table.match("::ffff:192.0.2.5").name == "v4"  # type: ignore[union-attr]
    assert table.match("2001:db8::1").name == "v6"  # type: ignore[union-attr]
