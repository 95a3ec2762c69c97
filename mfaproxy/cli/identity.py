"""Who a user name given to `mfaproxy users ...` is: the identity the daemon would key
that user's MFA record on (README "User names and identity").

The name is read like a User-Name (realm rules, then the one normaliser), then the
directory is asked without a password: the users file is looked up, LDAP searched with
the service account; an upstream RADIUS server cannot be asked. A name the directory
knows as someone else (`alice@example.org` for `alice`) is that user; a name it does not
know is used as it is, with a warning, since no login would reach its record.

`directory_groups` reads a user's groups the same way (`policy explain`, and
`allow-enrolment`, which warns when the user is an administrator).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from mfaproxy.config.schema import Config
from mfaproxy.core.identity import identity_key, normalise, read_login_name
from mfaproxy.core.primary import IdentityLookup, LookupStatus
from mfaproxy.directory.local import load_users_file
from mfaproxy.directory.registry import build_checker
from mfaproxy.errors import ConfigError, UpstreamUnavailable
from mfaproxy.radius.codec import load_dictionary


@dataclass(frozen=True)
class Resolved:
    identity: str
    note: str | None  # for the operator (standard error), when there is something to say


async def _lookup(config: Config, name: str) -> IdentityLookup:
    try:
        checker = build_checker(config.directory, load_dictionary(config.server.dictionaries))
    except (ConfigError, OSError, ValueError) as exc:
        return IdentityLookup(LookupStatus.UNKNOWN, detail=f"cannot use the directory: {exc}")
    try:
        return await checker.find_identity(name)
    finally:
        await checker.close()


def resolve(config: Config, typed: str) -> Resolved:
    """The identity for `typed`; raises ValueError for a name that normalises to nothing."""
    login = read_login_name(typed.strip(), config.directory.realms)
    key = identity_key(login.user)
    found = asyncio.run(_lookup(config, login.directory_name))
    backend = config.directory.backend
    if found.status is LookupStatus.FOUND and found.identity is not None:
        if found.identity != normalise(typed):  # another spelling, a realm, an alias
            return Resolved(found.identity, f"{typed!r} is the user {found.identity!r}")
        return Resolved(found.identity, None)
    if found.status is LookupStatus.NOT_FOUND:
        return Resolved(
            key, f"{typed!r} is not in the directory ({backend}): no login reaches {key!r}"
        )
    return Resolved(key, f"{typed!r} cannot be checked against the directory: {found.detail}")


def _ldap_groups(config: Config, login: str, note: Callable[[str], None]) -> frozenset[str] | None:
    """The user's groups read from LDAP with the service account, as a login finds them
    (the group attribute, then group_search); None (unknown) when they cannot be read."""
    from mfaproxy.directory.ldap import LdapChecker
    from mfaproxy.directory.ldap_probe import LookupUnsupported, lookup_groups

    settings = config.directory.ldap
    assert settings is not None
    checker = LdapChecker(settings)
    try:
        groups = lookup_groups(checker, settings, login)
    except (LookupUnsupported, UpstreamUnavailable) as exc:
        note(f"groups not read from LDAP: {exc}; pass --groups to set them")
        return None
    finally:
        asyncio.run(checker.close())
    if groups is None:
        note(f"{login} is not in the directory: groups unknown (login would fail)")
        return None
    note(f"groups from LDAP: {', '.join(sorted(groups)) or 'none'}")
    return groups


def directory_groups(
    config: Config,
    user: str,
    login: str,
    note: Callable[[str], None],
    backend: str | None = None,
) -> frozenset[str] | None:
    """The groups of `user` (the identity; `login` the name asked of LDAP) from the
    users file or LDAP; None (unknown) when they cannot be read here (an upstream RADIUS
    server is never asked). `note` hears what the operator should know."""
    backend = backend or config.directory.backend
    if backend == "ldap" and config.directory.ldap is not None:
        return _ldap_groups(config, login, note)
    local = config.directory.local
    if backend != "local" or local is None:
        note(f"groups are not read from the {backend} directory; pass --groups to set them")
        return None
    entry = load_users_file(local.users_file).get(user)
    if entry is None:
        note(f"{user} is not in {local.users_file}: groups unknown (login would fail)")
        return None
    return frozenset(entry.groups)
