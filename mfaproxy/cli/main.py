"""Command line: argv -> config -> action. The CLI returns exit codes; only its entry
points (`mfaproxy`, `python -m mfaproxy`) exit the process.

Exit codes are the one table in mfaproxy/errors.py (stable, for scripts): 0 success;
1 invalid configuration or input; 2 usage error; 3 runtime failure (cannot bind, a
backend broken at start).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mfaproxy import __version__
from mfaproxy.cli import doctor as cli_doctor
from mfaproxy.cli import policy as cli_policy
from mfaproxy.cli import radtest as cli_radtest
from mfaproxy.cli import users as cli_users
from mfaproxy.cli.ownership import give_back
from mfaproxy.config.schema import DEFAULT_CONFIG_PATH, Config
from mfaproxy.daemon import preflight
from mfaproxy.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    ConfigError,
    StoreError,
    UpstreamError,
)
from mfaproxy.observability.logging import apply_log_config, configure_logging
from mfaproxy.store.factory import accounting_spool_path


def cmd_serve(args: argparse.Namespace) -> int:
    config = preflight.load(args.config)  # the same checks as check-config
    # The daemon is the service: it runs as whoever runs it (a container may give it a
    # group-writable volume). Root-owned files an operator's root run left are given
    # back to the directory's owner when root starts it; the unit runs it as mfaproxy.
    for note in give_back(config):
        print(f"mfaproxy: {note}", file=sys.stderr)
    apply_log_config(config.server.log)
    from mfaproxy.daemon.server import serve
    from mfaproxy.daemon.supervisor import Supervisor, worker_index

    if worker_index() is None:  # once, not once per worker
        preflight.log_warnings(preflight.warning_records(config))
    # Several workers: this process supervises; each worker runs `serve` itself.
    supervise = config.server.workers > 1 and worker_index() is None
    main_coro = Supervisor(config, args.config).run() if supervise else serve(config)

    try:
        import uvloop

        runner: Callable[..., int] = uvloop.run
    except ImportError:  # not on every platform; asyncio works, a little slower
        runner = asyncio.run
    try:
        return runner(main_coro)
    except (OSError, UpstreamError, StoreError) as exc:
        # A port in use, a store that does not answer at start (systemd restarts us), or
        # one that cannot be used as it is (a newer schema, identities that collide).
        print(f"mfaproxy: cannot start: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _accounting_summary(config: Config) -> str:
    accounting = config.server.accounting
    if accounting is None:
        return "off"
    upstream = accounting.upstream
    if upstream is None:
        return f"{', '.join(accounting.listen)}; records logged, not forwarded"
    servers = ", ".join(f"{s.host}:{s.port}" for s in upstream.servers)
    summary = f"{', '.join(accounting.listen)}; forwarded to {servers} (answer {upstream.answer})"
    if upstream.answer == "at_once":
        spool = accounting_spool_path(config)
        summary += f"; spooled in {spool}, at most {upstream.spool.max_records} records"
    return summary


def cmd_check_config(args: argparse.Namespace) -> int:
    config = preflight.load(args.config)
    print(f"configuration {args.config} is valid")
    print(f"  listen: {', '.join(config.server.listen)}")
    print(f"  accounting: {_accounting_summary(config)}")
    for client in config.clients:
        networks = ", ".join(str(n) for n in client.address)
        ma = "required" if client.require_message_authenticator else "NOT required"
        if not client.require_message_authenticator:
            ma += "; unsigned Proxy-State " + (
                "dropped" if client.limits_proxy_state else "ALLOWED"
            )
        print(
            f"  client {client.name}: {networks}; Message-Authenticator {ma}; "
            f"second factor by {client.second_factor}"
        )
    print(f"  directory: {config.directory.backend}")
    print(f"  reply mappings: {len(config.replies.groups)} group(s)")
    policies = config.access_policies
    for target in (policies.login, policies.mfa):
        active = sum(1 for p in target.policies if p.active)
        print(f"  {target.target} policies: {active} active, default {target.default_action}")
    mfa = config.multifactor
    alternates = ", ".join(mfa.alternate) or "none"
    enabled = ", ".join(mfa.enabled)
    print(f"  multifactor: {enabled} (default {mfa.default}); alternates {alternates}")
    server = config.server
    print(
        f"  stores: state {server.state_store.backend}, users {server.user_store.backend}; "
        f"failmode {server.store_failmode}; workers {server.workers}"
    )
    found = preflight.warning_lines(config)
    count = sum(1 for line in found if not line.startswith("  "))
    print(f"{count} warning(s)" + (":" if count else ""))
    for line in found:
        print(f"  {line}")
    return EXIT_INVALID if count and args.strict else EXIT_OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    from mfaproxy.directory.local import hash_password, parse_cost

    try:
        cost = parse_cost(args.cost)
    except ValueError as exc:
        print(f"mfaproxy: --cost: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("mfaproxy: passwords differ", file=sys.stderr)
            return EXIT_INVALID
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("mfaproxy: empty password refused", file=sys.stderr)
        return EXIT_INVALID
    print(hash_password(password, cost))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfaproxy", description="RADIUS MFA proxy")
    parser.add_argument("--version", action="version", version=f"mfaproxy {__version__}")
    # `mfaproxy --config F check-config` and `mfaproxy check-config --config F` both work:
    # the subcommand's option leaves the value alone unless it is given (SUPPRESS).
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="configuration file (YAML)"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"configuration file (YAML; default {DEFAULT_CONFIG_PATH})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the daemon in the foreground").set_defaults(
        func=cmd_serve
    )
    check_config = sub.add_parser(
        "check-config", parents=[common], help="validate the configuration and summarise it"
    )
    check_config.add_argument(
        "--strict", action="store_true", help="exit 1 when there are warnings too"
    )
    check_config.set_defaults(func=cmd_check_config)
    users = cli_users.register(sub, common)
    hashing = users.add_parser(
        "hash-password", parents=[common], help="read a password on stdin, print its argon2id hash"
    )
    hashing.add_argument(
        "--cost",
        default="owasp-minimum",
        metavar="COST",
        help="owasp-minimum (default: m=19 MiB, t=2, p=1), owasp-46mib, rfc9106-low-memory "
        "(m=64 MiB, t=3, p=4), or m=KIB,t=PASSES,p=LANES",
    )
    hashing.set_defaults(func=cmd_hash_password)
    cli_policy.register(sub, common)
    cli_doctor.register(sub, common)
    cli_radtest.register(sub)
    return parser


def _reader_went_away() -> int:
    """Standard output is a pipe whose reader exited (`check-config | head`): not our
    failure. Point stdout at /dev/null so the interpreter's final flush is quiet too,
    and exit like a program killed by SIGPIPE, as `yes | head` does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands print their results on stdout; a library's warning goes to stderr
    # (serve replaces this with the configured logging).
    configure_logging("console", "warning")
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except BrokenPipeError:
        return _reader_went_away()
    except ConfigError as exc:
        print(f"mfaproxy: {args.config}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    return code
