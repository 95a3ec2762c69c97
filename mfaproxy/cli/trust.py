"""`mfaproxy users forget-trust USER`: end the user's trusted reconnects now, on every
node (README "Trusted reconnects"). The end is stored in the user store, which every
node reads at each login; the passes themselves expire in the state store."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from mfaproxy.config.schema import Config
from mfaproxy.errors import EXIT_INVALID, EXIT_OK
from mfaproxy.store.records import UserRepository


def cmd_forget_trust(store: UserRepository, config: Config, args: argparse.Namespace) -> int:
    if not store.revoke_trust(args.user, time.time()):
        print(f"mfaproxy: {args.user}: not in the user store", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.user}: trusted reconnects ended; the next login asks for the second factor")
    return EXIT_OK


def register(add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """`add(name, parents, help, handler)` is cli/users._add bound to `users`' commands."""
    add(
        "forget-trust",
        [common],
        "end a user's trusted reconnects: the next login asks for the second factor",
        cmd_forget_trust,
    )
