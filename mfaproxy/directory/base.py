"""The primary-password checker interface shared by every directory backend."""

from __future__ import annotations

from typing import Protocol

from mfaproxy.core.primary import IdentityLookup, Located, PrimaryResult


class PasswordChecker(Protocol):
    """Checks a user's primary password. Implementations never raise for a wrong
    password or an unreachable server: they return a PrimaryResult saying so.

    A login is two phases, so the password guard can count the attempt on the user's
    identity between them (auth/password_guard.py): `locate` finds the user without the
    password, `verify` tests the password against what was found. `authenticate` is
    both at once (for `mfaproxy doctor --login` and tests)."""

    name: str

    async def authenticate(self, username: str, password: str) -> PrimaryResult: ...

    async def locate(self, username: str) -> Located:
        """Who `username` is, as far as the directory can tell without the password."""
        ...

    async def verify(self, located: Located, password: str) -> PrimaryResult:
        """The password checked against what `locate` found (`located.answer` unset)."""
        ...

    async def health(self) -> str | None:
        """None when the backend can answer logins now; otherwise why not (for
        /readyz: a directory that is down makes the instance not ready)."""
        ...

    async def find_identity(self, username: str) -> IdentityLookup:
        """Who `username` is, without a password (for `mfaproxy users`): the identity
        `authenticate` would return, NOT_FOUND, or UNKNOWN when the backend cannot say."""
        ...

    async def close(self) -> None: ...
