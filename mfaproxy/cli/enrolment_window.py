"""`mfaproxy users allow-enrolment USER --for 24h` and `users close-enrolment USER`: the
operator's window in which a user may enrol inside the RADIUS flow (issue 10, item 8).

The window is stored durably in the user store (`users show` prints it), closes by
itself when it runs out, and is used up by the enrolment it allowed.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from mfaproxy.cli.identity import directory_groups
from mfaproxy.config.schema import Config
from mfaproxy.core.groups import in_group
from mfaproxy.core.identity import read_login_name
from mfaproxy.errors import EXIT_INVALID, EXIT_OK
from mfaproxy.store.records import UserRepository

DEFAULT_WINDOW = "24h"
MAX_WINDOW_SECONDS = 30 * 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)\s*([smhd]?)")

Handler = Callable[[UserRepository, Config, argparse.Namespace], int]


def duration(text: str) -> float:
    """`90m`, `24h`, `7d`, `3600s` or plain seconds; at most 30 days."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 24h or 7d")
    seconds = int(found.group(1)) * _UNITS[found.group(2) or "s"]
    if not 0 < seconds <= MAX_WINDOW_SECONDS:
        raise argparse.ArgumentTypeError("the window must be longer than 0 and at most 30d")
    return float(seconds)


def window_text(until: float | None, now: float) -> str:
    if until is None or until <= now:
        return "closed"
    stamp = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"open until {stamp}"


def _note(message: str) -> None:
    print(f"mfaproxy: {message}", file=sys.stderr)


def _warnings(config: Config, user: str) -> None:
    inline = config.multifactor.inline_enrolment
    if "operator_window" not in inline.allow:
        _note(
            "multifactor.inline_enrolment.allow does not list operator_window: the"
            " window is recorded but lets nobody enrol until it does"
        )
    if inline.networks:
        _note(f"{user} may enrol only from {', '.join(str(n) for n in inline.networks)}")


def cmd_allow(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    now = time.time()
    store.open_enrolment(args.user, now + args.window, now)
    print(f"{args.user}: may enrol inside the RADIUS flow, {window_text(now + args.window, now)}")
    _warnings(config, args.user)
    administrator = _administrator_note(config, args.user)
    if administrator is not None:
        _note(administrator)
    _note("the window is used up by the first enrolment")
    return EXIT_OK


def _administrator_note(config: Config, user: str) -> str | None:
    """Why the window may let `user` enrol nothing: administrators never enrol inline
    unless inline_enrolment.administrators, and a user whose groups the daemon does not
    get counts as one (core/second_factor.enrolment_gate). None: no such problem."""
    mfa = config.multifactor
    group = mfa.administrators.group
    if group is None or mfa.inline_enrolment.administrators:
        return None
    setting = "multifactor.inline_enrolment.administrators"
    instead = f"enrol {user} with `mfaproxy users enroll {user} METHOD` instead, or set {setting}"
    radius = config.directory.radius if config.directory.backend == "radius" else None
    if radius is not None and radius.group_attribute is None:
        return (
            f"the radius directory gives no groups, so every user counts as an"
            f" administrator ({group!r}) and this window lets nobody enrol: {instead}"
        )
    login = read_login_name(user, config.directory.realms).user
    groups = directory_groups(config, user, login, lambda _message: None)
    if groups is None:
        return (
            f"{user}'s groups cannot be read here: if {user} is in {group!r} (an"
            f" administrator), this window lets {user} enrol nothing; {instead}"
        )
    if not in_group(groups, group):
        return None
    return (
        f"{user} is in {group!r} (an administrator): this window lets {user} enrol"
        f" nothing; {instead}"
    )


def cmd_close(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    if not store.close_enrolment(args.user, time.time()):
        _note(f"{args.user}: no enrolment window was open")
        return EXIT_INVALID
    print(f"{args.user}: enrolment window closed")
    return EXIT_OK


def register(add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """`add(name, parents, help, handler)` is cli/users._add bound to `users`' commands."""
    allow = add(
        "allow-enrolment",
        [common],
        "let a user enrol a second factor inside the RADIUS flow for a while",
        cmd_allow,
    )
    allow.add_argument(
        "--for",
        dest="window",
        type=duration,
        default=duration(DEFAULT_WINDOW),
        metavar="DURATION",
        help=f"how long the window stays open: 30m, 24h, 7d (default {DEFAULT_WINDOW})",
    )
    add("close-enrolment", [common], "close a user's enrolment window", cmd_close)
