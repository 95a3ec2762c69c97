"""The primary-password checker interface shared by every directory backend."""

from __future__ import annotations

from typing import Protocol

from mfaproxy.core.primary import IdentityLookup, PrimaryResult


class PasswordChecker(Protocol):
    """Checks a user's primary password. Implementations never raise for a wrong
    password or an unreachable server: they return a PrimaryResult saying so."""

    name: str

    async def authenticate(self, username: str, password: str) -> PrimaryResult: ...

    async def health(self) -> str | None:
        """None when the backend can answer logins now; otherwise why not (for
        /readyz: a directory that is down makes the instance not ready)."""
        ...

    async def find_identity(self, username: str) -> IdentityLookup:
        """Who `username` is, without a password (for `mfaproxy users`): the identity
        `authenticate` would return, NOT_FOUND, or UNKNOWN when the backend cannot say."""
        ...

    async def close(self) -> None: ...
