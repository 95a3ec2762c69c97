"""`mfaproxy doctor`: check every dependency the configuration names, before going live.

One line per check, `pass`, `FAIL` or `skip`, with the reason: the directory (LDAP:
connect, StartTLS, service bind, the test user and their groups; upstream RADIUS:
Status-Server; the local users file), a test login on request (`--login`), the second
factors' services (Duo's /check, Twilio's account, YubiCloud, the OTP RADIUS server),
SMTP (connect, STARTTLS, AUTH), the stores and the master key. It sends no push, SMS or
mail. Exit 0 when nothing failed, 3 (EXIT_RUNTIME) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from mfaproxy.adapters.geoip import GeoIpDatabase
from mfaproxy.adapters.radius_client import RadiusClient, RadiusServer
from mfaproxy.adapters.smtp import SmtpSender
from mfaproxy.auth.sessions import CHALLENGES
from mfaproxy.cli.ownership import NotTheServiceUser, as_state_owner
from mfaproxy.config.schema import Config
from mfaproxy.core.doctor import Check, Status
from mfaproxy.daemon import preflight
from mfaproxy.directory.registry import build_checker
from mfaproxy.errors import EXIT_OK, EXIT_RUNTIME, DuoError, MfaproxyError, UpstreamError
from mfaproxy.radius.codec import load_dictionary
from mfaproxy.radius.constants import CODE_TITLES
from mfaproxy.store.crypto import key_file_problem
from mfaproxy.store.factory import open_state_store, open_user_store, user_store_path

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Probe = Callable[[Config, argparse.Namespace], Awaitable[list[Check]]]


# --------------------------------------------------------------------------- directory


async def _status_servers(
    service: str, servers: list[RadiusServer], timeout: float, retries: int, require_ma: bool
) -> list[Check]:
    checks = []
    for server in servers:
        client = RadiusClient(
            [server],
            load_dictionary(),
            timeout=timeout,
            retries=retries,
            require_message_authenticator=require_ma,
        )
        name = f"{service} {server.label}"
        started = time.monotonic()
        code = await client.status_server(server)
        took = (time.monotonic() - started) * 1000
        if code is not None:
            answer = CODE_TITLES.get(code, f"code {code}")
            checks.append(Check.passed(name, "Status-Server", f"{answer} in {took:.0f} ms"))
        else:
            detail = (
                f"no valid answer in {timeout:g} s x {retries + 1}: down, another secret, or"
                " Status-Server not enabled (NPS never answers it: try --login)"
            )
            checks.append(Check.failed(name, "Status-Server", detail))
    return checks


def _radius_servers(hosts: list[tuple[str, int, str]]) -> list[RadiusServer]:
    return [RadiusServer(host, port, secret.encode()) for host, port, secret in hosts]


async def _directory(config: Config, args: argparse.Namespace) -> list[Check]:
    directory = config.directory
    if directory.backend == "ldap" and directory.ldap is not None:
        from mfaproxy.directory.ldap import LdapChecker
        from mfaproxy.directory.ldap_probe import diagnose

        checker = LdapChecker(directory.ldap)
        try:
            return await asyncio.to_thread(diagnose, checker, directory.ldap, args.user)
        finally:
            await checker.close()
    if directory.backend == "radius" and directory.radius is not None:
        radius = directory.radius
        hosts = [(s.host, s.port, s.secret.get_secret_value()) for s in radius.servers]
        return await _status_servers(
            "radius",
            _radius_servers(hosts),
            radius.timeout,
            0,
            radius.require_message_authenticator,
        )
    return _local(config, args.user)


def _local(config: Config, user: str | None) -> list[Check]:
    from mfaproxy.directory.local import load_users_file

    local = config.directory.local
    assert local is not None  # the schema requires the selected backend's section
    service = f"users file {local.users_file}"
    users = load_users_file(local.users_file)  # preflight already refused a broken one
    checks = [Check.passed(service, "read", f"{len(users)} user(s)")]
    if user is not None:
        from mfaproxy.core.identity import normalise

        found = users.get(normalise(user))
        if found is None:
            checks.append(Check.failed(service, "user", f"{user} is not in the file"))
        else:
            groups = ", ".join(sorted(found.groups)) or "none"
            checks.append(Check.passed(service, "user", f"{user}; groups: {groups}"))
    return checks


def _read_password(user: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {user}: ")
    return sys.stdin.readline().rstrip("\r\n")


async def _login(config: Config, args: argparse.Namespace) -> list[Check]:
    service = f"login {config.directory.backend}"
    if not args.login:
        return []
    if args.user is None:
        return [Check.failed(service, "test login", "--login needs --user NAME")]
    password = _read_password(args.user)
    checker = build_checker(config.directory, load_dictionary(config.server.dictionaries))
    try:
        result = await checker.authenticate(args.user, password)
    finally:
        await checker.close()
    if result.accepted:
        groups = (
            "(none: this backend has no group data)"
            if result.groups is None
            else ", ".join(sorted(result.groups)) or "none"
        )
        detail = f"{args.user} accepted by {result.backend}; groups: {groups}"
        return [Check.passed(service, "test login", detail)]
    outcome = result.outcome.value
    return [Check.failed(service, "test login", f"{args.user}: {outcome} ({result.reason})")]


# --------------------------------------------------------------------------- second factors


async def _smtp(config: Config, _args: argparse.Namespace) -> list[Check]:
    mfa = config.multifactor
    needs = "email" in mfa.enabled or "email" in mfa.alternate
    if config.smtp is None:
        if needs:
            return [Check.failed("smtp", "configured", "email codes need an smtp section")]
        return [Check.skipped("smtp", "configured", "no smtp section (no mail is sent)")]
    return await SmtpSender(config.smtp).diagnose()


async def _duo(config: Config, _args: argparse.Namespace) -> list[Check]:
    mfa = config.multifactor
    if "duo" not in mfa.enabled or mfa.duo is None:
        return []
    from mfaproxy.factors.duo_api import DuoApi

    service = f"duo {mfa.duo.api_hostname}"
    api = DuoApi(mfa.duo)
    try:
        answer = await api.check()
    except DuoError as exc:
        return [Check.failed(service, "/auth/v2/check", f"{type(exc).__name__}: {exc}")]
    finally:
        await api.close()
    return [Check.passed(service, "/auth/v2/check", f"keys valid (Duo time {answer.get('time')})")]


async def _twilio(config: Config, _args: argparse.Namespace) -> list[Check]:
    sms = config.multifactor.sms
    if "sms" not in config.multifactor.enabled or sms is None or sms.twilio is None:
        return []
    from mfaproxy.factors.delivery import DeliveryFailed
    from mfaproxy.factors.sms import TwilioTransport

    transport = TwilioTransport(sms.twilio)
    service = f"twilio {transport.server}"
    try:
        detail = await transport.check_credentials()
    except DeliveryFailed as exc:
        return [Check.failed(service, "credentials", exc.reason)]
    finally:
        await transport.close()
    return [Check.passed(service, "credentials", detail)]


async def _yubicloud(config: Config, _args: argparse.Namespace) -> list[Check]:
    settings = config.multifactor.yubikey
    if "yubikey" not in config.multifactor.enabled or settings is None:
        return []
    if settings.validation != "yubicloud":
        return [Check.skipped("yubikey", "validation", "local (no service to reach)")]
    from mfaproxy.factors.yubikey import YubicloudClient

    client = YubicloudClient(settings)
    try:
        ok, detail = await client.check()
    finally:
        await client.close()
    service = f"yubicloud {settings.api_urls[0]}"
    return [(Check.passed if ok else Check.failed)(service, "verify", detail)]


async def _otp_radius(config: Config, _args: argparse.Namespace) -> list[Check]:
    otp = config.multifactor.radius
    if "radius" not in config.multifactor.enabled or otp is None:
        return []
    servers = [otp.server] + ([otp.failover] if otp.failover else [])
    hosts = [(s.host, s.port, s.secret.get_secret_value()) for s in servers]
    servers_, require_ma = _radius_servers(hosts), otp.require_message_authenticator
    return await _status_servers("otp radius", servers_, otp.timeout, otp.retries, require_ma)


# --------------------------------------------------------------------------- stores, files


async def _stores(config: Config, _args: argparse.Namespace) -> list[Check]:
    checks = []
    problem = key_file_problem(config.key_file)
    key = f"key file {config.key_file}"
    if problem is not None:
        checks.append(Check.failed(key, "read", problem))
    elif config.key_file.exists():
        checks.append(Check.passed(key, "read", "32 bytes, mode 0600"))
    else:
        checks.append(Check.skipped(key, "read", "not created yet (the first start does)"))
    backend = config.server.user_store.backend
    path = user_store_path(config)
    if backend == "sqlite" and not path.exists():
        checks.append(Check.skipped(f"user store {path}", "open", "not created yet"))
        return checks + await _state_store(config)
    try:
        store = await asyncio.to_thread(open_user_store, config)
        version = await asyncio.to_thread(store.schema_version)
        store.close()
        checks.append(Check.passed(f"user store {backend}", "open", f"schema {version}"))
    except (MfaproxyError, OSError) as exc:
        checks.append(Check.failed(f"user store {backend}", "open", str(exc)))
    return checks + await _state_store(config)


async def _state_store(config: Config) -> list[Check]:
    checks = []
    state = config.server.state_store.backend
    store_state = open_state_store(config)
    try:
        pending = await store_state.size(CHALLENGES, time.time())
        checks.append(Check.passed(f"state store {state}", "read", f"{pending} challenge(s)"))
    except UpstreamError as exc:
        checks.append(Check.failed(f"state store {state}", "read", str(exc)))
    finally:
        await store_state.close()
    return checks


async def _geoip(config: Config, _args: argparse.Namespace) -> list[Check]:
    checks = []
    for path in config.access_policies.geoip_databases():
        GeoIpDatabase(path).close()  # preflight already opened it once
        checks.append(Check.passed(f"geo-ip {path}", "open", "MaxMind database"))
    return checks


# One row per dependency; each returns its checks (none when it is not configured).
PROBES: tuple[tuple[str, Probe], ...] = (
    ("directory", _directory),
    ("test login", _login),
    ("smtp", _smtp),
    ("duo", _duo),
    ("twilio", _twilio),
    ("yubicloud", _yubicloud),
    ("otp radius", _otp_radius),
    ("stores", _stores),
    ("geo-ip", _geoip),
)


async def run_probes(config: Config, args: argparse.Namespace) -> list[Check]:
    found: list[Check] = []
    for _name, probe in PROBES:
        found += await probe(config, args)
    return found


def cmd_doctor(args: argparse.Namespace) -> int:
    config = preflight.load(args.config)  # an invalid file is reported as check-config does
    try:
        with as_state_owner(config, lambda note: print(f"mfaproxy: {note}", file=sys.stderr)):
            checks = asyncio.run(run_probes(config, args))
    except NotTheServiceUser as exc:
        print(f"mfaproxy: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    for check in checks:
        print(check.line())
    failed = [check for check in checks if check.status is Status.FAIL]
    print(f"{len(checks)} check(s), {len(failed)} failed")
    return EXIT_RUNTIME if failed else EXIT_OK


def register(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "doctor",
        parents=[common],
        help="check every configured dependency (directory, SMTP, Duo, ...)",
        description="Check every dependency the configuration names, one line per check. "
        "Exit 0 when nothing failed, 3 otherwise. Sends no push, SMS or mail.",
    )
    parser.add_argument("--user", help="a user to look up in the directory (and --login)")
    parser.add_argument(
        "--login",
        action="store_true",
        help="also check --user's password against the directory (read from the terminal "
        "or standard input)",
    )
    parser.set_defaults(func=cmd_doctor)
