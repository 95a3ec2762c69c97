"""What /readyz asks beyond "listening and not stopping": can this instance answer a
login now? The directory (an LDAP server answers; an upstream RADIUS server answered the
last request), the user store and the state store. Each problem is named, so a 503 says
which dependency to look at."""

from __future__ import annotations

import time

from mfaproxy.auth.sessions import CHALLENGES
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.errors import StoreError, UpstreamError
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.state import StateStore


async def problem(checker: PasswordChecker, users: AsyncUserStore, state: StateStore) -> str | None:
    """None when every dependency answers; otherwise the first that does not, and why."""
    try:
        await state.size(CHALLENGES, time.time())
    except UpstreamError as exc:
        return f"state store unavailable: {exc}"
    try:
        await users.run(lambda store: store.schema_version())
    except (UpstreamError, StoreError, OSError) as exc:
        return f"user store unavailable: {type(exc).__name__}: {exc}"
    directory = await checker.health()
    if directory is not None:
        return f"directory: {directory}"
    return None
