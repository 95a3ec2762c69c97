"""One identity through a real engine, in process (tests/auth/harness.py): whatever
spelling of a user name the users file accepts reaches exactly one MFA record: an
enrolled user is never skipped, no alias gets a lockout counter or an enrolment of its
own, `users` rules cannot be escaped, and a challenge answer must name the same user.

Hypothesis generates spellings: case, surrounding white space, compatibility forms
(full-width, long s, superscripts), sharp s against "ss", and the realm forms of the
configured realm rules (and of an unconfigured realm).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfaproxy.auth.sessions import CHALLENGES
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.core.identity import normalise
from mfaproxy.core.session import session_key
from tests.auth.harness import Harness, password

ACCEPT, REJECT, CHALLENGE = Outcome.ACCEPT, Outcome.REJECT, Outcome.CHALLENGE
USERS: dict[str, dict[str, Any]] = {
    name: {"groups": ["vpn-users"]} for name in ("sam", "Stra\u00dfe", "bob")
}
REALMS = [
    {"format": "prefix", "realms": ["EXAMPLE"]},
    {"format": "suffix", "realms": ["example.org"]},
]
IDENTITY = {"sam": "sam", "Stra\u00dfe": "strasse", "bob": "bob"}
OPTIONAL = {
    "directory": {"realms": REALMS},
    "access_policies": {"mfa": {"default_action": "mfa_optional_per_user"}},
}
# Per character: the spellings a directory folds to it.
FORMS: dict[str, list[str]] = {
    "s": ["s", "S", "\uff53", "\uff33", "\u017f"],
    "a": ["a", "A", "\uff41", "\u00aa"],
    "m": ["m", "M", "\uff4d", "\u2098"],
    "t": ["t", "T", "\uff54"],
    "r": ["r", "R", "\u02b3"],
    "e": ["e", "E", "\uff45"],
    "\u00df": ["\u00df", "ss", "SS", "sS", "\u1e9e"],
}
PADDING = ["", "", "", " ", "\t", "\u00a0", "\u3000", "\u200b"]
WRAPS = ["{}", "{}", "EXAMPLE\\{}", "example\\{}", "{}@example.org", "{}@EXAMPLE.ORG",
         "OTHER\\{}", "{}@elsewhere.example"]  # fmt: skip


@st.composite
def spellings(draw: st.DrawFn, names: tuple[str, ...] = ("sam", "Stra\u00dfe")) -> tuple[str, str]:
    """(the user, a spelling of their name) as someone might type it at a NAS."""
    user = draw(st.sampled_from(names))
    base = user.casefold() if user != "Stra\u00dfe" else "stra\u00dfe"
    letters = "".join(draw(st.sampled_from(FORMS.get(char, [char]))) for char in base)
    padded = draw(st.sampled_from(PADDING)) + letters + draw(st.sampled_from(PADDING))
    return user, draw(st.sampled_from(WRAPS)).format(padded)


class Running:
    """One harness and one event loop for a whole hypothesis test: the store and the
    sessions carry over from example to example, which is the point."""

    def __init__(self, tmp_path: Path, overrides: dict[str, Any], enrolled: list[str]):
        self.loop = asyncio.new_event_loop()
        self.h = Harness(tmp_path, overrides, users=USERS)
        for name in enrolled:
            self.h.enrol_totp(name)

    def send(self, typed: str, secret: str) -> tuple[Answer, Any]:
        result: tuple[Answer, Any] = self.loop.run_until_complete(send(self.h, typed, secret))
        return result

    def close(self) -> None:
        self.loop.run_until_complete(self.h.__aexit__())
        self.loop.close()


@pytest.fixture
def optional_run(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path, OPTIONAL, ["sam", "strasse"])
    yield running
    running.close()


async def send(h: Harness, user: str, typed: str, state: bytes | None = None) -> tuple[Answer, Any]:
    """One request; the answer and the engine's request context (identity, audit)."""
    ctx, request = h.request(user, typed, state)
    answer = await h.engine.handle(ctx, request)
    return answer, ctx


def refused(answer: Answer) -> bool:
    return answer.outcome is REJECT and (
        answer.reason.startswith("user_name_") or answer.reason == "no_such_user"
    )


def password_of(user: str) -> str:
    return password(user)  # what the harness hashed into the users file


# No deadline (tests/conftest.py): a timing assertion under a loaded machine proves nothing.
FAST = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- one record


@FAST
@given(case=spellings())
def test_every_accepted_spelling_reaches_the_enrolled_identity(
    optional_run: Running, case: tuple[str, str]
) -> None:
    user, typed = case
    answer, ctx = optional_run.send(typed, password_of(user))
    if refused(answer):
        assert ctx.identity is None
        return
    # Under mfa_optional_per_user a missed record would mean Accept on the password.
    assert answer.outcome is CHALLENGE, (typed, answer.reason)
    assert ctx.identity == IDENTITY[user]
    assert optional_run.h.store.list_users() == ["sam", "strasse"]  # none for an alias


def test_spellings_are_both_refused_and_accepted(optional_run: Running) -> None:
    """The strategy above reaches both branches (a property that only ever refused
    would prove nothing)."""
    outcomes = {
        typed: optional_run.send(typed, password_of(user))[0].outcome
        for user, typed in [
            ("sam", "EXAMPLE\\SAM"),
            ("sam", "\uff53am"),
            ("Stra\u00dfe", "STRASSE"),
        ]
    }
    assert list(outcomes.values()) == [CHALLENGE, REJECT, CHALLENGE]


async def test_aliases_share_one_lockout_counter(tmp_path: Path) -> None:
    async with Harness(tmp_path, OPTIONAL, users=USERS) as h:
        h.enrol_totp("sam")
        spellings_ = ["sam", "SAM", "EXAMPLE\\sam", "Sam@example.org", "sAm"]
        for typed in spellings_:  # max_failures is 5: one wrong code per spelling
            first, _ = await send(h, typed, password("sam"))
            assert first.outcome is CHALLENGE
            wrong, _ = await send(h, typed, "000000", first.state)
            assert wrong.outcome in (CHALLENGE, REJECT)
        record = h.store.get_user("sam")
        assert record is not None and record.locked_until is not None
        # Locked for every spelling, the right code included.
        for typed in ("sam", "example\\SAM"):
            first, _ = await send(h, typed, password("sam"))
            assert (first.outcome, first.reason) == (REJECT, "locked_out")
        assert h.store.list_users() == ["sam"]


async def test_an_alias_cannot_enrol_its_own_authenticator(tmp_path: Path) -> None:
    overrides = {
        "directory": {"realms": REALMS},
        "multifactor": {"enrol_unconfigured_users": True},
    }
    async with Harness(tmp_path, overrides, users=USERS) as h:
        h.enrol_totp("sam")
        for typed in ("SAM", "EXAMPLE\\Sam", "sam@example.org"):
            first, _ = await send(h, typed, password("sam"))
            assert (first.outcome, first.reason) == (CHALLENGE, "totp_challenge"), typed
        # Not enrolled yet: the enrolment happens under the identity, whatever the
        # spelling, and the next spelling is asked for a code, not for an enrolment.
        # (In the window an operator opened: a password alone never enrols.)
        now = h.clock.now
        await h.write(lambda s: s.open_enrolment("Stra\u00dfe", now + 3600, now))
        secret_pw = password("Stra\u00dfe")
        first, ctx = await send(h, "STRASSE", secret_pw)
        assert (first.outcome, first.reason, ctx.identity) == (
            CHALLENGE,
            "totp_enrolment",
            "strasse",
        )
        assert first.reply_message is not None
        key = first.reply_message.split("): ")[1].split(" then")[0].replace(" ", "")
        done, _ = await send(h, "Stra\u00dfe", pyotp.TOTP(key).at(h.clock.now), first.state)
        assert (done.outcome, done.reason) == (ACCEPT, "mfa_enrolled")
        assert h.store.list_users() == ["sam", "strasse"]
        h.clock.advance(30)
        for typed in ("stra\u00dfe", "StrASSE", "example\\STRASSE"):
            again, _ = await send(h, typed, secret_pw)
            assert (again.outcome, again.reason) == (CHALLENGE, "totp_challenge"), typed


# --------------------------------------------------------------------------- users rules


RULES = {
    "directory": {"realms": REALMS},
    "access_policies": {
        "login": {
            "policies": [
                {
                    "name": "no-sam",
                    "rules": [{"type": "users", "users": ["SAM "]}],
                    "action_when_matched": "access_denied",
                }
            ]
        },
        "mfa": {
            "default_action": "mfa_skipped",
            "policies": [
                {
                    "name": "strasse-always",
                    "rules": [{"type": "users", "users": ["Stra\u00dfe"]}],
                    "action_when_matched": "mfa_required",
                }
            ],
        },
    },
}


@pytest.fixture
def rules_run(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path, RULES, ["strasse"])
    yield running
    running.close()


@FAST
@given(case=spellings())
def test_users_rules_cannot_be_escaped(rules_run: Running, case: tuple[str, str]) -> None:
    user, typed = case
    answer, ctx = rules_run.send(typed, password_of(user))
    if refused(answer):
        return
    if user == "sam":
        assert (answer.outcome, answer.reason) == (REJECT, "login_policy_denied"), typed
    else:
        assert answer.outcome is CHALLENGE, (typed, answer.reason)
    assert ctx.audit["login_policy"] == ("no-sam" if user == "sam" else "(default)")


# --------------------------------------------------------------------------- challenge binding


@pytest.mark.parametrize("answer_as", ["sam", "SAM", "EXAMPLE\\sam", "sam@example.org"])
async def test_an_answer_may_spell_the_same_user_any_accepted_way(
    tmp_path: Path, answer_as: str
) -> None:
    async with Harness(tmp_path, OPTIONAL, users=USERS) as h:
        h.enrol_totp("sam")
        first, _ = await send(h, "Sam", password("sam"))
        final, ctx = await send(h, answer_as, h.code("sam"), first.state)
        assert (final.outcome, final.reason) == (ACCEPT, "mfa_code_ok")
        assert ctx.identity == "sam"


@pytest.mark.parametrize("answer_as", ["bob", "OTHER\\sam", "sam@elsewhere.example", "samuel"])
async def test_an_answer_naming_another_user_is_refused(tmp_path: Path, answer_as: str) -> None:
    async with Harness(tmp_path, OPTIONAL, users=USERS) as h:
        h.enrol_totp("sam")
        first, _ = await send(h, "sam", password("sam"))
        final, _ = await send(h, answer_as, h.code("sam"), first.state)
        assert (final.outcome, final.reason) == (REJECT, "state_mismatch")


async def test_a_session_without_the_typed_name_binds_nobody(tmp_path: Path) -> None:
    """A session stored by an older version (no login_key) is refused, not trusted."""
    async with Harness(tmp_path, OPTIONAL, users=USERS) as h:
        h.enrol_totp("sam")
        first, _ = await send(h, "sam", password("sam"))
        assert first.state is not None
        key = session_key(first.state)
        data = await h.state.take(CHALLENGES, key, h.clock.now)
        assert data is not None and data["login_key"] == "sam" and data["user"] == "sam"
        data["login_key"] = ""
        await h.state.put(CHALLENGES, key, data, 60, h.clock.now)
        final, _ = await send(h, "sam", h.code("sam"), first.state)
        assert (final.outcome, final.reason) == (REJECT, "state_mismatch")


# --------------------------------------------------------------------------- audit


async def test_audit_names_the_identity_and_the_typed_name(tmp_path: Path) -> None:
    async with Harness(tmp_path, OPTIONAL, users=USERS) as h:
        h.enrol_totp("sam")
        answer, ctx = await send(h, "EXAMPLE\\SAM", password("sam"))
        assert answer.outcome is CHALLENGE
        assert (ctx.identity, ctx.login.typed, ctx.login.key) == ("sam", "EXAMPLE\\SAM", "sam")
        wrong, ctx = await send(h, "EXAMPLE\\SAM", "not-the-password")
        assert (wrong.reason, ctx.identity) == ("bad_password", None)


def test_normalised_identities_are_what_the_store_holds() -> None:
    assert {normalise(u) for u in USERS} == set(IDENTITY.values())
