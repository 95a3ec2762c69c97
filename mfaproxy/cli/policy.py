"""`mfaproxy policy explain`: which access policy decides a request, and why.

The request is described on the command line and evaluated as it would be after a
successful password check: the directory backend is the configured one (or --backend),
and the groups come from --groups or from the directory: the users file, or LDAP read
with the service account (no password needed), as a login reads them. What is not given
or cannot be read stays unknown, and the explanation then shows the strictest outcome that
unknown input could lead to, exactly as the daemon would decide.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeAlias

from mfaproxy.adapters.geoip import GeoIpDatabases
from mfaproxy.cli.identity import directory_groups, resolve
from mfaproxy.config.schema import ClientConfig, Config, load_config
from mfaproxy.core.groups import in_group
from mfaproxy.core.identity import read_login_name
from mfaproxy.core.policy import PolicyContext
from mfaproxy.core.policy_explain import explain
from mfaproxy.errors import EXIT_INVALID, EXIT_OK
from mfaproxy.radius.addresses import IPAddress

# A string: argparse._SubParsersAction is not subscriptable at run time.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from exc


def _groups(text: str) -> frozenset[str]:
    return frozenset(g.strip() for g in text.split(",") if g.strip())


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date and time") from exc
    # Naive means UTC: the host's local zone would make the answer depend on the machine.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _note(message: str) -> None:
    print(f"mfaproxy: {message}", file=sys.stderr)


def _source_address(client: ClientConfig) -> IPAddress:
    """The client's first configured address; for a range, its first host address."""
    network = client.address[0]
    return ipaddress.ip_address(str(next(iter(network.hosts()), network.network_address)))


def _is_admin(config: Config, groups: frozenset[str] | None, given: bool | None) -> bool | None:
    if given is not None:
        return given
    group = config.multifactor.administrators.group
    if group is None:
        return False  # no administrators group configured: nobody is one
    return in_group(groups, group)


def _context(config: Config, client: ClientConfig, args: argparse.Namespace) -> PolicyContext:
    backend = args.backend or config.directory.backend
    # Who the user is after the password check: the directory's identity (cli/identity).
    resolved = resolve(config, args.user)
    user = resolved.identity
    if resolved.note is not None:
        _note(resolved.note)
    groups = args.groups
    if groups is None:
        login = read_login_name(args.user, config.directory.realms).user
        groups = directory_groups(config, user, login, _note, backend)
    return PolicyContext(
        user=user,
        client=client.name,
        client_address=args.source or _source_address(client),
        nas_ip_address=args.nas_ip_address,
        calling_station_id=args.calling_station_id,
        groups=groups,
        backend=backend,
        is_administrator=_is_admin(config, groups, args.admin),
    )


def cmd_explain(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    client = next((c for c in config.clients if c.name == args.client), None)
    if client is None:
        names = ", ".join(c.name for c in config.clients)
        _note(f"no client named {args.client!r}; configured clients: {names}")
        return EXIT_INVALID
    ctx = _context(config, client, args)
    now = args.at or datetime.now(UTC)
    policies = config.access_policies
    with ExitStack() as stack:
        # Databases are opened only when a geo_ip rule exists; a bad file is a ConfigError.
        if policies.geoip_databases():
            lookup = stack.enter_context(GeoIpDatabases.open_for(policies))
            ctx = replace(ctx, country_lookup=lookup)
        for line in explain(policies, ctx, now):
            print(line)
    return EXIT_OK


def register(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    policy = sub.add_parser("policy", help="inspect the conditional access policies")
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    parser = commands.add_parser(
        "explain",
        parents=[common],
        help="show which policy decides a request, and why",
        description="Evaluate the login and mfa policies for one request after a "
        "successful password check. Inputs not given stay unknown.",
    )
    parser.add_argument("--user", required=True, help="User-Name")
    parser.add_argument("--client", required=True, help="name of a clients: entry")
    parser.add_argument("--calling-station-id", help="the raw attribute (an IP, a MAC...)")
    parser.add_argument("--nas-ip-address", type=_ip, help="NAS-IP-Address")
    parser.add_argument(
        "--source", type=_ip, help="NAS source address (default: the client's first address)"
    )
    parser.add_argument(
        "--groups",
        type=_groups,
        help="comma-separated groups (default: from the users file, or read from LDAP)",
    )
    parser.add_argument(
        "--backend",
        choices=["local", "ldap", "radius"],
        help="directory that authenticated the user (default: the configured one)",
    )
    parser.add_argument(
        "--admin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="member of the administrators group (default: from the groups)",
    )
    parser.add_argument(
        "--at", type=_moment, help="evaluate at this ISO 8601 time (naive = UTC; default: now)"
    )
    parser.set_defaults(func=cmd_explain)
