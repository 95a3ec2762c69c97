"""`mfaproxy users enroll USER yubikey|email|sms`: the methods besides TOTP (cli_users.py).

yubikey binds the key that typed an OTP, through the factor's own `enrol()`: with
`validation: local` the operator also gives the key's AES key and private id (as the
personalisation tool printed them) and the OTP must decrypt with them; with `yubicloud`
YubiCloud verifies the OTP. Either way the OTP is used up. email and sms store an
address or number the operator vouches for: no code is sent from here. The directory's
address or number, when it has one, is still used first at login.

The bound public id or the stored destination goes to standard output; notes go to
standard error. Exit codes are mfaproxy.cli.main's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mfaproxy.config.multifactor import Method, YubikeyMethodConfig
from mfaproxy.config.schema import Config
from mfaproxy.core.prompts import default_text
from mfaproxy.errors import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    UpstreamUnavailable,
    YubikeyEnrolmentError,
)
from mfaproxy.factors import yubikey
from mfaproxy.factors.base import FactorServices
from mfaproxy.factors.email import normalise_address
from mfaproxy.factors.sms import normalise_number
from mfaproxy.radius.codec import load_dictionary
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.factory import master_key
from mfaproxy.store.records import UserRepository
from mfaproxy.store.state import MemoryStateStore

ENROL_METHODS = ("totp", "yubikey", "email", "sms")
# Each method's own options (argparse dests); giving one to another method is a usage error.
_OPTIONS: dict[str, tuple[str, ...]] = {
    "totp": ("png", "svg"),
    "yubikey": ("otp", "aes_key", "private_id"),
    "email": ("address",),
    "sms": ("number",),
}

EPILOG = """\
methods:
  totp     a new secret: prints the otpauth:// URI (and a QR code on a terminal)
  yubikey  binds the key that typed the OTP (--otp, else read from standard input:
           touch the key at the prompt) and prints its public id. With
           validation: local, --aes-key and --private-id are required and the OTP
           must decrypt with them; with yubicloud, YubiCloud verifies the OTP.
  email    stores --address for email codes
  sms      stores --number for text-message codes

No code is sent to an address or number given here: the operator vouches for it.
At login the directory's email address or mobile number, when it has one, is used
before the stored one. Each method must be in multifactor.enabled.
"""


def _note(message: str) -> None:
    print(f"mfaproxy: {message}", file=sys.stderr)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The `enroll` command's METHOD and per-method options (cli_users.register calls it)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "method", choices=ENROL_METHODS, metavar="METHOD", help=", ".join(ENROL_METHODS)
    )
    totp = parser.add_argument_group("totp")
    totp.add_argument("--png", type=Path, help="also write the QR code as a PNG (mode 0600)")
    totp.add_argument("--svg", type=Path, help="also write the QR code as an SVG (mode 0600)")
    key = parser.add_argument_group("yubikey")
    key.add_argument("--otp", help="an OTP from the key (default: read from standard input)")
    key.add_argument("--aes-key", metavar="HEX", help="the key's AES key (validation: local)")
    key.add_argument("--private-id", metavar="HEX", help="the key's private id (validation: local)")
    destination = parser.add_argument_group("email, sms (no code is sent: you vouch for it)")
    destination.add_argument("--address", help="the user's email address (email)")
    destination.add_argument("--number", help="the user's mobile number, e.g. +15551234567 (sms)")


def misplaced_option(args: argparse.Namespace) -> str | None:
    """A message when an option of another method was given, else None."""
    for method, dests in _OPTIONS.items():
        if method == args.method:
            continue
        for dest in dests:
            if getattr(args, dest, None) is not None:
                return f"{_flag(dest)} is for `enroll USER {method}`, not {args.method}"
    return None


def enrol(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    """Enrol args.user in args.method (not totp), once cli_users checked it is enabled."""
    if args.method == "yubikey":
        return _enrol_yubikey(store, config, args)
    return _enrol_destination(store, args)


# --------------------------------------------------------------------------- yubikey


def _read_otp() -> str:
    """One line from standard input: a touched YubiKey types its OTP and Enter."""
    if sys.stdin.isatty():
        print(f"{default_text('yubikey_enrol')}: ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip()


async def _bind_key(
    store: UserRepository,
    config: Config,
    settings: YubikeyMethodConfig,
    args: argparse.Namespace,
    otp: str,
) -> str:
    users = AsyncUserStore(store, threads=1)
    services = FactorServices(
        users=users,
        state=MemoryStateStore(),
        mail=None,
        dictionary=load_dictionary(),
        master_key=master_key(config),
    )
    try:
        return await yubikey.enrol(
            services, settings, args.user, otp, time.time(), args.aes_key, args.private_id
        )
    finally:
        # Drains the pool, and closes `store` too: the caller's later close() is a no-op.
        await users.close()


def _enrol_yubikey(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    settings = config.multifactor.yubikey
    if settings is None:  # the configuration refuses yubikey enabled without its section
        _note("multifactor.yubikey: the section is missing")
        return EXIT_INVALID
    material = (args.aes_key, args.private_id)
    if settings.validation == "local" and None in material:
        _note(
            "multifactor.yubikey.validation is local: give the key's --aes-key and "
            "--private-id (hex, as the personalisation tool printed them)"
        )
        return EXIT_USAGE
    if settings.validation == "yubicloud" and material != (None, None):
        _note("--aes-key and --private-id are for validation: local; YubiCloud needs the OTP only")
        return EXIT_USAGE
    otp = _read_otp() if args.otp is None else args.otp
    if not otp:
        _note("no OTP given: pass --otp, or touch the key at the prompt")
        return EXIT_INVALID
    previous = store.get_enrolment(args.user, "yubikey")
    try:
        # The factor logs failures (YubiCloud unreachable...): keep them off stdout,
        # which carries the public id only.
        with contextlib.redirect_stdout(sys.stderr):
            public_id = asyncio.run(_bind_key(store, config, settings, args, otp))
    except YubikeyEnrolmentError as exc:
        _note(f"cannot enrol {args.user}: {exc}")
        return EXIT_INVALID
    except UpstreamUnavailable as exc:
        _note(f"cannot enrol {args.user}: {exc}; nothing was stored, try again")
        return EXIT_RUNTIME
    print(public_id)
    if previous is not None and previous.get("public_id") != public_id:
        _note(f"{args.user}: the previous key ({previous.get('public_id')}) no longer works")
    how = "checked locally" if settings.validation == "local" else "verified by YubiCloud"
    _note(f"{args.user} enrolled with YubiKey {public_id} (OTP {how}, now used up)")
    return EXIT_OK


# --------------------------------------------------------------------------- email, sms

# method -> (enrolment field and option, normaliser, what the value must be)
_DESTINATIONS: dict[str, tuple[str, Callable[[object], str | None], str]] = {
    "email": ("address", normalise_address, "an email address"),
    "sms": ("number", normalise_number, "a phone number (7 to 15 digits, + for international)"),
}


def _enrol_destination(store: UserRepository, args: argparse.Namespace) -> int:
    method: Method = args.method
    field, normalise, what = _DESTINATIONS[method]
    raw = getattr(args, field)
    if raw is None:
        _note(f"`enroll USER {method}` needs {_flag(field)}")
        return EXIT_USAGE
    value = normalise(raw)
    if value is None:
        _note(f"{raw!r} is not {what}")
        return EXIT_INVALID
    previous = store.get_enrolment(args.user, method)
    now = time.time()
    store.set_enrolment(args.user, method, {field: value}, now)
    store.set_method(args.user, method, now)
    print(value)
    if previous is not None and previous.get(field) != value:
        _note(f"{args.user}: replaces the previous {field} {previous.get(field)}")
    _note(
        f"{args.user} enrolled with {method}; no code was sent to confirm the {field} "
        f"(the directory's {field}, if it has one, is used first)"
    )
    return EXIT_OK
