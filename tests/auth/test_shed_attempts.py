"""A password attempt shed under overload (a full or late hash pool raises Shed in the
backend) was never judged: it must not count as a wrong password. Before this, a burst
of right passwords from one NAS ended in password_throttled for its users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mfaproxy.core.answer import Outcome
from mfaproxy.core.primary import Located, PrimaryResult
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.errors import Shed
from tests.auth.harness import Harness, password

SKIP_MFA: dict[str, Any] = {"access_policies": {"mfa": {"default_action": "mfa_skipped"}}}


class Shedding:
    """The real checker behind a pool that sheds the next `count` calls."""

    def __init__(self, inner: PasswordChecker, count: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.count = count

    async def verify(self, located: Located, secret: str) -> PrimaryResult:
        if self.count:
            self.count -= 1
            raise Shed("hash_wait")
        return await self.inner.verify(located, secret)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_shed_attempts_do_not_count_as_failures(tmp_path: Path) -> None:
    async with Harness(tmp_path, SKIP_MFA) as h:
        checker = Shedding(h.engine.checker, 30)
        h.engine.checker = checker
        options: dict[str, Any] = {"Calling_Station_Id": "203.0.113.7"}
        for _ in range(30):  # far more than the 5 free failures of a user
            with pytest.raises(Shed):
                await h.send("alice", password("alice"), **options)
        answer = await h.send("alice", password("alice"), **options)
        assert (answer.outcome, answer.reason) == (Outcome.ACCEPT, "mfa_skipped")
