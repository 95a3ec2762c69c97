"""One identity behind LDAP (a real slapd) with a filter naming two attributes, through
the in-process engine: Hypothesis spells alice (uid or mail, case, padding,
compatibility forms, a configured realm); every spelling slapd and the checks accept
is challenged as alice, the one enrolled record, and aliases share one lockout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfaproxy.core.answer import Answer, Outcome
from tests.auth.harness import Harness
from tests.support.slapd import (
    ALICE,
    BASE_DN,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SlapdServer,
    run_slapd,
)

FILTER = "(&(objectClass=inetOrgPerson)(|(uid={username})(mail={username})))"
FORMS = {"a": ["a", "A", "\uff41"], "l": ["l", "L", "\uff4c"], "e": ["e", "E", "\uff45"]}


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    yield from run_slapd()


def overrides(slapd: SlapdServer) -> dict[str, Any]:
    ldap = {
        "servers": [slapd.ldap_url],
        "base_dn": BASE_DN,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "user_filter": FILTER,
        "identity_attribute": "uid",
    }
    return {
        "directory": {
            "backend": "ldap",
            "ldap": ldap,
            "realms": [{"format": "prefix", "realms": ["EXAMPLE"]}],
        },
        "access_policies": {"mfa": {"default_action": "mfa_optional_per_user"}},
    }


class Running:
    def __init__(self, tmp_path: Path, slapd: SlapdServer) -> None:
        self.loop = asyncio.new_event_loop()
        self.h = Harness(tmp_path, overrides(slapd))
        self.h.enrol_totp("alice")

    def send(self, typed: str, secret: str, state: bytes | None = None) -> tuple[Answer, Any]:
        async def one() -> tuple[Answer, Any]:
            ctx, request = self.h.request(typed, secret, state)
            return await self.h.engine.handle(ctx, request), ctx

        result: tuple[Answer, Any] = self.loop.run_until_complete(one())
        return result

    def close(self) -> None:
        self.loop.run_until_complete(self.h.__aexit__())
        self.loop.close()


@pytest.fixture
def running(tmp_path: Path, slapd: SlapdServer) -> Iterator[Running]:
    run = Running(tmp_path, slapd)
    yield run
    run.close()


@st.composite
def spellings(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(["alice", "alice@example.org"]))
    letters = "".join(draw(st.sampled_from(FORMS.get(c, [c, c.upper()]))) for c in base)
    pad = st.sampled_from(["", "", "", " ", "\t", "\u00a0"])
    wrap = draw(st.sampled_from(["{}", "{}", "EXAMPLE\\{}", "example\\{}", "OTHER\\{}"]))
    return wrap.format(draw(pad) + letters + draw(pad))


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(typed=spellings())
def test_every_spelling_slapd_accepts_reaches_alice(running: Running, typed: str) -> None:
    answer, ctx = running.send(typed, ALICE.password)
    if answer.outcome is Outcome.REJECT:
        assert answer.reason.startswith("user_name_") or answer.reason == "no_such_user", (
            typed,
            answer.reason,
        )
        assert ctx.identity is None
        return
    assert (answer.outcome, ctx.identity) == (Outcome.CHALLENGE, "alice"), typed
    assert running.h.store.list_users() == ["alice"]


def test_uid_and_mail_in_any_case_are_both_challenged(running: Running) -> None:
    for typed in ("alice", "ALICE@EXAMPLE.ORG", "example\\Alice", "EXAMPLE\\alice@example.org"):
        answer, ctx = running.send(typed, ALICE.password)
        assert (answer.outcome, ctx.identity) == (Outcome.CHALLENGE, "alice"), typed


def test_aliases_count_against_one_lockout(running: Running) -> None:
    limit = running.h.config.multifactor.lockout.max_failures
    spellings_ = ["alice", "Alice@example.org", "EXAMPLE\\ALICE", "alice@EXAMPLE.org", "aLiCe"]
    for typed in spellings_[:limit]:
        first, _ = running.send(typed, ALICE.password)
        assert first.outcome is Outcome.CHALLENGE, first.reason
        running.send(typed, "000000", first.state)
    locked, _ = running.send("ALICE@example.org", ALICE.password)
    assert (locked.outcome, locked.reason) == (Outcome.REJECT, "locked_out")
