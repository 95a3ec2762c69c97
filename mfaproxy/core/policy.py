"""Conditional access policy evaluation. Pure: no I/O, no clock; `now` is passed in.

Each rule gives one of three results: MATCH, NO_MATCH or UNKNOWN (its input is missing,
e.g. no Calling-Station-Id, or groups before the directory lookup). What each rule does
with missing input is listed in `_MATCHERS` below.

Rules combine with Kleene logic, so a policy is definite whenever the unknown inputs
cannot change it: `all` is NO_MATCH if any rule is NO_MATCH, else UNKNOWN if any rule is
UNKNOWN, else MATCH (no rules: MATCH); `any` is the mirror image.

How UNKNOWN resolves: a policy with an UNKNOWN outcome may lead to either of its two
actions. The walk keeps every action the request could end with (`Decision.possible`)
and the decision is the strictest of them:

    login:  access_denied > access_allowed
    mfa:    mfa_required > mfa_optional_per_user > mfa_skipped

`continue` has no rank of its own: its strength is whatever the following policies (or
the default) give, so when `continue` is possible the walk goes on and the later
outcomes join the candidates. Example: "allow group vpn-admins, else continue" followed
by "deny outside 10.0.0.0/8" denies an unknown-group user calling from outside, and
allows nobody on a guess. Unknown outcomes of different policies are treated as
independent, which can only add candidates, so the result is never weaker than the one
the missing input would have given. On ties the earliest policy is named.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from mfaproxy.config.policies import (
    DAYS,
    Action,
    AdministratorRule,
    AuthenticationTypeRule,
    ClientsRule,
    GeoIpRule,
    IpAddressesRule,
    LoginPoliciesConfig,
    LoginPolicy,
    MfaPolicy,
    Rule,
    TargetPolicies,
    TimeRule,
    TrustedReconnectRule,
    UserGroupsRule,
    UsersRule,
)
from mfaproxy.core.groups import matching
from mfaproxy.core.identity import normalise
from mfaproxy.core.trust import CLOCK_SKEW, TrustFact, age_text
from mfaproxy.errors import CountryLookupError
from mfaproxy.radius.addresses import IPAddress, parse_ip, unmap

# (database path, address) -> ISO 3166-1 alpha-2 code, or None when the database places
# the address in no country (private, reserved or unlisted space). Raises
# CountryLookupError when it cannot answer. The adapter in mfaproxy.adapters.geoip does
# the reading; the engine only calls it, lazily, when a geo_ip rule is reached.
CountryLookup = Callable[[Path, IPAddress], str | None]

# Higher is stricter. Action names are distinct across targets, so one table serves both.
STRICTNESS: dict[str, int] = {
    "access_allowed": 0,
    "access_denied": 1,
    "mfa_skipped": 0,
    "mfa_optional_per_user": 1,
    "mfa_required": 2,
}


class Tri(enum.Enum):
    MATCH = "match"
    NO_MATCH = "no match"
    UNKNOWN = "unknown"


class PolicyStatus(enum.Enum):
    EVALUATED = "evaluated"
    INACTIVE = "inactive"
    # An earlier policy decided for certain; this one could not change the outcome.
    NOT_REACHED = "not reached"


@dataclass(frozen=True)
class PolicyContext:
    """What is known about one request. None means "not known", never "empty"."""

    # The user's identity (core/identity.py) once the directory has answered; None (not
    # known) before the password check: the typed name is not who the user is.
    user: str | None
    client: str  # name of the matching `clients:` entry
    client_address: IPAddress  # UDP source address of the NAS
    nas_ip_address: IPAddress | None = None  # NAS-IP-Address / NAS-IPv6-Address
    calling_station_id: str | None = None  # raw attribute: an IP, a MAC or anything
    # Known only after the primary check; None before it.
    groups: frozenset[str] | None = None
    backend: str | None = None  # local | ldap | radius: which one authenticated the user
    is_administrator: bool | None = None  # in multifactor.administrators.group
    country_lookup: CountryLookup | None = None  # None: geo_ip rules are UNKNOWN
    # The user's last second factor from this NAS and station (core/trust.py), looked
    # up after the primary check; None: not looked up (trusted_reconnect is UNKNOWN).
    trust: TrustFact | None = None

    def before_primary(self) -> PolicyContext:
        """The same request with everything the directory tells us forced unknown."""
        return replace(
            self, user=None, groups=None, backend=None, is_administrator=None, trust=None
        )

    @property
    def station_ip(self) -> IPAddress | None:
        return parse_ip(self.calling_station_id)


@dataclass(frozen=True)
class RuleTrace:
    index: int
    type: str
    result: Tri
    reason: str


@dataclass(frozen=True)
class PolicyTrace:
    name: str
    status: PolicyStatus
    validation: str
    outcome: Tri | None = None  # None unless evaluated
    # Actions this policy may lead to: one, or two when its outcome is UNKNOWN.
    actions: tuple[Action, ...] = ()
    rules: tuple[RuleTrace, ...] = ()


@dataclass(frozen=True)
class Decision:
    target: str  # login | mfa
    action: Action  # the strictest of `possible`: what to do
    policy: str | None  # the policy that gave `action`; None for the default action
    possible: tuple[Action, ...]  # every outcome the unknown inputs allow, strictest first
    trace: tuple[PolicyTrace, ...]
    default_reached: bool

    @property
    def definite(self) -> bool:
        """True when missing input could not have changed the outcome."""
        return len(self.possible) == 1

    def log_fields(self) -> dict[str, object]:
        unknown = [
            f"{p.name}#{r.index}:{r.type}"
            for p in self.trace
            for r in p.rules
            if r.result is Tri.UNKNOWN
        ]
        return {
            f"{self.target}_action": self.action,
            f"{self.target}_policy": self.policy or "(default)",
            f"{self.target}_definite": self.definite,
            f"{self.target}_unknown_rules": unknown,
        }


# --------------------------------------------------------------------------- rules


class RuleVerdict(NamedTuple):
    result: Tri
    reason: str


def _yes(hit: bool, reason: str) -> RuleVerdict:
    return RuleVerdict(Tri.MATCH if hit else Tri.NO_MATCH, reason)


def _shown(raw: str) -> str:
    # Calling-Station-Id is peer input: keep it short and quoted in traces and logs.
    return repr(raw[:64])


def _station_ip(ctx: PolicyContext) -> tuple[IPAddress | None, str]:
    """The Calling-Station-Id address, or None with the reason it is unusable."""
    if ctx.calling_station_id is None:
        return None, "no Calling-Station-Id in the request"
    address = ctx.station_ip
    if address is None:
        return None, f"Calling-Station-Id {_shown(ctx.calling_station_id)} is not an IP address"
    return address, ""


def _address(source: str, ctx: PolicyContext) -> tuple[IPAddress | None, str]:
    if source == "client_address":
        return unmap(ctx.client_address), ""
    if source == "nas_ip_address":
        address = ctx.nas_ip_address
        return (None if address is None else unmap(address)), "no NAS-IP-Address in the request"
    return _station_ip(ctx)


def _match_ip_addresses(rule: IpAddressesRule, ctx: PolicyContext, now: datetime) -> RuleVerdict:
    address, missing = _address(rule.source, ctx)
    if address is None:
        return RuleVerdict(Tri.UNKNOWN, missing)
    network = next((net for net in rule.ranges if address in net), None)
    if network is None:
        return RuleVerdict(Tri.NO_MATCH, f"{rule.source} {address} is in none of the ranges")
    return RuleVerdict(Tri.MATCH, f"{rule.source} {address} is in {network}")


def _match_users(rule: UsersRule, ctx: PolicyContext, now: datetime) -> RuleVerdict:
    if ctx.user is None:
        return RuleVerdict(Tri.UNKNOWN, "user not known (before the directory lookup)")
    # The one normaliser on both sides: a deny on "sam" also stops "SAM", a full-width
    # or padded spelling, and "Stra\u00dfe" is "STRASSE" (core/identity.py).
    hit = normalise(ctx.user) in {normalise(name) for name in rule.users}
    return _yes(hit, f"user {ctx.user!r} is {'' if hit else 'not '}listed")


def _match_user_groups(rule: UserGroupsRule, ctx: PolicyContext, now: datetime) -> RuleVerdict:
    if ctx.groups is None:
        return RuleVerdict(
            Tri.UNKNOWN, "groups not known (before the directory lookup, or no group data)"
        )
    common = matching(ctx.groups, rule.groups)
    return _yes(bool(common), f"member of {', '.join(common)}" if common else "in no listed group")


def _match_clients(rule: ClientsRule, ctx: PolicyContext, now: datetime) -> RuleVerdict:
    hit = ctx.client in rule.clients
    return _yes(hit, f"client {ctx.client!r} is {'' if hit else 'not '}listed")


def in_time_window(rule: TimeRule, now: datetime) -> bool:
    """Whether `now` falls in the rule's window, in the rule's time zone."""
    local = now.astimezone(rule.zone)
    minute, day = local.hour * 60 + local.minute, local.weekday()
    start, end, days = rule.start_minute, rule.end_minute, rule.day_numbers
    if start < end:
        return day in days and start <= minute < end
    # Overnight: the part after midnight belongs to the day the window opened.
    return (day in days and minute >= start) or ((day - 1) % 7 in days and minute < end)


def _match_time(rule: TimeRule, ctx: PolicyContext, now: datetime) -> RuleVerdict:
    local = now.astimezone(rule.zone)
    hit = in_time_window(rule, now)
    days = ",".join(rule.days) or "every day"
    where = "inside" if hit else "outside"
    when = f"{DAYS[local.weekday()]} {local:%H:%M} {rule.timezone}"
    return _yes(hit, f"{when} is {where} {days} {rule.start}-{rule.end}")


def _match_authentication_type(
    rule: AuthenticationTypeRule, ctx: PolicyContext, now: datetime
) -> RuleVerdict:
    if ctx.backend is None:
        return RuleVerdict(Tri.UNKNOWN, "backend not known (before the primary check)")
    hit = ctx.backend in rule.backends
    return _yes(hit, f"authenticated by {ctx.backend}")


def _match_administrator(rule: AdministratorRule, ctx: PolicyContext, now: datetime) -> RuleVerdict:
    if ctx.is_administrator is None:
        return RuleVerdict(
            Tri.UNKNOWN, "administrator membership not known (before the lookup, or no groups)"
        )
    return _yes(
        ctx.is_administrator, f"is {'' if ctx.is_administrator else 'not '}an administrator"
    )


def _match_geo_ip(rule: GeoIpRule, ctx: PolicyContext, now: datetime) -> RuleVerdict:
    address, missing = _station_ip(ctx)
    if address is None:
        return RuleVerdict(Tri.UNKNOWN, missing)
    if ctx.country_lookup is None:
        return RuleVerdict(Tri.UNKNOWN, "no geo-IP database loaded")
    try:
        country = ctx.country_lookup(rule.database, address)
    except CountryLookupError as exc:
        return RuleVerdict(Tri.UNKNOWN, f"geo-IP lookup of {address} failed: {exc}")
    if country is None:
        # A known fact, not missing input: the address is in no country at all.
        return RuleVerdict(Tri.NO_MATCH, f"{address} has no country in {rule.database.name}")
    hit = country.upper() in rule.countries
    return _yes(hit, f"{address} is in {country.upper()}")


def _match_trusted_reconnect(
    rule: TrustedReconnectRule, ctx: PolicyContext, now: datetime
) -> RuleVerdict:
    trust = ctx.trust
    if trust is None:
        return RuleVerdict(Tri.UNKNOWN, "last second factor not looked up")
    if not trust.known:
        return RuleVerdict(Tri.UNKNOWN, trust.why)
    if trust.passed_at is None:
        return RuleVerdict(Tri.NO_MATCH, trust.why)
    age = now.timestamp() - trust.passed_at
    if -CLOCK_SKEW <= age < rule.minutes * 60:
        return RuleVerdict(Tri.MATCH, f"{trust.why} {age_text(age)} ago")
    return RuleVerdict(
        Tri.NO_MATCH, f"last second factor {age_text(age)} ago, over {rule.minutes} min"
    )


# What each rule does when its input is missing:
#   ip_addresses         client_address is always known; a missing NAS-IP-Address, a
#                        missing Calling-Station-Id or one that is not an IP: UNKNOWN
#   users                UNKNOWN until the directory answered (user is None): the rule
#                        names identities, and the typed name is not one yet
#   clients              always known (the client entry)
#   user_groups          UNKNOWN until the directory answered, and when its backend has
#                        no group data (groups is None: upstream RADIUS without
#                        group_attribute); names and DNs compare as core/groups.py says
#   time                 always known (`now`)
#   authentication_type  UNKNOWN before the primary check (backend is None)
#   administrator        UNKNOWN until the directory answered, and without group data
#                        (is_administrator is None)
#   geo_ip               UNKNOWN when the Calling-Station-Id is missing or not an IP, when
#                        no lookup is given or it fails; an address the database places
#                        in no country (private space) is NO_MATCH
#   trusted_reconnect    UNKNOWN without a Calling-Station-Id and before the lookup
#                        (before the password check, policy explain); no pass on
#                        record, or one that trust no longer covers: NO_MATCH
_MATCHERS: dict[str, Callable[[Any, PolicyContext, datetime], RuleVerdict]] = {
    "ip_addresses": _match_ip_addresses,
    "users": _match_users,
    "user_groups": _match_user_groups,
    "clients": _match_clients,
    "time": _match_time,
    "authentication_type": _match_authentication_type,
    "administrator": _match_administrator,
    "geo_ip": _match_geo_ip,
    "trusted_reconnect": _match_trusted_reconnect,
}


def match_rule(rule: Rule, ctx: PolicyContext, now: datetime) -> RuleVerdict:
    return _MATCHERS[rule.type](rule, ctx, now)


# --------------------------------------------------------------------------- policies


def combine(results: list[Tri], validation: str) -> Tri:
    """Kleene all/any: definite whenever the unknown results cannot change it."""
    decisive, otherwise = (
        (Tri.NO_MATCH, Tri.MATCH) if validation == "all" else (Tri.MATCH, Tri.NO_MATCH)
    )
    if decisive in results:
        return decisive
    return Tri.UNKNOWN if Tri.UNKNOWN in results else otherwise


def _policy_actions(policy: LoginPolicy | MfaPolicy, outcome: Tri) -> tuple[Action, ...]:
    if outcome is Tri.MATCH:
        return (policy.action_when_matched,)
    if outcome is Tri.NO_MATCH:
        return (policy.action_when_not_matched,)
    return tuple(dict.fromkeys((policy.action_when_matched, policy.action_when_not_matched)))


def evaluate_policy(
    policy: LoginPolicy | MfaPolicy, ctx: PolicyContext, now: datetime
) -> PolicyTrace:
    # Every rule is evaluated (they are cheap) so that the trace explains all of them.
    rules = tuple(
        RuleTrace(index, rule.type, *match_rule(rule, ctx, now))
        for index, rule in enumerate(policy.rules)
    )
    outcome = combine([r.result for r in rules], policy.validation)
    return PolicyTrace(
        name=policy.name,
        status=PolicyStatus.EVALUATED,
        validation=policy.validation,
        outcome=outcome,
        actions=_policy_actions(policy, outcome),
        rules=rules,
    )


def _require_aware(now: datetime) -> None:
    # A naive datetime would be read as the host's local time: an implicit clock setting.
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def evaluate(target: TargetPolicies, ctx: PolicyContext, now: datetime) -> Decision:
    """Walk the active policies in order; the first non-continue action decides, else
    the default. With unknown inputs, the strictest possible outcome decides."""
    _require_aware(now)
    traces: list[PolicyTrace] = []
    candidates: list[tuple[Action, str | None]] = []
    reachable = True
    for policy in target.policies:
        if not policy.active or not reachable:
            status = PolicyStatus.INACTIVE if not policy.active else PolicyStatus.NOT_REACHED
            traces.append(PolicyTrace(policy.name, status, policy.validation))
            continue
        trace = evaluate_policy(policy, ctx, now)
        traces.append(trace)
        candidates.extend((a, policy.name) for a in trace.actions if a != "continue")
        reachable = "continue" in trace.actions
    if reachable:
        candidates.append((target.default_action, None))
    # max() keeps the first of equals: on a tie the earliest policy is named.
    action, deciding = max(candidates, key=lambda c: STRICTNESS[c[0]])
    possible = sorted({a for a, _ in candidates}, key=STRICTNESS.__getitem__, reverse=True)
    return Decision(
        target=target.target,
        action=action,
        policy=deciding,
        possible=tuple(possible),
        trace=tuple(traces),
        default_reached=reachable,
    )


def early_login_denial(
    login: LoginPoliciesConfig, ctx: PolicyContext, now: datetime
) -> Decision | None:
    """Run the login target before the primary password check, with directory data
    (groups, backend, administrator) unknown. Returns the decision when it is
    access_denied whatever that data turns out to be, so the request can be rejected
    without checking the password; None when the password check must go ahead (the
    login target is then evaluated again with the directory data)."""
    decision = evaluate(login, ctx.before_primary(), now)
    return decision if decision.possible == ("access_denied",) else None


def is_trusted_reconnect(decision: Decision) -> bool:
    """Whether the MFA decision skips the second factor because the deciding policy's
    trusted_reconnect rule matched (its audit reason is then mfa_trusted_reconnect)."""
    if decision.action != "mfa_skipped" or decision.policy is None or not decision.definite:
        return False
    deciding = next((p for p in decision.trace if p.name == decision.policy), None)
    return deciding is not None and any(
        r.type == "trusted_reconnect" and r.result is Tri.MATCH for r in deciding.rules
    )
