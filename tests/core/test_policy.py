"""The pure policy engine: every rule type, the walk, unknown inputs, pre-check, explain."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from mfaproxy.config.policies import (
    AccessPoliciesConfig,
    LoginPoliciesConfig,
    MfaPoliciesConfig,
    Rule,
    TimeRule,
)
from mfaproxy.core.policy import (
    STRICTNESS,
    Decision,
    PolicyContext,
    PolicyStatus,
    Tri,
    combine,
    early_login_denial,
    evaluate,
    in_time_window,
    match_rule,
)
from mfaproxy.core.policy_explain import explain
from mfaproxy.errors import CountryLookupError
from mfaproxy.radius.addresses import IPAddress, parse_ip

M, N, U = Tri.MATCH, Tri.NO_MATCH, Tri.UNKNOWN
FRIDAY_NOON = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)  # a Friday
BASE = PolicyContext(
    user="alice",
    client="vpn",
    client_address=ip_address("10.9.0.1"),
    groups=frozenset({"staff"}),
    backend="ldap",
    is_administrator=False,
)
RULE = TypeAdapter[Rule](Rule)


def ctx(**fields: Any) -> PolicyContext:
    return replace(BASE, **fields)


def rule(**data: Any) -> Rule:
    return RULE.validate_python(data)


def result(data: dict[str, Any], context: PolicyContext, now: datetime = FRIDAY_NOON) -> Tri:
    return match_rule(rule(**data), context, now).result


def policy(name: str, rules: list[dict[str, Any]], matched: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "rules": rules, "action_when_matched": matched, **more}


def login(*policies: dict[str, Any], default: str = "access_allowed") -> LoginPoliciesConfig:
    return LoginPoliciesConfig.model_validate({"default_action": default, "policies": policies})


def mfa(*policies: dict[str, Any], default: str = "mfa_required") -> MfaPoliciesConfig:
    return MfaPoliciesConfig.model_validate({"default_action": default, "policies": policies})


def station_rule(*ranges: str) -> dict[str, Any]:
    return {"type": "ip_addresses", "source": "calling_station_id", "ranges": list(ranges)}


GROUP = {"type": "user_groups", "groups": ["vpn-admins"]}


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" 192.0.2.1 ", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8::5", "2001:db8::5"),
        ("AA-BB-CC-DD-EE-FF", None),
        ("aa:bb:cc:dd:ee:ff", None),
        ("192.0.2.1:4500", None),
        ("3232235777", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_ip(text: str | None, expected: str | None) -> None:
    parsed = parse_ip(text)
    assert (None if parsed is None else str(parsed)) == expected


@pytest.mark.parametrize(
    ("source", "fields", "expected"),
    [
        ("client_address", {}, M),
        ("client_address", {"client_address": ip_address("192.0.2.1")}, N),
        ("nas_ip_address", {"nas_ip_address": ip_address("10.0.0.2")}, M),
        ("nas_ip_address", {"nas_ip_address": ip_address("2001:db8::1")}, N),
        ("nas_ip_address", {}, U),
        ("calling_station_id", {"calling_station_id": "10.200.0.9"}, M),
        ("calling_station_id", {"calling_station_id": "::ffff:10.200.0.9"}, M),
        ("calling_station_id", {"calling_station_id": "203.0.113.9"}, N),
        ("calling_station_id", {}, U),
        ("calling_station_id", {"calling_station_id": "00-11-22-33-44-55"}, U),
        ("calling_station_id", {"calling_station_id": "+15551234567"}, U),
    ],
)
def test_ip_addresses_rule(source: str, fields: dict[str, Any], expected: Tri) -> None:
    data = {"type": "ip_addresses", "source": source, "ranges": ["10.0.0.0/8", "fd00::/8"]}
    assert result(data, ctx(**fields)) is expected


def test_ip_addresses_rule_ipv6_and_reason() -> None:
    data = station_rule("2001:db8::/32")
    verdict = match_rule(rule(**data), ctx(calling_station_id="2001:db8::42"), FRIDAY_NOON)
    assert verdict.result is M
    assert "2001:db8::/32" in verdict.reason


def test_unusable_station_reason_is_quoted_and_cut() -> None:
    junk = "x" * 500
    verdict = match_rule(
        rule(**station_rule("10.0.0.0/8")), ctx(calling_station_id=junk), FRIDAY_NOON
    )
    assert verdict.result is U
    assert len(verdict.reason) < 120 and "'xxx" in verdict.reason


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("data", "fields", "expected"),
    [
        ({"type": "users", "users": ["bob", "alice"]}, {}, M),
        ({"type": "users", "users": ["bob", "alice"]}, {"user": "ALICE"}, M),
        ({"type": "users", "users": ["bob"]}, {}, N),
        ({"type": "users", "users": ["alice"]}, {"user": None}, U),
        ({"type": "clients", "clients": ["vpn"]}, {}, M),
        ({"type": "clients", "clients": ["wifi"]}, {}, N),
        ({"type": "user_groups", "groups": ["Staff"]}, {}, M),
        ({"type": "user_groups", "groups": ["admins"]}, {}, N),
        ({"type": "user_groups", "groups": ["admins"]}, {"groups": frozenset()}, N),
        ({"type": "user_groups", "groups": ["admins"]}, {"groups": None}, U),
        ({"type": "authentication_type", "backends": ["ldap"]}, {}, M),
        ({"type": "authentication_type", "backends": ["local", "radius"]}, {}, N),
        ({"type": "authentication_type", "backends": ["ldap"]}, {"backend": None}, U),
        ({"type": "administrator"}, {"is_administrator": True}, M),
        ({"type": "administrator"}, {"is_administrator": False}, N),
        ({"type": "administrator"}, {"is_administrator": None}, U),
    ],
)
def test_directory_and_name_rules(
    data: dict[str, Any], fields: dict[str, Any], expected: Tri
) -> None:
    assert result(data, ctx(**fields)) is expected


# --------------------------------------------------------------------------- time

OFFICE = {
    "type": "time",
    "days": ["mon", "tue", "wed", "thu", "fri"],
    "start": "08:00",
    "end": "18:00",
    "timezone": "Europe/Paris",
}
NIGHT = {"type": "time", "days": ["fri"], "start": "22:00", "end": "06:00", "timezone": "UTC"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "when", "expected"),
    [
        (OFFICE, "2024-05-03T12:00", True),  # Fri 14:00 CEST
        (OFFICE, "2024-05-03T06:00", True),  # 08:00 CEST: start is inclusive
        (OFFICE, "2024-05-03T05:59", False),
        (OFFICE, "2024-05-03T15:59", True),  # 17:59 CEST
        (OFFICE, "2024-05-03T16:00", False),  # 18:00 CEST: end is exclusive
        (OFFICE, "2024-05-04T12:00", False),  # Saturday
        (OFFICE, "2024-01-05T07:30", True),  # winter: 08:30 CET
        (OFFICE, "2024-01-05T06:30", False),  # winter: 07:30 CET
        (NIGHT, "2024-05-03T23:00", True),  # Friday night
        (NIGHT, "2024-05-04T05:59", True),  # Saturday morning, window opened Friday
        (NIGHT, "2024-05-04T06:00", False),
        (NIGHT, "2024-05-03T05:00", False),  # Friday morning: Thursday is not listed
        (NIGHT, "2024-05-03T21:59", False),
        (NIGHT, "2024-05-04T22:30", False),  # Saturday night
        ({**NIGHT, "days": ["sun"]}, "2024-05-06T01:00", True),  # Sunday into Monday
        ({**NIGHT, "days": []}, "2024-05-01T03:00", True),  # every day
        ({**NIGHT, "days": []}, "2024-05-01T12:00", False),
        ({"type": "time", "timezone": "UTC"}, "2024-05-05T23:59", True),  # 00:00-24:00
        # 13:00 UTC Friday is 01:00 Saturday in Auckland (NZST, +12).
        (
            {"type": "time", "days": ["sat"], "end": "02:00", "timezone": "Pacific/Auckland"},
            "2024-05-03T13:00",
            True,
        ),
        (
            {"type": "time", "days": ["fri"], "timezone": "Pacific/Auckland"},
            "2024-05-03T13:00",
            False,
        ),
        (
            {"type": "time", "days": ["thu"], "start": "17:00", "timezone": "America/Los_Angeles"},
            "2024-05-03T01:00",  # Thursday 18:00 PDT
            True,
        ),
    ],
)
def test_time_rule(data: dict[str, Any], when: str, expected: bool) -> None:
    now = at(when)
    assert result(data, BASE, now) is (M if expected else N)
    time_rule = rule(**data)
    assert isinstance(time_rule, TimeRule)
    assert in_time_window(time_rule, now) is expected


def test_time_rule_reads_any_aware_datetime() -> None:
    plus_five = FRIDAY_NOON.astimezone(timezone(timedelta(hours=5)))
    assert result(OFFICE, BASE, plus_five) is M


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(login(), BASE, datetime(2024, 5, 3, 12, 0))


def test_time_reason_names_local_time() -> None:
    verdict = match_rule(rule(**OFFICE), BASE, FRIDAY_NOON)
    assert "fri 14:00 Europe/Paris is inside" in verdict.reason


# --------------------------------------------------------------------------- geo_ip

GEO = {"type": "geo_ip", "countries": ["CA"], "database": "/geo/country.mmdb"}
TABLE = {"192.0.2.1": "CA", "198.51.100.1": "fr", "10.0.0.1": None}


def fake_lookup(database: Path, address: IPAddress) -> str | None:
    assert database == Path("/geo/country.mmdb")
    if str(address) == "203.0.113.1":
        raise CountryLookupError("corrupt database")
    return TABLE[str(address)]


@pytest.mark.parametrize(
    ("station", "lookup", "expected"),
    [
        ("192.0.2.1", fake_lookup, M),
        ("::ffff:192.0.2.1", fake_lookup, M),
        ("198.51.100.1", fake_lookup, N),
        ("10.0.0.1", fake_lookup, N),  # no country: a fact, not missing input
        ("203.0.113.1", fake_lookup, U),  # the lookup failed
        ("192.0.2.1", None, U),  # no database loaded
        (None, fake_lookup, U),
        ("00:11:22:33:44:55", fake_lookup, U),
    ],
)
def test_geo_ip_rule(station: str | None, lookup: Any, expected: Tri) -> None:
    context = ctx(calling_station_id=station, country_lookup=lookup)
    assert result(GEO, context) is expected


def test_geo_ip_ignores_client_address() -> None:
    context = ctx(client_address=ip_address("192.0.2.1"), country_lookup=fake_lookup)
    assert result(GEO, context) is U


# --------------------------------------------------------------------------- combining


@pytest.mark.parametrize(
    ("results", "all_", "any_"),
    [
        ([], M, N),
        ([M, M], M, M),
        ([M, N], N, M),
        ([N, N], N, N),
        ([M, U], U, M),
        ([N, U], N, U),
        ([U, U], U, U),
        ([M, N, U], N, M),
    ],
)
def test_combine_is_kleene(results: list[Tri], all_: Tri, any_: Tri) -> None:
    assert combine(results, "all") is all_
    assert combine(results, "any") is any_


# --------------------------------------------------------------------------- the walk


def test_defaults_apply_when_there_are_no_policies() -> None:
    for target, action in ((login(), "access_allowed"), (mfa(), "mfa_required")):
        decision = evaluate(target, BASE, FRIDAY_NOON)
        assert (decision.action, decision.policy, decision.definite) == (action, None, True)
        assert decision.default_reached
    denied = evaluate(login(default="access_denied"), BASE, FRIDAY_NOON)
    assert denied.action == "access_denied"


def test_first_non_continue_decides() -> None:
    target = login(
        policy("noop", [], "continue"),
        policy("deny-vpn", [{"type": "clients", "clients": ["vpn"]}], "access_denied"),
        policy("allow-all", [], "access_allowed"),
    )
    decision = evaluate(target, BASE, FRIDAY_NOON)
    assert (decision.action, decision.policy) == ("access_denied", "deny-vpn")
    statuses = [t.status for t in decision.trace]
    assert statuses == [PolicyStatus.EVALUATED, PolicyStatus.EVALUATED, PolicyStatus.NOT_REACHED]
    assert decision.trace[0].actions == ("continue",)
    assert not decision.default_reached


def test_action_when_not_matched_decides() -> None:
    target = login(
        policy(
            "only-bob",
            [{"type": "users", "users": ["bob"]}],
            "continue",
            action_when_not_matched="access_denied",
        ),
    )
    decision = evaluate(target, BASE, FRIDAY_NOON)
    assert (decision.action, decision.policy) == ("access_denied", "only-bob")
    assert decision.trace[0].outcome is N


def test_inactive_policies_are_skipped() -> None:
    target = mfa(
        policy("off", [], "mfa_skipped", active=False),
        policy("optional", [], "mfa_optional_per_user"),
    )
    decision = evaluate(target, BASE, FRIDAY_NOON)
    assert (decision.action, decision.policy) == ("mfa_optional_per_user", "optional")
    assert decision.trace[0].status is PolicyStatus.INACTIVE
    assert decision.trace[0].rules == ()


@pytest.mark.parametrize(
    ("validation", "action"), [("all", "mfa_required"), ("any", "mfa_skipped")]
)
def test_all_and_any_validation(validation: str, action: str) -> None:
    rules = [{"type": "users", "users": ["alice"]}, {"type": "clients", "clients": ["wifi"]}]
    target = mfa(policy("p", rules, "mfa_skipped", validation=validation))
    assert evaluate(target, BASE, FRIDAY_NOON).action == action


def test_trace_lists_every_rule() -> None:
    rules = [{"type": "users", "users": ["bob"]}, GROUP, station_rule("10.0.0.0/8")]
    target = mfa(policy("p", rules, "mfa_skipped"))
    decision = evaluate(target, ctx(groups=None), FRIDAY_NOON)
    trace = decision.trace[0]
    assert [(r.index, r.type, r.result) for r in trace.rules] == [
        (0, "users", N),
        (1, "user_groups", U),
        (2, "ip_addresses", U),
    ]
    assert trace.outcome is N  # one definite NO_MATCH settles `all`
    assert decision.definite


# --------------------------------------------------------------------------- unknown input


def test_unknown_group_cannot_allow() -> None:
    target = login(policy("admins", [GROUP], "access_allowed"), default="access_denied")
    decision = evaluate(target, ctx(groups=None), FRIDAY_NOON)
    assert (decision.action, decision.policy) == ("access_denied", None)
    assert decision.possible == ("access_denied", "access_allowed")
    assert not decision.definite
    assert decision.trace[0].actions == ("access_allowed", "continue")


@pytest.mark.parametrize("station", [None, "AA-BB-CC-DD-EE-FF", "not an address"])
def test_unusable_station_id_cannot_escape_an_address_restriction(station: str | None) -> None:
    target = login(
        policy(
            "office-only",
            [station_rule("10.0.0.0/8")],
            "continue",
            action_when_not_matched="access_denied",
        ),
        policy("everyone-else", [], "access_allowed"),
    )
    decision = evaluate(target, ctx(calling_station_id=station), FRIDAY_NOON)
    assert (decision.action, decision.policy) == ("access_denied", "office-only")
    allowed = evaluate(target, ctx(calling_station_id="10.1.2.3"), FRIDAY_NOON)
    assert (allowed.action, allowed.definite) == ("access_allowed", True)


def test_unusable_station_id_cannot_escape_an_address_block() -> None:
    target = login(policy("blocklist", [station_rule("203.0.113.0/24")], "access_denied"))
    assert evaluate(target, ctx(calling_station_id="aa:bb"), FRIDAY_NOON).action == "access_denied"
    assert evaluate(target, ctx(calling_station_id="192.0.2.1"), FRIDAY_NOON).action == (
        "access_allowed"
    )


@pytest.mark.parametrize(
    ("matched", "not_matched", "default", "action", "by"),
    [
        ("mfa_skipped", "continue", "mfa_required", "mfa_required", None),
        ("mfa_skipped", "continue", "mfa_optional_per_user", "mfa_optional_per_user", None),
        ("mfa_skipped", "mfa_optional_per_user", "mfa_skipped", "mfa_optional_per_user", "p"),
        ("mfa_required", "continue", "mfa_skipped", "mfa_required", "p"),
        ("continue", "mfa_skipped", "mfa_required", "mfa_required", None),
    ],
)
def test_unknown_mfa_resolves_to_the_strictest(
    matched: str, not_matched: str, default: str, action: str, by: str | None
) -> None:
    target = mfa(
        policy("p", [station_rule("10.0.0.0/8")], matched, action_when_not_matched=not_matched),
        default=default,
    )
    decision = evaluate(target, ctx(calling_station_id=None), FRIDAY_NOON)
    assert (decision.action, decision.policy) == (action, by)


def test_unknown_with_equal_actions_is_definite() -> None:
    target = mfa(policy("p", [GROUP], "mfa_skipped", action_when_not_matched="mfa_skipped"))
    decision = evaluate(target, ctx(groups=None), FRIDAY_NOON)
    assert (decision.action, decision.definite) == ("mfa_skipped", True)


def test_kleene_keeps_decisions_definite() -> None:
    rules = [GROUP, {"type": "users", "users": ["alice"]}]
    target = mfa(policy("p", rules, "mfa_skipped", validation="any"))
    decision = evaluate(target, ctx(groups=None), FRIDAY_NOON)
    assert (decision.action, decision.definite) == ("mfa_skipped", True)


def test_tie_names_the_earliest_policy() -> None:
    target = login(
        policy("first", [GROUP], "access_denied"),
        policy("second", [], "access_denied"),
    )
    decision = evaluate(target, ctx(groups=None), FRIDAY_NOON)
    assert (decision.action, decision.policy, decision.definite) == ("access_denied", "first", True)


# Random policy lists checked against every way the missing input could be filled in.
POOL: list[dict[str, Any]] = [
    {"type": "user_groups", "groups": ["g1"]},
    {"type": "user_groups", "groups": ["g2"]},
    {"type": "administrator"},
    {"type": "authentication_type", "backends": ["ldap"]},
    station_rule("10.0.0.0/8"),
    {"type": "users", "users": ["alice"]},
    {"type": "clients", "clients": ["wifi"]},
]
FILLS: dict[str, list[Any]] = {
    "groups": [frozenset(), frozenset({"g1"}), frozenset({"g2"}), frozenset({"g1", "g2"})],
    "is_administrator": [True, False],
    "backend": ["local", "ldap"],
    "calling_station_id": ["10.1.2.3", "192.0.2.1"],
    "user": ["alice", "bob"],
}
ACTIONS = {
    "login": ["continue", "access_denied", "access_allowed"],
    "mfa": ["continue", "mfa_required", "mfa_skipped", "mfa_optional_per_user"],
}


def random_target(rng: random.Random, name: str) -> LoginPoliciesConfig | MfaPoliciesConfig:
    actions = ACTIONS[name]
    policies = [
        policy(
            f"p{i}",
            rng.sample(POOL, rng.randint(1, 3)),
            rng.choice(actions),
            action_when_not_matched=rng.choice(actions),
            validation=rng.choice(["all", "any"]),
            active=rng.random() > 0.1,
        )
        for i in range(rng.randint(1, 4))
    ]
    default = rng.choice(actions[1:])
    return login(*policies, default=default) if name == "login" else mfa(*policies, default=default)


def completions(context: PolicyContext) -> list[PolicyContext]:
    missing = [f for f in FILLS if getattr(context, f) is None]
    return [
        replace(context, **dict(zip(missing, values, strict=True)))
        for values in itertools.product(*(FILLS[f] for f in missing))
    ]


def random_context(rng: random.Random) -> PolicyContext:
    known = {f: rng.choice(values) for f, values in FILLS.items() if rng.random() < 0.4}
    return ctx(**({f: None for f in FILLS} | known))


@pytest.mark.parametrize("name", ["login", "mfa"])
def test_missing_input_never_weakens(name: str) -> None:
    rng = random.Random(20240503)
    for _ in range(400):
        target, context = random_target(rng, name), random_context(rng)
        decision = evaluate(target, context, FRIDAY_NOON)
        outcomes = {evaluate(target, full, FRIDAY_NOON).action for full in completions(context)}
        assert outcomes <= set(decision.possible)
        assert all(STRICTNESS[decision.action] >= STRICTNESS[a] for a in outcomes)
        if decision.definite:
            assert outcomes == {decision.action}
        if isinstance(target, LoginPoliciesConfig) and early_login_denial(
            target, context, FRIDAY_NOON
        ):
            assert outcomes == {"access_denied"}


# --------------------------------------------------------------------------- users rules

USER_SPELLINGS = [" sam", "sam ", "sam\t", "SAM", "\uff53am", "\u017fam", "S\uff21M"]


@given(st.sampled_from(USER_SPELLINGS), st.sampled_from(USER_SPELLINGS))
def test_users_rules_compare_normalised_names(listed: str, identity: str) -> None:
    """A deny or a per-user requirement on "sam" catches every spelling of sam, however
    the rule or the identity is written (the engine gives normalised identities)."""
    assert result({"type": "users", "users": [listed]}, ctx(user=identity)) is M


@pytest.mark.parametrize(
    ("listed", "identity"), [("Stra\u00dfe", "strasse"), ("STRASSE", "stra\u00dfe")]
)
def test_users_rules_fold_sharp_s(listed: str, identity: str) -> None:
    assert result({"type": "users", "users": [listed]}, ctx(user=identity)) is M


def test_users_rule_is_unknown_before_the_directory_answers() -> None:
    """Before the password check the typed name is not an identity: a deny on a user is
    decided after it, and never turns into an early allow."""
    target = login(
        policy("no-sam", [{"type": "users", "users": ["sam"]}], "access_denied"),
    )
    assert early_login_denial(target, ctx(user="sam"), FRIDAY_NOON) is None
    assert evaluate(target, ctx(user="SAM"), FRIDAY_NOON).action == "access_denied"
    before = evaluate(target, ctx(user="sam").before_primary(), FRIDAY_NOON)
    assert before.possible == ("access_denied", "access_allowed")
    assert before.action == "access_denied"


# --------------------------------------------------------------------------- pre-check


def test_early_denial_on_address() -> None:
    target = login(
        policy(
            "office",
            [{"type": "ip_addresses", "source": "client_address", "ranges": ["192.0.2.0/24"]}],
            "continue",
            action_when_not_matched="access_denied",
        ),
        policy("staff", [{"type": "user_groups", "groups": ["staff"]}], "access_allowed"),
    )
    early = early_login_denial(target, BASE, FRIDAY_NOON)
    assert early is not None
    assert (early.action, early.policy) == ("access_denied", "office")
    inside = ctx(client_address=ip_address("192.0.2.9"))
    assert early_login_denial(target, inside, FRIDAY_NOON) is None


def test_early_denial_outside_hours_and_by_default() -> None:
    hours = {**OFFICE, "timezone": "UTC"}
    target = login(policy("hours", [hours], "access_allowed"), default="access_denied")
    assert early_login_denial(target, BASE, at("2024-05-04T12:00")) is not None  # Saturday
    assert early_login_denial(target, BASE, FRIDAY_NOON) is None


def test_no_early_denial_when_groups_could_allow() -> None:
    target = login(
        policy("admins", [GROUP], "access_allowed"),
        policy(
            "outside",
            [station_rule("10.0.0.0/8")],
            "continue",
            action_when_not_matched="access_denied",
        ),
    )
    outside = ctx(calling_station_id="192.0.2.1")
    assert early_login_denial(target, outside, FRIDAY_NOON) is None
    admin = evaluate(target, replace(outside, groups=frozenset({"vpn-admins"})), FRIDAY_NOON)
    assert (admin.action, admin.policy) == ("access_allowed", "admins")
    other = evaluate(target, outside, FRIDAY_NOON)
    assert (other.action, other.policy, other.definite) == ("access_denied", "outside", True)


def test_early_denial_ignores_directory_data_already_in_the_context() -> None:
    target = login(
        policy("members", [GROUP], "access_allowed", action_when_not_matched="access_denied")
    )
    assert evaluate(target, BASE, FRIDAY_NOON).action == "access_denied"
    assert early_login_denial(target, BASE, FRIDAY_NOON) is None
    assert BASE.before_primary().groups is None
    assert BASE.before_primary().backend is None
    assert BASE.before_primary().is_administrator is None


# --------------------------------------------------------------------------- output


def test_log_fields() -> None:
    target = mfa(policy("p", [GROUP, station_rule("10.0.0.0/8")], "mfa_skipped"))
    decision = evaluate(target, ctx(groups=None), FRIDAY_NOON)
    assert decision.log_fields() == {
        "mfa_action": "mfa_required",
        "mfa_policy": "(default)",
        "mfa_definite": False,
        "mfa_unknown_rules": ["p#0:user_groups", "p#1:ip_addresses"],
    }


def explained(config: AccessPoliciesConfig, context: PolicyContext) -> str:
    return "\n".join(explain(config, context, FRIDAY_NOON))


def test_explain_shows_the_decision_and_why() -> None:
    config = AccessPoliciesConfig(
        login=login(
            policy("old", [], "access_denied", active=False),
            policy("admins", [GROUP], "access_allowed"),
            policy(
                "office",
                [station_rule("10.0.0.0/8")],
                "continue",
                action_when_not_matched="access_denied",
            ),
        ),
        mfa=mfa(policy("weekdays", [OFFICE], "mfa_optional_per_user")),
    )
    text = explained(config, ctx(groups=None, calling_station_id="AA-BB-CC-DD-EE-FF"))
    assert 'login: access_denied (by policy "office"); unknown input could also give' in text
    assert "[0] old: inactive" in text
    assert "unknown   rules[0] user_groups: groups not known" in text
    assert "'AA-BB-CC-DD-EE-FF' is not an IP address" in text
    assert "Before the password check: not decided" in text
    assert "a real request stops at login" in text
    assert 'mfa: mfa_optional_per_user (by policy "weekdays")' in text
    assert "match     rules[0] time: fri 14:00 Europe/Paris is inside" in text
    assert "default: mfa_required (not reached)" in text


def test_explain_early_denial_and_default() -> None:
    config = AccessPoliciesConfig(login=login(default="access_denied"))
    text = explained(config, BASE)
    assert "Before the password check: rejected by the default action" in text
    assert "login: access_denied (by the default action)" in text
    assert "default: access_denied (applies)" in text
    assert "groups              staff" in text


def test_decision_is_immutable() -> None:
    decision = evaluate(login(), BASE, FRIDAY_NOON)
    assert isinstance(decision, Decision)
    with pytest.raises(AttributeError):
        decision.action = "access_denied"  # type: ignore[misc]
