"""The `access_policies` section: conditional access policies for two targets.

`login` decides whether the user may log in at all; `mfa` decides whether a second
factor is asked. Each target is an ordered list of policies plus a default action; the
evaluation itself lives in `mfaproxy.core.policy`. Everything here is plain data,
validated strictly so that a typo is an error at load time rather than a policy that
silently never matches.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from mfaproxy.config.base import ConfigPath, Strict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


LoginAction = Literal["continue", "access_denied", "access_allowed"]
MfaAction = Literal["continue", "mfa_required", "mfa_skipped", "mfa_optional_per_user"]
# A default ends the walk, so it cannot be `continue`: there is nothing left to continue to.
LoginDefault = Literal["access_allowed", "access_denied"]
MfaDefault = Literal["mfa_required", "mfa_skipped", "mfa_optional_per_user"]
Action = LoginAction | MfaAction

LOGIN_ACTIONS: tuple[str, ...] = ("continue", "access_denied", "access_allowed")
MFA_ACTIONS: tuple[str, ...] = ("continue", "mfa_required", "mfa_skipped", "mfa_optional_per_user")

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_CLOCK = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")
# Common near-misses for ISO 3166-1 alpha-2 codes, with the code the operator meant.
_COUNTRY_HINTS = {"UK": "GB (United Kingdom)", "EL": "GR (Greece)"}


def _network(value: Any) -> Any:
    """Parse one range; a single IP is a /32 or /128. Host bits set is refused because
    `10.1.2.0/16` is far more often a typo for /24 than a deliberate /16."""
    if not isinstance(value, str):
        return value
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR range") from exc
        raise ValueError(f"{value!r} has host bits set; did you mean {loose}?") from exc


def _country(value: Any) -> Any:
    # YAML 1.1 reads an unquoted NO (Norway) as the boolean false.
    if isinstance(value, bool):
        raise ValueError('quote country codes: YAML reads NO as false, write "NO"')
    if not isinstance(value, str):
        return value
    code = value.strip().upper()
    if code in _COUNTRY_HINTS:
        raise ValueError(f"{value!r} is not an ISO 3166-1 code; use {_COUNTRY_HINTS[code]}")
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return code


RangeItem = Annotated[IPNetwork, BeforeValidator(_network)]
CountryItem = Annotated[str, BeforeValidator(_country)]
Name = Annotated[str, Field(min_length=1)]


# --------------------------------------------------------------------------- rules


class IpAddressesRule(Strict):
    """Matches when the chosen address lies in one of the ranges."""

    type: Literal["ip_addresses"] = "ip_addresses"
    # Which address: the NAS's UDP source (always known, not spoofable past the shared
    # secret), the NAS-IP-Address attribute, or the Calling-Station-Id (the end user's
    # address on VPNs; a MAC address on Wi-Fi and wired 802.1X).
    source: Literal["calling_station_id", "nas_ip_address", "client_address"]
    ranges: list[RangeItem] = Field(min_length=1)


class UsersRule(Strict):
    type: Literal["users"] = "users"
    users: list[Name] = Field(min_length=1)


class UserGroupsRule(Strict):
    type: Literal["user_groups"] = "user_groups"
    groups: list[Name] = Field(min_length=1)


class ClientsRule(Strict):
    type: Literal["clients"] = "clients"
    clients: list[Name] = Field(min_length=1)


class TimeRule(Strict):
    """Matches inside [start, end) local time on the listed days (empty: every day).

    When start > end the window runs overnight and `days` names the day it opens: a
    Friday 22:00-06:00 window covers Friday 22:00 to Saturday 05:59.
    """

    type: Literal["time"] = "time"
    days: list[Day] = Field(default_factory=list)
    start: str = "00:00"
    end: str = "24:00"
    timezone: str

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 18:00 as the base-60 integer 1080.
        if isinstance(value, int) and not isinstance(value, bool):
            clock = f"{value // 60:02d}:{value % 60:02d}"
            raise ValueError(f'quote times of day: YAML read "{clock}" as the number {value}')
        return value

    @field_validator("start")
    @classmethod
    def _check_start(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00-23:59)")
        return value

    @field_validator("end")
    @classmethod
    def _check_end(cls, value: str) -> str:
        if value != "24:00" and not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00-24:00)")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            zone(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from exc
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TimeRule:
        if self.start == self.end:
            # Ambiguous: an empty window or a whole day? Make the operator say which.
            raise ValueError("start equals end; for the whole day use 00:00 to 24:00")
        return self

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zone(self.timezone)

    @property
    def start_minute(self) -> int:
        return _minutes(self.start)

    @property
    def end_minute(self) -> int:
        return _minutes(self.end)

    @property
    def day_numbers(self) -> frozenset[int]:
        """Weekday numbers as `datetime.weekday()` gives them (Monday is 0)."""
        chosen = self.days or DAYS
        return frozenset(DAYS.index(day) for day in chosen)


@functools.cache
def zone(name: str) -> zoneinfo.ZoneInfo:
    """Zones are read once, while the configuration loads, and kept: evaluating a
    time rule then never touches the tz database files."""
    return zoneinfo.ZoneInfo(name)


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


class AuthenticationTypeRule(Strict):
    """Matches when the user was authenticated by one of these directory backends."""

    type: Literal["authentication_type"] = "authentication_type"
    backends: list[Literal["local", "ldap", "radius"]] = Field(min_length=1)


class AdministratorRule(Strict):
    """Matches members of `multifactor.administrators.group`."""

    type: Literal["administrator"] = "administrator"


class GeoIpRule(Strict):
    """Matches when the Calling-Station-Id address lies in one of the countries."""

    type: Literal["geo_ip"] = "geo_ip"
    countries: list[CountryItem] = Field(min_length=1)
    # A MaxMind database (GeoLite2-Country, GeoIP2-City...). Opened once at start.
    database: ConfigPath


class TrustedReconnectRule(Strict):
    """Matches when the same user (identity), from the same NAS (client entry) and the
    same Calling-Station-Id, passed a second factor within `minutes` (core/trust.py).
    Only in an mfa policy that skips the second factor when it matches."""

    type: Literal["trusted_reconnect"] = "trusted_reconnect"
    # privacyIDEA's auth_cache, MULTIFACTOR's authentication-cache-lifetime: up to 30 days.
    minutes: int = Field(ge=1, le=43200)


Rule = Annotated[
    IpAddressesRule
    | UsersRule
    | UserGroupsRule
    | ClientsRule
    | TimeRule
    | AuthenticationTypeRule
    | AdministratorRule
    | GeoIpRule
    | TrustedReconnectRule,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- policies


def _refuse_foreign(value: Any, own: tuple[str, ...], target: str) -> Any:
    """Name the right target when an action is used in the wrong list."""
    if isinstance(value, str) and value not in own and value in (*LOGIN_ACTIONS, *MFA_ACTIONS):
        other = "mfa" if target == "login" else "login"
        raise ValueError(
            f"{value} belongs to access_policies.{other}; {target} policies take {', '.join(own)}"
        )
    return value


class PolicyBase(Strict):
    name: Name
    active: bool = True
    # all: every rule must match (no rules: always matches); any: at least one.
    validation: Literal["all", "any"] = "all"
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _any_needs_rules(self) -> PolicyBase:
        if self.validation == "any" and not self.rules:
            raise ValueError("validation any with no rules never matches; add rules or use all")
        return self


class LoginPolicy(PolicyBase):
    action_when_matched: LoginAction
    action_when_not_matched: LoginAction = "continue"

    @model_validator(mode="after")
    def _no_trust(self) -> LoginPolicy:
        if any(isinstance(rule, TrustedReconnectRule) for rule in self.rules):
            raise ValueError(
                "trusted_reconnect belongs to access_policies.mfa: it can only skip a"
                " second factor, never the password"
            )
        return self

    @field_validator("action_when_matched", "action_when_not_matched", mode="before")
    @classmethod
    def _own_actions(cls, value: Any) -> Any:
        return _refuse_foreign(value, LOGIN_ACTIONS, "login")


class MfaPolicy(PolicyBase):
    action_when_matched: MfaAction
    action_when_not_matched: MfaAction = "continue"

    @model_validator(mode="after")
    def _trust_only_skips(self) -> MfaPolicy:
        # Monotone in the trust: a reconnect that is not trusted (no record, a record
        # deleted or tampered with, no Calling-Station-Id) may never get a weaker outcome.
        trusted = any(isinstance(rule, TrustedReconnectRule) for rule in self.rules)
        if trusted and (self.action_when_matched, self.action_when_not_matched) != (
            "mfa_skipped",
            "continue",
        ):
            raise ValueError(
                "a policy with a trusted_reconnect rule takes action_when_matched:"
                " mfa_skipped and action_when_not_matched: continue"
            )
        return self

    @field_validator("action_when_matched", "action_when_not_matched", mode="before")
    @classmethod
    def _own_actions(cls, value: Any) -> Any:
        return _refuse_foreign(value, MFA_ACTIONS, "mfa")


def _no_continue_default(value: Any) -> Any:
    if value == "continue":
        raise ValueError("the default action cannot be continue: nothing follows it")
    return value


def _unique_names(policies: list[LoginPolicy] | list[MfaPolicy]) -> None:
    names = [p.name for p in policies]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate policy names {', '.join(dupes)}")


class LoginPoliciesConfig(Strict):
    target: ClassVar[str] = "login"
    default_action: Annotated[LoginDefault, BeforeValidator(_no_continue_default)] = (
        "access_allowed"
    )
    policies: list[LoginPolicy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> LoginPoliciesConfig:
        _unique_names(self.policies)
        return self


class MfaPoliciesConfig(Strict):
    target: ClassVar[str] = "mfa"
    default_action: Annotated[MfaDefault, BeforeValidator(_no_continue_default)] = "mfa_required"
    policies: list[MfaPolicy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> MfaPoliciesConfig:
        _unique_names(self.policies)
        return self


TargetPolicies = LoginPoliciesConfig | MfaPoliciesConfig


class AccessPoliciesConfig(Strict):
    """The `access_policies` section. Omitted: everyone may log in, MFA is required."""

    login: LoginPoliciesConfig = LoginPoliciesConfig()
    mfa: MfaPoliciesConfig = MfaPoliciesConfig()

    def iter_rules(self) -> Iterator[tuple[str, Rule]]:
        """Every rule with its dotted path (`login.policies.0.rules.1`), for checks
        that need other sections (client names, geo_ip databases to open)."""
        for target in (self.login, self.mfa):
            for p_index, policy in enumerate(target.policies):
                for r_index, rule in enumerate(policy.rules):
                    yield f"{target.target}.policies.{p_index}.rules.{r_index}", rule

    def trust_window_seconds(self) -> float:
        """The longest window of the active mfa policies' trusted_reconnect rules, in
        seconds; 0 when there is none (trusted reconnects are off)."""
        minutes = [
            rule.minutes
            for policy in self.mfa.policies
            if policy.active
            for rule in policy.rules
            if isinstance(rule, TrustedReconnectRule)
        ]
        return max(minutes, default=0) * 60.0

    def referenced_clients(self) -> frozenset[str]:
        """Client names used by `clients` rules; the root config checks they exist."""
        return frozenset(
            name
            for _, rule in self.iter_rules()
            if isinstance(rule, ClientsRule)
            for name in rule.clients
        )

    def geoip_databases(self) -> dict[Path, str]:
        """Each MaxMind database used, with the dotted path of its first use."""
        found: dict[Path, str] = {}
        for where, rule in self.iter_rules():
            if isinstance(rule, GeoIpRule):
                found.setdefault(rule.database, f"{where}.database")
        return found
