"""The primary-password checker interface shared by every directory backend."""

from __future__ import annotations

from typing import Protocol

from mfaproxy.core.primary import PrimaryResult


class PasswordChecker(Protocol):
    """Checks a user's primary password. Implementations never raise for a wrong
    password or an unreachable server: they return a PrimaryResult saying so."""

    name: str

    async def authenticate(self, username: str, password: str) -> PrimaryResult: ...

    async def health(self) -> str | None:
        """None when the backend can answer logins now; otherwise why not (for
        /readyz: a directory that is down makes the instance not ready)."""
        ...

    async def close(self) -> None: ...
