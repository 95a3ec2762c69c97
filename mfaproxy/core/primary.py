"""What a primary (password) check found: pure values every directory backend returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PrimaryOutcome(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    # The backend could not give an answer (every server down, timeout): the caller
    # answers as policy says (fail closed by default), never as a wrong password.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class ReplyAttribute:
    """An attribute to copy into our reply, by dictionary name, value already decoded."""

    name: str
    value: str | int | bytes


@dataclass(frozen=True)
class PrimaryResult:
    outcome: PrimaryOutcome
    # Which backend decided (`local`, `ldap`, `radius`); policy rules read it.
    backend: str
    # Short machine-readable reason for logs and metrics (`bad_password`, `no_such_user`,
    # `timeout`...). Never contains the password.
    reason: str = ""
    # Group names and DNs (core/groups.py); None when the backend has no group data
    # (an upstream RADIUS server without group_attribute): group rules are then unknown.
    groups: frozenset[str] | None = frozenset()
    email: str | None = None
    mobile: str | None = None
    # Who the user is, as the directory says (core/identity.py normalised): the users-file
    # key, the LDAP identity_attribute (or DN), an upstream's User-Name. Set on ACCEPT;
    # everything about the user after the password check is keyed on it.
    identity: str | None = None
    # Attributes an upstream RADIUS server returned that we pass through.
    reply_attributes: tuple[ReplyAttribute, ...] = field(default_factory=tuple)

    @property
    def accepted(self) -> bool:
        return self.outcome is PrimaryOutcome.ACCEPT


@dataclass(frozen=True)
class Located:
    """What the directory found for a user name before any password is tested (the
    first of a login's two phases: locate, then verify), so the attempt can be counted
    on the user's identity before the password is.

    - `identity` set: the entry was found (the users-file key, the LDAP entry found by
      the service account's search); the same identity the ACCEPT would carry.
    - `answer` set: the directory already answered without a password (an LDAP search
      that found nobody, or two entries, or no server): the password is never tested.
    - neither: the directory cannot say before the password (an upstream RADIUS server,
      an LDAP direct bind without a service account) or does not know the name but
      verifies a dummy anyway (the users file, for equal timing).
    """

    username: str  # as the directory was asked about it
    identity: str | None = None
    answer: PrimaryResult | None = None
    # The backend's own record of what it found (the LDAP entry), for its `verify`:
    # the search is not made twice.
    found: object = None


class LookupStatus(enum.Enum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    # The directory cannot say (no way to search without the password, unreachable).
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class IdentityLookup:
    """Whether the directory knows a user name, and as whom (for the CLI: no password
    is checked)."""

    status: LookupStatus
    identity: str | None = None
    detail: str = ""  # why UNKNOWN, for the operator
