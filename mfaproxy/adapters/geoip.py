"""MaxMind database lookups for `geo_ip` rules.

The policy engine stays pure: it receives a `CountryLookup` callable in its context and
calls it only when a geo_ip rule is reached. `GeoIpDatabases` is that callable. Each
database is opened once at start (memory-mapped by maxminddb) and a lookup is a few
microseconds of in-memory reading, cheap enough for the event loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import maxminddb

from mfaproxy.config.policies import AccessPoliciesConfig
from mfaproxy.errors import ConfigError, CountryLookupError, GeoIpDatabaseError
from mfaproxy.radius.addresses import IPAddress

# `country` is where MaxMind places the user; some networks (anonymisers, satellite,
# anycast) only carry `registered_country`, the country the block is registered in.
_COUNTRY_KEYS = ("country", "registered_country")


def _iso_code(record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return None
    for key in _COUNTRY_KEYS:
        entry = record.get(key)
        code = entry.get("iso_code") if isinstance(entry, Mapping) else None
        if isinstance(code, str) and code:
            return code.upper()
    return None


class GeoIpDatabase:
    """One MaxMind database (GeoLite2-Country, GeoIP2-City...), opened once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc)
            raise GeoIpDatabaseError(f"{path}: cannot open MaxMind database: {detail}") from exc

    def country(self, address: IPAddress | str) -> str | None:
        """ISO 3166-1 alpha-2 code, or None when the database has no country for it.
        Raises CountryLookupError when the lookup itself fails."""
        try:
            record = self._reader.get(ipaddress.ip_address(address))
        except (ValueError, maxminddb.InvalidDatabaseError) as exc:
            # e.g. an IPv6 address in an IPv4-only database, or a corrupt file.
            raise CountryLookupError(str(exc)) from exc
        return _iso_code(record)

    def close(self) -> None:
        self._reader.close()


class GeoIpDatabases:
    """Every database the policies name, keyed by resolved path; a `CountryLookup`."""

    def __init__(self, databases: Mapping[Path, GeoIpDatabase]) -> None:
        self._databases = dict(databases)

    @classmethod
    def open_for(cls, policies: AccessPoliciesConfig) -> GeoIpDatabases:
        """Open the databases geo_ip rules use. Raises ConfigError naming each rule
        whose database cannot be opened (after closing the ones that did open)."""
        opened: dict[Path, GeoIpDatabase] = {}
        problems: list[str] = []
        for path, where in policies.geoip_databases().items():
            try:
                opened[path] = GeoIpDatabase(path)
            except GeoIpDatabaseError as exc:
                problems.append(f"access_policies.{where}: {exc}")
        if problems:
            cls(opened).close()
            raise ConfigError(problems)
        return cls(opened)

    def __call__(self, database: Path, address: IPAddress) -> str | None:
        reader = self._databases.get(database)
        if reader is None:
            raise CountryLookupError(f"{database} is not an opened geo-IP database")
        return reader.country(address)

    def close(self) -> None:
        for reader in self._databases.values():
            reader.close()
        self._databases.clear()

    def __enter__(self) -> GeoIpDatabases:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
