"""The directory backends, keyed by their configuration name (`directory.backend`).

Imports are inside the builders so a deployment that does not use LDAP never loads
python-ldap, and a backend's import cost is paid only when it is configured.
"""

from __future__ import annotations

from collections.abc import Callable

from pyrad.dictionary import Dictionary

from mfaproxy.config.directory import DirectoryConfig
from mfaproxy.directory.base import PasswordChecker


def _local(config: DirectoryConfig, _dictionary: Dictionary) -> PasswordChecker:
    from mfaproxy.directory.local import LocalChecker

    assert config.local is not None
    local = config.local
    return LocalChecker(local.users_file, local.hash_threads, local.hash_queue)


def _ldap(config: DirectoryConfig, _dictionary: Dictionary) -> PasswordChecker:
    from mfaproxy.directory.ldap import LdapChecker

    assert config.ldap is not None
    return LdapChecker(config.ldap)


def _radius(config: DirectoryConfig, dictionary: Dictionary) -> PasswordChecker:
    from mfaproxy.directory.radius import RadiusChecker

    assert config.radius is not None
    return RadiusChecker(config.radius, dictionary, config.realms)


BACKENDS: dict[str, Callable[[DirectoryConfig, Dictionary], PasswordChecker]] = {
    "local": _local,
    "ldap": _ldap,
    "radius": _radius,
}


def build_checker(config: DirectoryConfig, dictionary: Dictionary) -> PasswordChecker:
    return BACKENDS[config.backend](config, dictionary)
