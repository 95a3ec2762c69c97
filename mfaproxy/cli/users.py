"""`mfaproxy users ...`: enrolment, backup codes, methods, lockouts and reset requests.

`enroll` does TOTP here; YubiKey, email and SMS enrolment are in cli_enrol.py.

Data a script may want (the otpauth:// URI, backup codes, listings) goes to standard
output; notes for the operator go to standard error. Secrets are printed only by the
commands that create them (`enroll`, `backup-codes`), once; `show` never prints one.
USER is read as the daemon reads a User-Name and looked up in the directory
(cli/identity.py): every command acts on the identity a login would reach, and says
so when the name is that of another user or unknown to the directory.
"""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias, cast

import segno

from mfaproxy.cli import collisions as cli_collisions
from mfaproxy.cli import enrol as cli_enrol
from mfaproxy.cli import enrolment_window
from mfaproxy.cli import trust as cli_trust
from mfaproxy.cli.enrolment_window import DEFAULT_WINDOW, duration, window_text
from mfaproxy.cli.identity import resolve
from mfaproxy.cli.ownership import NotTheServiceUser, as_state_owner
from mfaproxy.config.multifactor import METHODS, Method
from mfaproxy.config.schema import Config, load_config
from mfaproxy.core.identity import identity_key
from mfaproxy.errors import EXIT_INVALID, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, StoreError
from mfaproxy.otp import totp
from mfaproxy.otp.backup_codes import generate_codes
from mfaproxy.store.factory import open_user_store, user_store_path
from mfaproxy.store.records import ResetRequest, ResetStatus, UserRepository

# What the store can fail with: its own checks, the file system, SQLite (locked, corrupt).
_STORE_FAULTS = (StoreError, OSError, sqlite3.Error)

Handler = Callable[[UserRepository, Config, argparse.Namespace], int]
# A string: argparse._SubParsersAction is not subscriptable at run time.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# Methods that need data only an enrolment stores; a user set to one of them without
# it cannot log in until they enrol (or are marked "configure later").
_NEEDS_ENROLMENT: dict[str, str] = {
    "totp": "enrol with `mfaproxy users enroll {user} totp`",
    "yubikey": (
        "enrol with `mfaproxy users enroll {user} yubikey --otp OTP`, or (yubicloud) "
        "let them register their key at login with --configure-later"
    ),
}


def _user(text: str) -> str:
    try:
        identity_key(text)  # refused here when nothing is left of it
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _note(message: str) -> None:
    print(f"mfaproxy: {message}", file=sys.stderr)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _run(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Wrap a handler: load the configuration, open the store, always close it."""

    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config)
        try:
            with as_state_owner(config, _note):
                _resolve_user(config, args)
                return _with_store(handler, config, args)
        except NotTheServiceUser as exc:
            _note(str(exc))
            return EXIT_RUNTIME

    return run


def _resolve_user(config: Config, args: argparse.Namespace) -> None:
    """Every command acts on the identity the daemon would use for USER (cli/identity)."""
    if getattr(args, "user", None) is None or getattr(args, "stored", False):
        return
    resolved = resolve(config, args.user)
    if resolved.note is not None:
        _note(resolved.note)
    args.user = resolved.identity


def _with_store(handler: Handler, config: Config, args: argparse.Namespace) -> int:
    try:
        store = open_user_store(config)
    except _STORE_FAULTS as exc:
        # Often a permission problem: run as the user the daemon runs as.
        _note(f"cannot open the user store {user_store_path(config)}: {exc}")
        return EXIT_RUNTIME
    try:
        return handler(store, config, args)
    except _STORE_FAULTS as exc:
        _note(f"user store {user_store_path(config)}: {exc}")
        return EXIT_RUNTIME
    finally:
        store.close()


# --------------------------------------------------------------------------- enrolment


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` readable by its owner only: the image carries the TOTP secret."""
    # O_NOFOLLOW: a planted symlink must not redirect the secret somewhere else.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode otherwise
        out.write(data)


def _qr_image(qr: segno.QRCode, kind: str) -> bytes:
    buffer = io.BytesIO()
    qr.save(buffer, kind=kind, scale=8, border=4)
    return buffer.getvalue()


def cmd_enroll(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    misplaced = cli_enrol.misplaced_option(args)
    if misplaced is not None:
        _note(misplaced)
        return EXIT_USAGE
    if args.method not in config.multifactor.enabled:
        _note(f"{args.method} is not in multifactor.enabled; enable it before enrolling users")
        return EXIT_INVALID
    if args.method != "totp":
        return cli_enrol.enrol(store, config, args)
    settings = config.multifactor.totp
    secret = totp.new_secret(settings)
    uri = totp.provisioning_uri(secret, args.user, settings)
    qr = segno.make(uri, error="m")
    images = [(path, kind) for path, kind in ((args.png, "png"), (args.svg, "svg")) if path]
    try:
        # Written before the secret is stored: a bad path then changes nothing.
        for path, kind in images:
            _write_private(path, _qr_image(qr, kind))
    except OSError as exc:
        _note(f"cannot write {exc.filename}: {exc.strerror}")
        return EXIT_INVALID
    previous = store.get_user(args.user)
    now = time.time()
    store.set_totp_secret(args.user, secret, now)
    store.set_method(args.user, "totp", now)
    if previous is not None and "totp" in previous.enrolled:
        _note(f"{args.user}: the previous TOTP secret is replaced; its codes no longer work")
    print(uri)
    if sys.stdout.isatty():
        qr.terminal(out=sys.stdout, compact=True)
        print(f"Key for manual entry: {secret}")
    for path, _ in images:
        _note(f"QR code written to {path} (mode 0600: it contains the secret)")
    _note(f"{args.user} enrolled with TOTP; this is the only time the secret is shown")
    return EXIT_OK


def cmd_backup_codes(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    codes = generate_codes(config.multifactor.backup_codes.count)
    store.replace_backup_codes(args.user, codes, time.time())
    print("\n".join(codes))
    if "backup_codes" not in config.multifactor.alternate:
        _note("backup_codes is not in multifactor.alternate: the codes work once it is")
    _note(f"{len(codes)} new backup codes for {args.user}; any older set is void")
    return EXIT_OK


# --------------------------------------------------------------------------- inspection


def _reset_text(request: ResetRequest | None) -> str:
    if request is None:
        return "-"
    decided = f", decided {_when(request.decided_at)}" if request.decided_at else ""
    return f"{request.status}: requested {_when(request.requested_at)} via {request.via}{decided}"


def cmd_show(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    record = store.get_user(args.user)
    if record is None:
        _note(f"{args.user}: not in the user store")
        return EXIT_INVALID
    now = time.time()
    lock = store.lock_state(args.user, now)
    default = config.multifactor.default or "none"
    rows = [
        ("user", record.name),
        ("method", record.method or f"(server default: {default})"),
        ("configure later", "yes" if record.configure_later else "no"),
        ("enrolment window", enrolment_window.window_text(record.enrol_until, now)),
        ("enrolled", ", ".join(sorted(record.enrolled)) or "-"),
        ("TOTP", "enrolled" if "totp" in record.enrolled else "not enrolled"),
        ("backup codes left", str(record.backup_codes_remaining)),
        ("failures", str(lock.failures)),
        ("locked until", _when(lock.locked_until) if lock.locked else "not locked"),
        ("last reset request", _reset_text(record.last_reset)),
        ("trust ended", _when(record.trust_not_before) if record.trust_not_before else "-"),
        ("created", _when(record.created_at)),
        ("updated", _when(record.updated_at)),
    ]
    for label, value in rows:
        print(f"{label + ':':<20} {value}")
    return EXIT_OK


def cmd_list(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    for name in store.list_users():
        record = store.get_user(name)
        if record is None:  # deleted between the two reads
            continue
        flags = " (configure later)" if record.configure_later else ""
        if record.enrolment_open(time.time()):
            flags += " (enrolment window open)"
        print(f"{name:<32} {record.method or '-'}{flags}")
    return EXIT_OK


# --------------------------------------------------------------------------- changes


def cmd_set_method(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    method = None if args.method == "none" else cast(Method, args.method)
    if method is not None and method not in config.multifactor.enabled:
        enabled = ", ".join(config.multifactor.enabled)
        _note(f"{method} is not in multifactor.enabled ({enabled})")
        return EXIT_INVALID
    now = time.time()
    store.set_method(args.user, method, now, configure_later=args.configure_later)
    later = ""
    if args.configure_later:
        # "Configure later" is an operator's intent, so it opens a window: inline
        # enrolment never rests on the password alone (multifactor.inline_enrolment).
        store.open_enrolment(args.user, now + args.window, now)
        later = f"; the user enrols at a login, window {window_text(now + args.window, now)}"
    record = store.get_user(args.user)
    shown = method or f"none (server default: {config.multifactor.default or 'none'})"
    print(f"{args.user}: method {shown}{later}")
    hint = _NEEDS_ENROLMENT.get(method or "")
    if hint and record and method not in record.enrolled and not args.configure_later:
        _note(f"{args.user} has no {method} enrolment yet: {hint.format(user=args.user)}")
    return EXIT_OK


def cmd_unlock(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    if store.get_user(args.user) is None:
        _note(f"{args.user}: not in the user store")
        return EXIT_INVALID
    lock = store.lock_state(args.user, time.time())
    store.reset_failures(args.user)
    was = f" (was locked until {_when(lock.locked_until)})" if lock.locked else ""
    print(f"{args.user}: failures cleared{was}")
    return EXIT_OK


def cmd_delete(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    if not store.delete_user(args.user):
        _note(f"{args.user}: not in the user store")
        return EXIT_INVALID
    print(f"{args.user}: deleted (method, enrolments, backup codes and resets)")
    return EXIT_OK


# --------------------------------------------------------------------------- resets


def cmd_resets_list(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    status: ResetStatus | None = None if args.all else "pending"
    requests = store.list_resets(status)
    if not requests:
        _note("no pending reset requests" if status else "no reset requests")
        return EXIT_OK
    print(f"{'USER':<24} {'REQUESTED AT':<24} {'VIA':<8} STATUS")
    for request in requests:
        requested = _when(request.requested_at)
        print(f"{request.user:<24} {requested:<24} {request.via:<8} {request.status}")
    return EXIT_OK


def cmd_resets_request(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    if store.request_reset(args.user, "cli", time.time()):
        print(
            f"{args.user}: reset request filed; "
            f"approve it with `mfaproxy users resets approve {args.user}`"
        )
    else:
        print(f"{args.user}: a reset request is already pending")
    return EXIT_OK


def cmd_resets_approve(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    if not store.approve_reset(args.user, time.time()):
        _note(f"{args.user}: no pending reset request")
        return EXIT_INVALID
    print(
        f"{args.user}: reset approved; method, TOTP secret, enrolments and backup codes "
        f"cleared. Enrol again with `mfaproxy users enroll {args.user} totp` or "
        f"`mfaproxy users set-method {args.user} METHOD --configure-later`"
    )
    return EXIT_OK


def cmd_resets_clear(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    if not store.clear_reset(args.user, time.time()):
        _note(f"{args.user}: no pending reset request")
        return EXIT_INVALID
    print(f"{args.user}: reset request dismissed; MFA settings unchanged")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _add(
    sub: SubParsers,
    name: str,
    parents: list[argparse.ArgumentParser],
    help_text: str,
    handler: Handler,
    *,
    user: bool = True,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, parents=parents, help=help_text, description=help_text)
    if user:
        parser.add_argument("user", type=_user, metavar="USER")
    parser.set_defaults(func=_run(handler))
    return parser


def _register_resets(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    resets = _add(
        sub,
        "resets",
        [common],
        "list pending reset requests; approve, clear or file one",
        cmd_resets_list,
        user=False,
    )
    resets.add_argument("--all", action="store_true", help="also approved and cleared requests")
    # --config given before the action must survive: a sub-action's default would
    # overwrite it, so here the option has no default of its own.
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="configuration file")
    actions = resets.add_subparsers(dest="resets_command", metavar="ACTION")
    for name, help_text, handler in (
        ("approve", "approve: clear the user's MFA so they enrol again", cmd_resets_approve),
        ("clear", "dismiss the pending request, MFA unchanged", cmd_resets_clear),
        ("request", "file a reset request for a user (as an operator)", cmd_resets_request),
    ):
        _add(actions, name, [late], help_text, handler)


def register(sub: SubParsers, common: argparse.ArgumentParser) -> SubParsers:
    """Add `users` and its commands; returns its subparsers for commands defined elsewhere."""
    users = sub.add_parser("users", help="manage users: enrolment, methods, resets")
    commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    enroll = _add(
        commands,
        "enroll",
        [common],
        "enrol a user in totp (prints the otpauth:// URI), yubikey, email or sms",
        cmd_enroll,
    )
    cli_enrol.add_options(enroll)
    _add(commands, "backup-codes", [common], "issue a fresh set of backup codes", cmd_backup_codes)
    _add(commands, "show", [common], "show a user's MFA settings (never secrets)", cmd_show)
    setm = _add(commands, "set-method", [common], "set or clear a user's method", cmd_set_method)
    setm.add_argument("method", choices=[*METHODS, "none"], metavar="METHOD|none")
    setm.add_argument(
        "--configure-later",
        action="store_true",
        help="the user enrols the method inline at a login (opens an enrolment window)",
    )
    setm.add_argument(
        "--for",
        dest="window",
        type=duration,
        default=duration(DEFAULT_WINDOW),
        metavar="DURATION",
        help=f"with --configure-later: how long the window stays open (default {DEFAULT_WINDOW})",
    )
    _add(commands, "list", [common], "list the users in the store", cmd_list, user=False)
    _add(commands, "unlock", [common], "clear failures and any lockout", cmd_unlock)
    delete = _add(commands, "delete", [common], "delete a user from the store", cmd_delete)
    delete.add_argument(
        "--stored",
        action="store_true",
        help="USER is the stored name as `users list` shows it, not looked up in the"
        " directory (a record no login reaches)",
    )
    enrolment_window.register(lambda *a: _add(commands, *a), common)
    cli_trust.register(lambda *a: _add(commands, *a), common)
    _register_resets(commands, common)
    cli_collisions.register(commands, common)
    return commands
