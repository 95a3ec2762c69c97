"""One identity behind an upstream RADIUS server (a real FreeRADIUS): the User-Name of
its Access-Accept when it sends one, else the normalised typed name, both read through
the realm rules. Every spelling the upstream accepts reaches one MFA record.

The FreeRADIUS users file accepts sam under several names, as a directory with aliases
would: `sam`, `SAM` and `sam@example.org` (no User-Name in the Accept), `sam.alias`
and `EXAMPLE\\sam` (the Accept names `Sam`). mfaproxy's realm rules strip the
`EXAMPLE\\` prefix (the upstream is asked about `sam`) and keep the `@example.org`
suffix (the upstream is asked as typed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfaproxy.config.directory import RadiusDirectoryConfig, RealmRule
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.primary import PrimaryOutcome
from mfaproxy.directory.radius import RadiusChecker
from tests.auth.harness import Harness
from tests.support.freeradius import FreeRadiusServer, UserSpec, rfc_dictionary

SECRET = "identity-upstream"
PASSWORD = "sam-upstream-pw"
ACCEPTED_AS = ["sam", "SAM", "sam@example.org", "sam.alias", "Sam@example.org"]
UPSTREAM = {
    "sam": UserSpec(PASSWORD),
    "SAM": UserSpec(PASSWORD),
    "sam@example.org": UserSpec(PASSWORD),
    "Sam@example.org": UserSpec(PASSWORD),
    "sam.alias": UserSpec(PASSWORD, reply={"User-Name": "Sam"}),
    "blank.name": UserSpec(PASSWORD, reply={"User-Name": "   "}),
    "other": UserSpec("other-pw", reply={"User-Name": "EXAMPLE\\other"}),
}
REALMS = [
    {"format": "prefix", "realms": ["EXAMPLE"]},
    {"format": "suffix", "realms": ["example.org"], "strip": False},
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FreeRadiusServer]:
    with FreeRadiusServer(UPSTREAM, secret=SECRET) as server:
        yield server


def directory(upstream: FreeRadiusServer) -> dict[str, Any]:
    server = {"host": upstream.host, "port": upstream.port, "secret": SECRET}
    return {
        "backend": "radius",
        "realms": REALMS,
        "radius": {"servers": [server], "timeout": 2, "retries": 1},
    }


# --------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(
    ("typed", "identity"),
    [
        ("sam", "sam"),
        ("SAM", "sam"),
        ("sam@example.org", "sam"),  # asked as typed; the realm is removed from the key
        ("sam.alias", "sam"),  # the Accept's User-Name: the upstream's own name for sam
        ("other", "other"),  # the Accept's `EXAMPLE\other`, through the realm rules
    ],
)
async def test_identity_is_the_accepts_user_name_or_the_normalised_name(
    upstream: FreeRadiusServer, typed: str, identity: str
) -> None:
    config = RadiusDirectoryConfig.model_validate(directory(upstream)["radius"])
    realms = [RealmRule.model_validate(r) for r in REALMS]
    checker = RadiusChecker(config, rfc_dictionary(), realms)
    password = "other-pw" if typed == "other" else PASSWORD
    result = await checker.authenticate(typed, password)
    assert (result.outcome, result.identity) == (PrimaryOutcome.ACCEPT, identity)


async def test_an_accept_naming_no_usable_user_is_refused(upstream: FreeRadiusServer) -> None:
    config = RadiusDirectoryConfig.model_validate(directory(upstream)["radius"])
    result = await RadiusChecker(config, rfc_dictionary()).authenticate("blank.name", PASSWORD)
    assert (result.outcome, result.reason) == (PrimaryOutcome.REJECT, "upstream_identity_invalid")


# --------------------------------------------------------------------------- the engine


class Running:
    def __init__(self, tmp_path: Path, upstream: FreeRadiusServer) -> None:
        self.loop = asyncio.new_event_loop()
        overrides = {
            "directory": directory(upstream),
            "access_policies": {"mfa": {"default_action": "mfa_optional_per_user"}},
            # Many spellings the case-sensitive upstream refuses are tried in a row:
            # about names here, not guessing (tests/auth/test_password_guessing.py).
            "password_throttle": {"enabled": False},
        }
        self.h = Harness(tmp_path, overrides)
        self.h.enrol_totp("sam")

    def send(self, typed: str) -> tuple[Answer, Any]:
        async def one() -> tuple[Answer, Any]:
            ctx, request = self.h.request(typed, PASSWORD)
            return await self.h.engine.handle(ctx, request), ctx

        result: tuple[Answer, Any] = self.loop.run_until_complete(one())
        return result

    def close(self) -> None:
        self.loop.run_until_complete(self.h.__aexit__())
        self.loop.close()


@pytest.fixture
def running(tmp_path: Path, upstream: FreeRadiusServer) -> Iterator[Running]:
    run = Running(tmp_path, upstream)
    yield run
    run.close()


@st.composite
def spellings(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from([*ACCEPTED_AS, "EXAMPLE\\sam", "example\\SAM", "sam.ALIAS"]))
    pad = st.sampled_from(["", "", " ", "\t", "\u3000"])
    flips = draw(st.lists(st.booleans(), min_size=len(base), max_size=len(base)))
    cased = "".join(c.swapcase() if f else c for c, f in zip(base, flips, strict=True))
    return draw(pad) + draw(st.sampled_from([base, cased])) + draw(pad)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(typed=spellings())
def test_every_spelling_the_upstream_accepts_reaches_sam(running: Running, typed: str) -> None:
    answer, ctx = running.send(typed)
    if answer.outcome is Outcome.REJECT:
        # refused by the name checks, or unknown to the (case-sensitive) upstream
        assert answer.reason.startswith("user_name_") or answer.reason == "bad_password"
        return
    assert (answer.outcome, ctx.identity) == (Outcome.CHALLENGE, "sam"), typed
    assert running.h.store.list_users() == ["sam"]


@pytest.mark.parametrize("typed", [*ACCEPTED_AS, "EXAMPLE\\sam"])
def test_each_name_the_upstream_knows_is_challenged_as_sam(running: Running, typed: str) -> None:
    answer, ctx = running.send(typed)
    assert (answer.outcome, ctx.identity) == (Outcome.CHALLENGE, "sam"), answer.reason
