"""Dangerous settings: valid, but an operator should know what they risk.

One table, `RULES`: each row names the setting, says what it risks and how to fix it,
and has a function that finds where the configuration uses it (a dotted location and
a short detail). `mfaproxy check-config` prints every finding; `serve` logs each one
at start (`config_warning`). A new warning is one more row; a rule that needs facts
read from files gets them through `Facts` (daemon/preflight.py gathers them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import SecretStr

from mfaproxy.config.base import RadiusServerConfig
from mfaproxy.config.directory import LdapConfig
from mfaproxy.config.problems import LineMap, Loc, line_for
from mfaproxy.config.schema import Config
from mfaproxy.config.stores import RedisSettings
from mfaproxy.config.validate import group_references

# draft-ietf-radext-deprecating-radius ("Shared Secrets"): a secret of 12 octets or
# fewer can be recovered offline from one captured packet.
SHORT_SECRET_OCTETS = 12
DEMO_SECRET = "testing123"  # noqa: S105 (the README's, FreeRADIUS's, every tutorial's)


@dataclass(frozen=True)
class Facts:
    """What the rules look at: the configuration, plus facts read from its files."""

    config: Config
    # The argon2 hashes of the local users file (empty for other backends).
    password_hashes: tuple[str, ...] = ()
    # Password checks per second this host can do at the users file's most common
    # cost, and that cost (measured by daemon/preflight.py when a peak rate is stated).
    hash_checks_per_second: float | None = None
    hash_cost: str = ""


@dataclass(frozen=True)
class Finding:
    rule: str  # the row's name, stable: scripts and tests match on it
    loc: Loc
    detail: str
    risk: str
    fix: str

    @property
    def dotted(self) -> str:
        return ".".join(str(part) for part in self.loc)

    def headline(self, lines: LineMap) -> str:
        line = line_for(self.loc, lines)
        where = f" (line {line})" if line else ""
        return f"{self.dotted}{where}: {self.detail}"


Where = Iterator[tuple[Loc, str]]


@dataclass(frozen=True)
class Rule:
    name: str
    risk: str
    fix: str
    where: Callable[[Facts], Where]


# --------------------------------------------------------------------------- where


def _inline_enrolment(facts: Facts) -> Where:
    # An operator's window is per user and time-bounded: not worth a warning. A code
    # mailed to the address on file, offered to every user without a method, is.
    mfa = facts.config.multifactor
    inline = mfa.inline_enrolment
    if mfa.enrol_unconfigured_users and "email_code" in inline.allow and not inline.networks:
        loc = ("multifactor", "enrol_unconfigured_users")
        yield loc, "every user without a method can enrol after a code mailed to them"


def _inline_enrolment_administrators(facts: Facts) -> Where:
    inline = facts.config.multifactor.inline_enrolment
    if inline.administrators and inline.allow:
        loc = ("multifactor", "inline_enrolment", "administrators")
        yield loc, "administrators may enrol a second factor inside the RADIUS flow"


def _ldap(facts: Facts) -> LdapConfig | None:
    directory = facts.config.directory
    return directory.ldap if directory.backend == "ldap" else None


def _ldap_unverified(facts: Facts) -> Where:
    ldap = _ldap(facts)
    if ldap is not None and not ldap.verify_certificate:
        loc = ("directory", "ldap", "verify_certificate")
        yield loc, "the directory's TLS certificate is not verified"


def _ldap_cleartext(facts: Facts) -> Where:
    ldap = _ldap(facts)
    if ldap is None or ldap.start_tls:
        return
    for index, url in enumerate(ldap.servers):
        if url.lower().startswith("ldap://"):
            yield ("directory", "ldap", "servers", index), f"{url} without start_tls"


def _duo_safe(facts: Facts) -> Where:
    mfa = facts.config.multifactor
    if "duo" in mfa.enabled and mfa.duo is not None and mfa.duo.failmode == "safe":
        yield ("multifactor", "duo", "failmode"), "Duo failmode is safe"


def _store_safe(facts: Facts) -> Where:
    if facts.config.server.store_failmode == "safe":
        yield ("server", "store_failmode"), "store failmode is safe"


def _clients_unsigned(facts: Facts) -> Where:
    for index, client in enumerate(facts.config.clients):
        if not client.require_message_authenticator:
            loc = ("clients", index, "require_message_authenticator")
            yield loc, f"client {client.name} may send requests without Message-Authenticator"


def _proxy_state_unlimited(facts: Facts) -> Where:
    for index, client in enumerate(facts.config.clients):
        if not client.require_message_authenticator and not client.limits_proxy_state:
            loc = ("clients", index, "limit_proxy_state")
            yield loc, f"client {client.name} may send unsigned requests with Proxy-State"


def _upstreams_unsigned(facts: Facts) -> Where:
    config = facts.config
    radius, otp = config.directory.radius, config.multifactor.radius
    if config.directory.backend == "radius" and radius and not radius.require_message_authenticator:
        loc = ("directory", "radius", "require_message_authenticator")
        yield loc, "upstream RADIUS replies are accepted unsigned"
    if "radius" in config.multifactor.enabled and otp and not otp.require_message_authenticator:
        loc = ("multifactor", "radius", "require_message_authenticator")
        yield loc, "the OTP server's replies are accepted unsigned"


def _redis(facts: Facts) -> RedisSettings | None:
    store = facts.config.server.state_store
    return store if isinstance(store, RedisSettings) else None


def _redis_no_password(facts: Facts) -> Where:
    redis = _redis(facts)
    if redis is None or redis.password is not None:
        return
    if redis.url is not None:
        parts = urlsplit(redis.url)
        if parts.password or parts.scheme == "unix":
            return  # a password in the URL; a socket is guarded by its file mode
    yield ("server", "state_store"), "Redis is used without a password"


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and (host == "localhost" or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return False


def _redis_no_tls(facts: Facts) -> Where:
    redis = _redis(facts)
    if redis is None or redis.tls or redis.url_uses_tls():
        return
    if redis.url is not None:
        parts = urlsplit(redis.url)
        if parts.scheme == "unix" or _is_loopback(parts.hostname):
            return
    yield ("server", "state_store"), f"Redis at {redis.server_label()} is reached without TLS"


def _secrets(facts: Facts) -> Iterator[tuple[Loc, SecretStr]]:
    """Every RADIUS shared secret: the NAS clients' and the upstream servers'."""
    config = facts.config
    for index, client in enumerate(config.clients):
        yield ("clients", index, "secret"), client.secret
    servers: list[tuple[Loc, RadiusServerConfig]] = []
    if config.directory.backend == "radius" and config.directory.radius is not None:
        for index, server in enumerate(config.directory.radius.servers):
            servers.append((("directory", "radius", "servers", index, "secret"), server))
    otp = config.multifactor.radius
    if "radius" in config.multifactor.enabled and otp is not None:
        servers.append((("multifactor", "radius", "server", "secret"), otp.server))
        if otp.failover is not None:
            servers.append((("multifactor", "radius", "failover", "secret"), otp.failover))
    accounting = config.server.accounting
    if accounting is not None and accounting.upstream is not None:
        for index, upstream in enumerate(accounting.upstream.servers):
            where = ("server", "accounting", "upstream", "servers", index, "secret")
            servers.append((where, upstream))
    for loc, server in servers:
        yield loc, server.secret


def _short_secrets(facts: Facts) -> Where:
    for loc, secret in _secrets(facts):
        value = secret.get_secret_value()
        octets = len(value.encode("utf-8"))
        if octets <= SHORT_SECRET_OCTETS and value != DEMO_SECRET:
            yield loc, f"the shared secret is {octets} octets long"


def _demo_secret(facts: Facts) -> Where:
    for loc, secret in _secrets(facts):
        if secret.get_secret_value() == DEMO_SECRET:
            yield loc, "the shared secret is the demo secret of the README"


def _mail_without_smtp(facts: Facts) -> Where:
    config = facts.config
    if config.smtp is not None:
        return
    mfa = config.multifactor
    if "email" in mfa.enabled:
        yield ("multifactor", "enabled"), "the email method is enabled but smtp is not set"
    elif "email" in mfa.alternate:
        yield ("multifactor", "alternate"), "email is offered as an alternate but smtp is not set"
    if "email_code" in mfa.inline_enrolment.allow:
        loc = ("multifactor", "inline_enrolment", "allow")
        yield loc, "enrolment after an email code is allowed but smtp is not set"
    if "sms" in mfa.enabled and mfa.sms is not None and mfa.sms.provider == "email_gateway":
        yield ("multifactor", "sms", "provider"), "SMS through an email gateway without smtp"


def method_waits(config: Config) -> Iterator[tuple[Loc, str, float]]:
    """How long each enabled out-of-band method may hold a request, in seconds."""
    mfa = config.multifactor
    if "duo" in mfa.enabled and mfa.duo is not None:
        yield ("multifactor", "duo", "timeout"), "a Duo push or call", mfa.duo.timeout
    if "radius" in mfa.enabled and mfa.radius is not None:
        servers = 1 if mfa.radius.failover is None else 2
        wait = mfa.radius.timeout * (mfa.radius.retries + 1) * servers
        yield ("multifactor", "radius", "timeout"), "the OTP RADIUS server", wait


def _waits_beyond_nas_timeout(facts: Facts) -> Where:
    for index, client in enumerate(facts.config.clients):
        limit = client.nas_timeout_seconds
        if limit is None:
            continue
        for _loc, what, wait in method_waits(facts.config):
            if wait > limit:
                yield (
                    ("clients", index, "nas_timeout_seconds"),
                    f"{what} may take {wait:g} s but client {client.name} gives up after"
                    f" {limit:g} s",
                )


def _no_group_data(facts: Facts) -> Where:
    config = facts.config
    radius = config.directory.radius
    if config.directory.backend != "radius" or radius is None or radius.group_attribute:
        return
    refs = list(group_references(config.access_policies, config.multifactor, config.replies))
    if refs:
        loc, name = refs[0]
        yield loc, f"group {name!r} (and {len(refs) - 1} more) with no group data upstream"


def _hash_cost_below_peak(facts: Facts) -> Where:
    local = facts.config.directory.local
    capacity = facts.hash_checks_per_second
    if facts.config.directory.backend != "local" or local is None or capacity is None:
        return
    peak = local.peak_logins_per_second
    if peak is not None and capacity < peak:
        yield (
            ("directory", "local", "peak_logins_per_second"),
            f"at {facts.hash_cost} this host checks about {capacity:.0f} passwords/s,"
            f" below the stated peak of {peak:g} logins/s",
        )


def _trust_unscoped(facts: Facts) -> Where:
    """A trusted_reconnect rule alone in its policy trusts every NAS and every user."""
    for index, policy in enumerate(facts.config.access_policies.mfa.policies):
        types = {rule.type for rule in policy.rules}
        if policy.active and types == {"trusted_reconnect"}:
            where = ("access_policies", "mfa", "policies", index)
            yield where, f"policy {policy.name} trusts reconnects on every NAS for every user"


# --------------------------------------------------------------------------- the table

RULES: tuple[Rule, ...] = (
    Rule(
        "trusted_reconnect_unscoped",
        risk="the password alone logs in from a station that passed MFA: a VPN's"
        " Calling-Station-Id is a public address that a whole NAT or carrier shares, and"
        " a Wi-Fi MAC address can be copied",
        fix="add a clients rule naming the NAS whose Calling-Station-Id identifies one"
        " device (Wi-Fi controllers send its MAC), or a user_groups rule, to the policy",
        where=_trust_unscoped,
    ),
    Rule(
        "inline_enrolment",
        risk="whoever knows a user's password and can read their mail (often with the same"
        " password) can enrol their own device as that user's second factor",
        fix="keep inline_enrolment.allow to operator_window and open a window per user"
        " (`mfaproxy users allow-enrolment USER --for 24h`), enrol users with `mfaproxy"
        " users enroll USER METHOD`, or limit inline_enrolment.networks",
        where=_inline_enrolment,
    ),
    Rule(
        "inline_enrolment_administrators",
        risk="the accounts that matter most can have a second factor bound by whoever"
        " holds their password while their window is open",
        fix="set inline_enrolment.administrators: false and enrol administrators with"
        " `mfaproxy users enroll USER METHOD`",
        where=_inline_enrolment_administrators,
    ),
    Rule(
        "ldap_certificate_not_verified",
        risk="anyone on the network path can pose as the directory, read every password"
        " and answer yes to any",
        fix="set verify_certificate: true and ca_file: the CA that signed the"
        " directory's certificate",
        where=_ldap_unverified,
    ),
    Rule(
        "ldap_cleartext",
        risk="user passwords and the service account's password can be read on the network",
        fix="use an ldaps:// URL, or set start_tls: true",
        where=_ldap_cleartext,
    ),
    Rule(
        "duo_failmode_safe",
        risk="while Duo cannot be reached, users log in with their password alone; whoever"
        " can block the way to Duo (DNS, a firewall) skips the second factor",
        fix="set failmode: secure (the default): logins fail while Duo is down",
        where=_duo_safe,
    ),
    Rule(
        "store_failmode_safe",
        risk="while the state or user store is down, users log in with their password alone",
        fix="set store_failmode: secure (the default): logins fail while a store is down",
        where=_store_safe,
    ),
    Rule(
        "client_without_message_authenticator",
        risk="an attacker between this NAS and mfaproxy can forge answers (BlastRADIUS,"
        " CVE-2024-3596)",
        fix="update the NAS so it signs its requests, then set"
        " require_message_authenticator: true (the default)",
        where=_clients_unsigned,
    ),
    Rule(
        "limit_proxy_state_off",
        risk="this client's unsigned requests may carry Proxy-State, which is what a forged"
        " BlastRADIUS answer is built around (CVE-2024-3596): an attacker on the path can"
        " turn a Reject into an Accept",
        fix="remove limit_proxy_state: false (it is on by default for a client that does not"
        " sign); a proxy in front of mfaproxy that adds Proxy-State must sign its requests",
        where=_proxy_state_unlimited,
    ),
    Rule(
        "upstream_without_message_authenticator",
        risk="an attacker between mfaproxy and the upstream can forge its Access-Accept"
        " (BlastRADIUS, CVE-2024-3596)",
        fix="make the upstream sign its replies (FreeRADIUS 3.2.5 and later do; NPS with"
        " the July 2024 update), then set require_message_authenticator: true",
        where=_upstreams_unsigned,
    ),
    Rule(
        "redis_without_password",
        risk="whoever reaches the Redis port can clear lockouts and rate limits and delete"
        " challenges (their contents are sealed, but not their existence)",
        fix="require a password on Redis (requirepass or an ACL user) and give it here"
        " with password_file or password_env",
        where=_redis_no_password,
    ),
    Rule(
        "redis_without_tls",
        risk="challenge state and the Redis password cross the network in clear",
        fix="use a rediss:// URL (or tls: true with sentinels) and tls_ca_file",
        where=_redis_no_tls,
    ),
    Rule(
        "short_shared_secret",
        risk="a shared secret of 12 octets or fewer can be found offline from one captured"
        " packet (draft-ietf-radext-deprecating-radius)",
        fix="use a random secret of at least 16 octets, e.g. `openssl rand -base64 24`, on"
        " both sides (up to 128 octets are accepted)",
        where=_short_secrets,
    ),
    Rule(
        "demo_shared_secret",
        risk="the demo secret is in the README and in every RADIUS tutorial: anyone who can"
        " send from this client's address can talk to mfaproxy as that NAS",
        fix="set a random secret in a secret_file, e.g. from `openssl rand -base64 24`",
        where=_demo_secret,
    ),
    Rule(
        "email_without_smtp",
        risk="codes cannot be sent: users who need them cannot log in",
        fix="add an smtp section (host, port, security, from)",
        where=_mail_without_smtp,
    ),
    Rule(
        "wait_beyond_nas_timeout",
        risk="the NAS gives up before the user has answered: the login fails, and a retry"
        " starts a second push",
        fix="raise the NAS's RADIUS timeout (and nas_timeout_seconds) above the method's"
        " wait, or shorten the method's timeout (README: NAS timeouts)",
        where=_waits_beyond_nas_timeout,
    ),
    Rule(
        "no_group_data",
        risk="the upstream returns no groups: group and administrator rules are unknown for"
        " every login (their stricter outcome applies: denials and MFA hold, allowances and"
        " skips by group never do) and reply attributes by group are never sent",
        fix="set directory.radius.group_attribute to the Accept's attribute that carries"
        " the groups (Class, Filter-Id), or drop the group rules",
        where=_no_group_data,
    ),
    Rule(
        "hash_cost_below_peak_rate",
        risk="at the peak, logins queue behind the password hash: waits grow past the"
        " NAS timeout, retransmissions pile up and users are rejected",
        fix="hash the passwords at a lower cost (`mfaproxy users hash-password --cost"
        " owasp-minimum`, the default), or give the server more cores",
        where=_hash_cost_below_peak,
    ),
)


def config_warnings(facts: Facts) -> list[Finding]:
    return [
        Finding(rule.name, loc, detail, rule.risk, rule.fix)
        for rule in RULES
        for loc, detail in rule.where(facts)
    ]
