"""Group membership, compared one way everywhere (policy `user_groups` rules, the
administrators group, reply-attribute mappings). Pure.

A configured group with an `=` in it is a distinguished name and matches the DN the
directory returned (core/identity.normalise_dn: case, spaces and escapes do not
matter); any other is a name, compared like user names. Which names a directory
returns is its backend's business: LDAP gives a group's name only for groups under a
configured group base (directory/ldap.py), so a group called `vpn-admins` that someone
created elsewhere in the tree is not `vpn-admins`.

`None` for a user's groups means the backend has no group data (an upstream RADIUS
server without `group_attribute`): rules on groups are then unknown, never "no".
"""

from __future__ import annotations

from collections.abc import Iterable

from mfaproxy.core.identity import normalise, normalise_dn


def is_dn(name: str) -> bool:
    return "=" in name


def group_key(name: str) -> str:
    return normalise_dn(name) if is_dn(name) else normalise(name)


def matching(groups: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The user's groups that are one of `wanted`, sorted."""
    keys = {group_key(name) for name in wanted}
    return sorted(group for group in groups if group_key(group) in keys)


def in_group(groups: frozenset[str] | None, wanted: str) -> bool | None:
    """Whether the user is in `wanted`; None when the backend has no group data."""
    if groups is None:
        return None
    return bool(matching(groups, [wanted]))
