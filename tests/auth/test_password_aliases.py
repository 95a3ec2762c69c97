"""Password guessing under aliases of one user who never logged in (or under aliases
never used): the attempt is counted on the identity the directory locates before the
password is tested (auth/password_guard.py, directory/base.py `locate` then `verify`).

Against a real slapd with a two-attribute filter (`uid` or `mail`: `bob` and
`bob@example.org` are one entry) and the in-process engine (tests/auth/harness.py).
What reached the directory is read from slapd's own `stats` log: each user bind is a
`BIND dn=...` line, so a password check the guard let through cannot hide. Before this
guard, the identity counter was learnt only from a successful login: each alias got
the whole budget, and a concurrent burst under fresh aliases got one budget per alias.
The users file is attacked the same way, its password checks counted at `verify`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfaproxy.auth.password_guard import IDENTITIES
from mfaproxy.config.stores import RedisSettings
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.primary import IdentityLookup, Located, PrimaryResult
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.redis_throttle import RedisThrottle
from mfaproxy.store.sqlite_state import SqliteStateStore
from mfaproxy.store.sqlite_throttle import SqliteThrottle
from tests.auth.harness import Harness, password
from tests.support.redis_server import RedisServer
from tests.support.slapd import (
    ALICE,
    BASE_DN,
    BOB,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SlapdServer,
    run_slapd,
)

ACCEPT, REJECT = Outcome.ACCEPT, Outcome.REJECT
FILTER = "(&(objectClass=inetOrgPerson)(|(uid={username})(mail={username})))"
FREE = 5  # password_throttle.user.free_failures (the default)
HOME = "192.0.2.10"
_BIND = re.compile(r'BIND dn="([^"]*)" method=')


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    yield from run_slapd()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def ldap_config(slapd: SlapdServer, **ldap: Any) -> dict[str, Any]:
    settings = {
        "servers": [slapd.ldap_url],
        "base_dn": BASE_DN,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "user_filter": FILTER,
        "identity_attribute": "uid",
        **ldap,
    }
    return {
        "directory": {
            "backend": "ldap",
            "ldap": settings,
            "realms": [{"format": "prefix", "realms": ["EXAMPLE"]}],
        },
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
    }


def binds(slapd: SlapdServer, dn: str) -> int:
    """User binds of `dn` slapd has received so far (each a password tested)."""
    return sum(1 for m in _BIND.finditer(slapd.log_text()) if m.group(1).lower() == dn.lower())


def searches(slapd: SlapdServer, value: str) -> int:
    """Searches whose filter names `value` (each login's one search for the user)."""
    needle = f"(uid={value})".lower()
    return sum(
        1 for line in slapd.log_text().lower().splitlines() if "srch" in line and needle in line
    )


async def guess(h: Harness, typed: str, secret: str, station: str | None) -> Answer:
    options: dict[str, Any] = {"Calling_Station_Id": station} if station else {}
    return await h.send(typed, secret, **options)


# --------------------------------------------------------------------------- spellings

# Each letter in its ASCII cases or full width (slapd's caseIgnoreMatch folds both).
FORMS = {c: [c, c.upper(), chr(ord(c) - ord("a") + 0xFF41)] for c in "bo"}


@st.composite
def aliases(draw: st.DrawFn, uid: str = "bob") -> str:
    """A spelling of bob slapd may take for him: uid or mail, any case, full-width
    letters, a configured realm (stripped) or another (kept, so nobody is found)."""
    base = draw(st.sampled_from([uid, f"{uid}@example.org"]))
    letters = "".join(draw(st.sampled_from(FORMS.get(c, [c, c.upper()]))) for c in base)
    wrap = draw(st.sampled_from(["{}", "{}", "EXAMPLE\\{}", "example\\{}", "OTHER\\{}"]))
    return wrap.format(letters)


async def run_ldap(slapd: SlapdServer, steps: list[tuple[str, float]]) -> int:
    """Wrong passwords for the names of `steps`, the clock moved on before each: the
    binds of bob that slapd received."""
    with tempfile.TemporaryDirectory() as tmp:
        async with Harness(Path(tmp), ldap_config(slapd)) as h:
            before = binds(slapd, BOB.dn)
            for typed, advance in steps:
                h.clock.advance(advance)
                answer = await guess(h, typed, "not-bobs-password", None)
                assert answer.outcome is REJECT, (typed, answer.reason)
            return binds(slapd, BOB.dn) - before


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    typed=st.lists(aliases(), min_size=FREE + 1, max_size=14),
    advances=st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0, 3.0]), min_size=14, max_size=14),
)
def test_aliases_never_get_more_checks_than_one_name(
    slapd: SlapdServer, typed: list[str], advances: list[float]
) -> None:
    """However bob's name is spelt, and whenever, the directory tests no more of the
    guesses than it would have under the one name `bob`; at one instant, FREE."""
    steps = list(zip(typed, advances, strict=False))
    under_aliases = asyncio.run(run_ldap(slapd, steps))
    under_one_name = asyncio.run(run_ldap(slapd, [("bob", advance) for _, advance in steps]))
    assert under_aliases <= under_one_name, steps
    assert asyncio.run(run_ldap(slapd, [(name, 0.0) for name in typed])) <= FREE


async def test_alternating_uid_and_mail_gets_one_budget(slapd: SlapdServer, tmp_path: Path) -> None:
    """The finding, plainly: before, `bob` and `bob@example.org` had five each."""
    async with Harness(tmp_path, ldap_config(slapd)) as h:
        before = binds(slapd, BOB.dn)
        answers = [
            await guess(h, ("bob", "bob@example.org")[i % 2], f"g{i}", f"198.51.100.{i}")
            for i in range(20)
        ]
        assert [a.reason for a in answers[:FREE]] == ["bad_password"] * FREE
        assert {a.reason for a in answers[FREE:]} == {"password_throttled"}
        assert h.last_audit["password_throttle"] in ("user", "identity")
        assert binds(slapd, BOB.dn) - before == FREE


async def test_a_login_searches_once_and_binds_once(slapd: SlapdServer, tmp_path: Path) -> None:
    """The entry located for the guard is the one bound: no second search."""
    async with Harness(tmp_path, ldap_config(slapd)) as h:
        found, bound = searches(slapd, "carol"), binds(slapd, "uid=carol,ou=people," + BASE_DN)
        answer = await guess(h, "Carol", "wrong", None)
        assert answer.reason == "bad_password"
        assert searches(slapd, "carol") - found == 1
        assert binds(slapd, "uid=carol,ou=people," + BASE_DN) - bound == 1


# --------------------------------------------------------------------------- bursts


@contextlib.asynccontextmanager
async def nodes(
    backend: str, tmp: Path, config: dict[str, Any], redis: RedisServer
) -> AsyncIterator[list[Harness]]:
    """Engines sharing the counters as a deployment does: one process (memory), two
    workers on one SQLite file, two nodes on one Redis."""
    made: list[Harness] = []
    if backend == "memory":
        made.append(Harness(tmp, config))
    for _ in range(2 if backend != "memory" else 0):
        if backend == "sqlite":
            local = SqliteStateStore(tmp / "shared-state.sqlite3")
            made.append(Harness(tmp, config, state=local, throttle=SqliteThrottle(local)))
        else:
            settings_ = RedisSettings.model_validate({"url": redis.url, "socket_timeout": 2})
            shared = RedisStateStore(settings_)
            made.append(Harness(tmp, config, state=shared, throttle=RedisThrottle(shared)))
    for h in made[1:]:
        h.clock = made[0].clock
        h.engine.clock = made[0].clock
    try:
        yield made
    finally:
        for h in made:
            await h.__aexit__()


BURST_ALIASES = [
    "bob",
    "bob@example.org",
    "EXAMPLE\\BOB",
    "Bob@Example.ORG",
    "example\\bob@EXAMPLE.org",
]


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_a_burst_under_aliases_gets_one_budget(
    backend: str, slapd: SlapdServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """bob logged in at home as `bob` only: his mail address was never used. A burst
    of wrong passwords alternating aliases, from sources that change every time (the
    source counter does not catch it), across the nodes."""
    redis_server.flush()
    async with nodes(backend, tmp_path, ldap_config(slapd), redis_server) as hs:
        first = hs[0]
        assert (await guess(first, "bob", BOB.password, HOME)).outcome is ACCEPT
        before = binds(slapd, BOB.dn)
        answers = await asyncio.gather(
            *(
                guess(hs[i % len(hs)], BURST_ALIASES[i % 5], f"g{i}", f"198.51.100.{i}")
                for i in range(40)
            )
        )
        assert binds(slapd, BOB.dn) - before == FREE
        assert sum(1 for a in answers if a.reason == "bad_password") == FREE
        assert {a.reason for a in answers} == {"bad_password", "password_throttled"}
        # The right password from a new source waits, unchecked, whatever the spelling.
        for typed in ("bob", "bob@example.org", "example\\Bob"):
            answer = await guess(hs[-1], typed, BOB.password, "203.0.113.99")
            assert (answer.outcome, answer.reason) == (REJECT, "password_throttled"), typed
        assert binds(slapd, BOB.dn) - before == FREE
        # At home (a known source) bob is let in: the guessing never reaches him there.
        assert (await guess(hs[-1], "bob", BOB.password, HOME)).outcome is ACCEPT


async def test_a_known_source_is_known_for_the_identity_too(
    slapd: SlapdServer, tmp_path: Path
) -> None:
    """alice logged in at home typing her mail address: `alice` at home is known too,
    and guesses under any alias from elsewhere do not lock her out there."""
    async with Harness(tmp_path, ldap_config(slapd)) as h:
        assert (await guess(h, "alice@example.org", ALICE.password, HOME)).outcome is ACCEPT
        for i in range(12):
            await guess(h, ("alice", "ALICE@example.org")[i % 2], f"g{i}", f"198.51.100.{i}")
        new = await guess(h, "alice", ALICE.password, "203.0.113.5")
        assert new.reason == "password_throttled"
        for typed in ("alice", "alice@example.org", "EXAMPLE\\Alice"):
            answer = await guess(h, typed, ALICE.password, HOME)
            assert answer.outcome is ACCEPT, (typed, answer.reason)


async def test_a_name_new_at_a_source_the_identity_knows(
    slapd: SlapdServer, tmp_path: Path
) -> None:
    """bob logged in at home as `bob` only. Guessing from elsewhere locks his identity;
    at home he types his mail address for the first time: a source he uses, under
    whatever name, so he is let in, and guesses sent there under that name are judged
    by his known-source counter there (one budget), not let through."""
    async with Harness(tmp_path, ldap_config(slapd)) as h:
        assert (await guess(h, "bob", BOB.password, HOME)).outcome is ACCEPT
        for i in range(12):
            await guess(h, ("bob", "bob@example.org")[i % 2], f"g{i}", f"198.51.100.{i}")
        assert (await guess(h, "bob@example.org", BOB.password, "203.0.113.5")).reason == (
            "password_throttled"
        )
        answer = await guess(h, "Bob@Example.org", BOB.password, HOME)
        assert answer.outcome is ACCEPT, answer.reason
        before = binds(slapd, BOB.dn)
        spoofed = [await guess(h, "BOB@example.org", f"s{i}", HOME) for i in range(10)]
        assert sum(1 for a in spoofed if a.reason == "bad_password") == FREE
        assert binds(slapd, BOB.dn) - before == FREE
        assert h.last_audit["password_throttle"] == "known_source"


async def test_aliases_at_a_known_source_add_up(slapd: SlapdServer, tmp_path: Path) -> None:
    """A guesser who sends bob's home Calling-Station-Id gets one known-source budget
    however many of bob's names are known there."""
    async with Harness(tmp_path, ldap_config(slapd)) as h:
        for typed in ("bob", "bob@example.org"):
            assert (await guess(h, typed, BOB.password, HOME)).outcome is ACCEPT
        before = binds(slapd, BOB.dn)
        answers = [
            await guess(h, ("bob", "bob@example.org")[i % 2], f"g{i}", HOME) for i in range(20)
        ]
        assert sum(1 for a in answers if a.reason == "bad_password") == FREE
        assert binds(slapd, BOB.dn) - before == FREE
        assert h.last_audit["password_throttle"] == "known_source"


# --------------------------------------------------------------------------- unknown names


async def test_an_unknown_name_answers_like_a_known_one(slapd: SlapdServer, tmp_path: Path) -> None:
    """No enumeration: the same reply and the same throttling for nobody as for bob,
    and nothing kept for the unknown name but its own counter."""
    async with Harness(tmp_path, ldap_config(slapd)) as h:
        known = [await guess(h, "bob", f"g{i}", None) for i in range(FREE + 1)]
        unknown = [await guess(h, "nobody", f"g{i}", None) for i in range(FREE + 1)]

        def seen(answers: list[Answer]) -> list[tuple[Outcome, str | None, Any]]:
            return [(a.outcome, a.reply_message, a.attributes) for a in answers]

        assert seen(known) == seen(unknown)
        assert [a.reason for a in unknown] == ["no_such_user"] * FREE + ["password_throttled"]
        assert [a.reason for a in known] == ["bad_password"] * FREE + ["password_throttled"]
        assert await h.state.size(IDENTITIES, h.clock.now) == 0


# --------------------------------------------------------------------------- users file


class DaveChecks:
    """The real users-file checker, counting the passwords it tests against dave's
    entry (an unknown name's dummy hash is not his)."""

    def __init__(self, h: Harness) -> None:
        self.inner: PasswordChecker = h.engine.checker
        self.name = self.inner.name
        self.count = 0
        h.engine.checker = self

    async def authenticate(self, username: str, secret: str) -> PrimaryResult:
        return await self.verify(await self.locate(username), secret)

    async def locate(self, username: str) -> Located:
        return await self.inner.locate(username)

    async def verify(self, located: Located, secret: str) -> PrimaryResult:
        self.count += located.identity == "dave"
        return await self.inner.verify(located, secret)

    async def health(self) -> str | None:
        return await self.inner.health()

    async def find_identity(self, username: str) -> IdentityLookup:
        return await self.inner.find_identity(username)

    async def close(self) -> None:
        await self.inner.close()


@st.composite
def local_aliases(draw: st.DrawFn) -> str:
    """dave in the users file: any case, full-width letters, a configured realm or
    another (nobody)."""
    forms = [[c, c.upper(), chr(ord(c) - ord("a") + 0xFF41)] for c in "dave"]
    letters = "".join(draw(st.sampled_from(form)) for form in forms)
    wrap = draw(st.sampled_from(["{}", "EXAMPLE\\{}", "example\\{}", "OTHER\\{}"]))
    return wrap.format(letters)


LOCAL: dict[str, Any] = {
    "directory": {"realms": [{"format": "prefix", "realms": ["EXAMPLE"]}]},
    "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
}


@settings(max_examples=25, deadline=None)
@given(typed=st.lists(local_aliases(), min_size=FREE + 1, max_size=12))
def test_users_file_spellings_get_one_budget(typed: list[str]) -> None:
    async def run() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            async with Harness(Path(tmp), LOCAL) as h:
                checks = DaveChecks(h)
                for name in typed:
                    assert (await guess(h, name, "wrong", None)).outcome is REJECT
                wrong = checks.count
                last = await guess(h, "Dave", password("dave"), None)
                assert (last.reason == "password_throttled") is (wrong >= FREE)
                return wrong

    assert asyncio.run(run()) <= FREE


async def test_users_file_burst_with_aliases(tmp_path: Path) -> None:
    async with Harness(tmp_path, LOCAL) as h:
        checks = DaveChecks(h)
        names = ["dave", "DAVE", "EXAMPLE\\Dave", "example\\DAVE"]
        answers = await asyncio.gather(
            *(guess(h, names[i % 4], f"g{i}", f"198.51.100.{i}") for i in range(40))
        )
        assert checks.count == FREE
        assert sum(1 for a in answers if a.reason == "bad_password") == FREE
        right = await guess(h, "Dave", password("dave"), "203.0.113.1")
        assert right.reason == "password_throttled"
        assert checks.count == FREE
