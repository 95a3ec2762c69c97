"""The one validation pipeline: everything `serve` would refuse at start, found before
it starts. `mfaproxy check-config`, `serve` and a reload all call `load`; building a
runtime from an already parsed Config calls `check`.

Every problem is reported in one pass. The schema (config/) reports what it refuses,
each with its dotted path and YAML line; then the deeper checks below run on every
top-level section that passed the schema on its own, even when another section failed,
so an unknown reply attribute shows up together with a typo in `server`.

The deeper checks are what building the daemon would trip over: the dictionaries and
the attribute names they define, the users file (each argon2 hash fully parsed), the
geo-IP databases, every CA bundle (LDAP, SMTP, Duo, YubiCloud, Redis) and an existing
master key file. The factors' own build rules (message templates, the YubiCloud API
key, NAS-Identifier lengths) are schema rules, so a factor that passes here builds.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import structlog
from pydantic import ValidationError
from pyrad.dictionary import Dictionary, ParseError

from mfaproxy.adapters.geoip import GeoIpDatabase
from mfaproxy.config.directory import DirectoryConfig
from mfaproxy.config.multifactor import MultifactorConfig, SmtpConfig
from mfaproxy.config.policies import AccessPoliciesConfig, UsersRule
from mfaproxy.config.problems import (
    LineMap,
    Loc,
    Problem,
    line_for,
    render_all,
    schema_problems,
    yaml_line_map,
)
from mfaproxy.config.prompt_checks import prompt_problems
from mfaproxy.config.prompts import PromptProfileConfig
from mfaproxy.config.schema import (
    ClientConfig,
    Config,
    Document,
    RepliesConfig,
    ServerConfig,
    read_document,
    valid_sections,
    validate_document,
)
from mfaproxy.config.stores import RedisSettings
from mfaproxy.config.validate import group_references, pass_through_problems, reply_problems
from mfaproxy.config.warnings import Facts, Finding, config_warnings
from mfaproxy.core.groups import is_dn
from mfaproxy.core.identity import name_problem, normalise, read_login_name
from mfaproxy.directory.local import checks_per_second, load_users_file, typical_cost
from mfaproxy.errors import ConfigError, GeoIpDatabaseError
from mfaproxy.radius.codec import load_dictionary
from mfaproxy.store.crypto import key_file_problem

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Parts:
    """The sections that passed the schema (None: absent or refused), and the
    dictionary they were checked against (None when it could not be loaded)."""

    server: ServerConfig | None = None
    directory: DirectoryConfig | None = None
    replies: RepliesConfig | None = None
    access_policies: AccessPoliciesConfig | None = None
    multifactor: MultifactorConfig | None = None
    smtp: SmtpConfig | None = None
    dictionary: Dictionary | None = None
    clients: tuple[ClientConfig, ...] | None = None
    prompt_profiles: dict[str, PromptProfileConfig] | None = None

    @classmethod
    def of(cls, config: Config) -> Parts:
        return cls(
            config.server,
            config.directory,
            config.replies,
            config.access_policies,
            config.multifactor,
            config.smtp,
            clients=tuple(config.clients),
            prompt_profiles=config.prompt_profiles,
        )

    @classmethod
    def of_sections(cls, sections: dict[str, object]) -> Parts:
        kinds = {
            "server": ServerConfig,
            "directory": DirectoryConfig,
            "replies": RepliesConfig,
            "access_policies": AccessPoliciesConfig,
            "multifactor": MultifactorConfig,
            "smtp": SmtpConfig,
        }
        valid = {
            name: value
            for name, value in sections.items()
            if name in kinds and isinstance(value, kinds[name])
        }
        clients = sections.get("clients")
        profiles = sections.get("prompt_profiles")
        return cls(
            **valid,  # type: ignore[arg-type]
            clients=tuple(clients) if isinstance(clients, list) else None,
            prompt_profiles=profiles if isinstance(profiles, dict) else None,
        )


# --------------------------------------------------------------------------- the checks


def _replies(parts: Parts) -> Iterator[Problem]:
    if parts.replies is not None and parts.dictionary is not None:
        yield from reply_problems(parts.replies, parts.dictionary)


def _directory(parts: Parts) -> Iterator[Problem]:
    directory = parts.directory
    if directory is None:
        return
    if directory.backend == "local" and directory.local is not None:
        try:
            load_users_file(directory.local.users_file)
        except ConfigError as exc:
            yield from (Problem(("directory", "local", "users_file"), p) for p in exc.problems)
    if directory.backend == "radius" and directory.radius is not None and parts.dictionary:
        yield from pass_through_problems(directory.radius, parts.dictionary)


def _dotted(text: str) -> Loc:
    return tuple(int(part) if part.isdigit() else part for part in text.split("."))


def _geoip(parts: Parts) -> Iterator[Problem]:
    if parts.access_policies is None:
        return
    for path, where in parts.access_policies.geoip_databases().items():
        try:
            GeoIpDatabase(path).close()
        except GeoIpDatabaseError as exc:
            yield Problem(("access_policies", *_dotted(where)), str(exc))


def _users_rules(parts: Parts) -> Iterator[Problem]:
    """`users` rules name identities. An entry in a configured realm form (an identity
    never has the realm) or with characters no User-Name may have would never match:
    a denial or a per-user requirement that silently does not apply."""
    if parts.access_policies is None:
        return
    realms = parts.directory.realms if parts.directory is not None else []
    for path, rule in parts.access_policies.iter_rules():
        if not isinstance(rule, UsersRule):
            continue
        for index, name in enumerate(rule.users):
            loc = ("access_policies", *_dotted(path), "users", index)
            login = read_login_name(name.strip(), realms)
            problem = name_problem(name.strip())
            if login.realm is not None:
                yield Problem(
                    loc,
                    f"{name!r} is a realm form; list the user as {normalise(login.user)!r},"
                    " the identity every form of it has",
                )
            elif problem in ("user_name_control_characters", "user_name_not_utf8"):
                yield Problem(loc, f"{name!r} is no user name ({problem})")


def _prompts(parts: Parts) -> Iterator[Problem]:
    """Every prompt a client is sent fits its max_prompt (config/prompt_checks.py)."""
    if parts.clients is None:
        return
    yield from prompt_problems(
        parts.clients, parts.prompt_profiles or {}, parts.multifactor, parts.replies
    )


def _ldap_group_names(parts: Parts) -> Iterator[Problem]:
    """LDAP gives group names only under group_base_dn (or from group_search): a group
    named without either would never match, and "administrators always need MFA"
    would silently stop applying."""
    directory = parts.directory
    if directory is None or directory.backend != "ldap" or directory.ldap is None:
        return
    if directory.ldap.group_base_dn is not None or directory.ldap.group_search is not None:
        return
    references = group_references(parts.access_policies, parts.multifactor, parts.replies)
    for loc, name in references:
        if not is_dn(name):
            yield Problem(
                loc,
                f"{name!r} is a group name, but LDAP groups are known by name only under"
                " directory.ldap.group_base_dn (or from group_search): set it to where the"
                " groups are kept, or write the group's DN",
            )


def _ca_files(parts: Parts) -> Iterator[tuple[Loc, Path]]:
    """Every CA bundle a backend that will be built loads at start or first use."""
    directory, mfa = parts.directory, parts.multifactor
    if directory is not None and directory.backend == "ldap" and directory.ldap is not None:
        yield ("directory", "ldap", "ca_file"), directory.ldap.ca_file or Path()
    if parts.smtp is not None:
        yield ("smtp", "ca_file"), parts.smtp.ca_file or Path()
    if mfa is not None and mfa.duo is not None and "duo" in mfa.enabled:
        yield ("multifactor", "duo", "ca_file"), mfa.duo.ca_file or Path()
    if mfa is not None and mfa.yubikey is not None and "yubikey" in mfa.enabled:
        yield ("multifactor", "yubikey", "ca_file"), mfa.yubikey.ca_file or Path()
    store = parts.server.state_store if parts.server is not None else None
    if isinstance(store, RedisSettings):
        yield ("server", "state_store", "tls_ca_file"), store.tls_ca_file or Path()


def _ca_bundles(parts: Parts) -> Iterator[Problem]:
    for loc, path in _ca_files(parts):
        if path == Path():
            continue  # not set: the system's CA store
        try:
            ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            yield Problem(loc, f"cannot load {path} as a CA bundle (PEM): {reason}")


def _key_file(parts: Parts) -> Iterator[Problem]:
    server = parts.server
    if server is None:
        return
    if server.state_dir.exists() and not server.state_dir.is_dir():
        yield Problem(("server", "state_dir"), f"{server.state_dir} is not a directory")
    key_file = server.secrets_key_file or server.state_dir / "master.key"
    problem = key_file_problem(key_file)
    if problem is not None:
        where = "secrets_key_file" if server.secrets_key_file else "state_dir"
        yield Problem(("server", where), problem)


# What building the daemon needs, one row per check; each sees only the sections that
# passed the schema. A new check is one more row.
CHECKS: tuple[tuple[str, Callable[[Parts], Iterator[Problem]]], ...] = (
    ("reply attributes against the dictionaries", _replies),
    ("directory backend (users file, pass-through attributes)", _directory),
    ("geo-IP databases", _geoip),
    ("users rules against the realm rules", _users_rules),
    ("prompts against each client's max_prompt", _prompts),
    ("LDAP group names against the group base", _ldap_group_names),
    ("CA bundles", _ca_bundles),
    ("state directory and master key file", _key_file),
)


def _with_dictionary(parts: Parts) -> tuple[Parts, list[Problem]]:
    extra = parts.server.dictionaries if parts.server is not None else []
    try:
        return replace(parts, dictionary=load_dictionary(extra)), []
    except (OSError, ParseError, ValueError, KeyError, IndexError) as exc:
        return parts, [Problem(("server", "dictionaries"), f"cannot load: {exc}")]


def deep_problems(parts: Parts) -> list[Problem]:
    parts, found = _with_dictionary(parts)
    for _name, run in CHECKS:
        found += run(parts)
    return found


# --------------------------------------------------------------------------- entry points


def load_document(document: Document) -> Config:
    """Validate a read document completely; ConfigError lists every problem."""
    try:
        config = validate_document(document)
    except ValidationError as exc:
        found = schema_problems(exc, Config)
        found += deep_problems(Parts.of_sections(valid_sections(document)))
        raise ConfigError(render_all(found, document.lines)) from exc
    found = deep_problems(Parts.of(config))
    if found:
        raise ConfigError(render_all(found, document.lines))
    return config


def load(path: Path) -> Config:
    """Read and validate a configuration file: what check-config, serve and reload do."""
    return load_document(read_document(path))


def _lines_of(config: Config) -> LineMap:
    if config.source is None:
        return {}
    try:
        return yaml_line_map(config.source.read_text(encoding="utf-8"))
    except OSError:
        return {}


def problems(config: Config, dictionary: Dictionary) -> list[str]:
    """Every problem of a schema-valid configuration, each with its dotted path."""
    parts = replace(Parts.of(config), dictionary=dictionary)
    found: list[Problem] = []
    for _name, run in CHECKS:
        found += run(parts)
    return render_all(found, _lines_of(config))


def check(config: Config, dictionary: Dictionary) -> None:
    found = problems(config, dictionary)
    if found:
        raise ConfigError(found)


# --------------------------------------------------------------------------- warnings


def facts(config: Config) -> Facts:
    """What the warning rules need beyond the configuration itself."""
    local = config.directory.local
    if config.directory.backend != "local" or local is None:
        return Facts(config)
    try:
        users = load_users_file(local.users_file)
    except ConfigError:  # reported as a problem by the checks
        return Facts(config)
    hashes = tuple(u.password_hash for u in users.values())
    if local.peak_logins_per_second is None:
        return Facts(config, hashes)
    # One check at the file's most common cost, timed on this host.
    cost = typical_cost(users)
    cpus = len(os.sched_getaffinity(0))
    rate = checks_per_second(cost, cpus, local.hash_threads)  # the threads that serve them
    return Facts(config, hashes, rate, str(cost))


def warnings(config: Config) -> list[Finding]:
    return config_warnings(facts(config))


def warning_lines(config: Config) -> list[str]:
    """Each finding as check-config prints it: where, then what it risks and the fix."""
    lines = _lines_of(config)
    out = []
    ordered = sorted(warnings(config), key=lambda f: line_for(f.loc, lines) or float("inf"))
    for finding in ordered:
        out += [finding.headline(lines), f"  risk: {finding.risk}", f"  fix: {finding.fix}"]
    return out


def warning_records(config: Config) -> list[dict[str, object]]:
    """The fields of each `config_warning` line (reads the users file: may block)."""
    lines = _lines_of(config)
    return [
        {
            "warning": finding.rule,
            "where": finding.dotted,
            "line": line_for(finding.loc, lines),
            "detail": finding.detail,
            "risk": finding.risk,
            "fix": finding.fix,
        }
        for finding in warnings(config)
    ]


def log_warnings(records: list[dict[str, object]]) -> None:
    """One `config_warning` line per finding, at start and after each reload."""
    for record in records:
        log.warning("config_warning", **record)
