"""`mfaproxy users collisions [keep STORED_NAME]`: repair what the identity migration
refused to merge (store/rekey.py).

Stores made before the one user-name normaliser keyed users by `strip().lower()`; two
stored names that now normalise to one identity (`stra\\u00dfe` and `strasse`) may be a
user and an alias someone else enrolled under, so the migration stops and the daemon
does not start until an operator chose. `collisions` lists each shared identity with
what every stored record holds (never a secret); `collisions keep NAME` keeps the record
stored exactly as NAME, deletes the others of its group, and runs the migration. The
store is opened just before the re-key step, so it works while the daemon cannot.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

from mfaproxy.cli.ownership import NotTheServiceUser, as_state_owner
from mfaproxy.config.schema import Config, load_config
from mfaproxy.errors import EXIT_INVALID, EXIT_OK, EXIT_RUNTIME, IdentityCollisionError, StoreError
from mfaproxy.store.factory import open_user_store
from mfaproxy.store.records import UserRecord, UserRepository
from mfaproxy.store.rekey import REKEY_VERSION, RekeyPlan, plan_rekey


def _note(message: str) -> None:
    print(f"mfaproxy: {message}", file=sys.stderr)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _summary(record: UserRecord | None) -> str:
    if record is None:
        return "(gone)"
    enrolled = ", ".join(sorted(record.enrolled)) or "nothing enrolled"
    return (
        f"method {record.method or '-'}; {enrolled}; "
        f"{record.backup_codes_remaining} backup codes; updated {_when(record.updated_at)}"
    )


def _open_before_rekey(config: Config) -> UserRepository:
    return open_user_store(config, migrate_to=REKEY_VERSION - 1)


def _plan(store: UserRepository) -> RekeyPlan | None:
    """The collisions left, or None when the store is already re-keyed."""
    if store.schema_version() >= REKEY_VERSION:
        return None
    return plan_rekey(store.list_users())


def _print_groups(store: UserRepository, plan: RekeyPlan) -> None:
    for key, names in sorted(plan.collisions.items()):
        print(f"identity {key!r} is shared by:" if key else "normalised to nothing:")
        for name in names:
            print(f"  {name!r:<28} {_summary(store.stored_record(name))}")


def _migrate(config: Config) -> int:
    try:
        open_user_store(config).close()
    except IdentityCollisionError as exc:
        _note(f"collisions remain: {exc}")
        return EXIT_INVALID
    print("the user store is re-keyed; the daemon can start")
    return EXIT_OK


def cmd_collisions(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        with as_state_owner(config, _note):
            return _collisions(config, args)
    except NotTheServiceUser as exc:
        _note(str(exc))
        return EXIT_RUNTIME


def _collisions(config: Config, args: argparse.Namespace) -> int:
    try:
        store = _open_before_rekey(config)
    except (StoreError, OSError) as exc:
        _note(f"cannot open the user store: {exc}")
        return EXIT_RUNTIME
    try:
        plan = _plan(store)
        if plan is None or not plan.collisions:
            print("no collisions: every stored user has an identity of its own")
            return EXIT_OK
        if args.keep is None:
            _print_groups(store, plan)
            _note("keep one record of each with `mfaproxy users collisions keep NAME`")
            return EXIT_INVALID
        group = next((names for names in plan.collisions.values() if args.keep in names), None)
        if group is None:
            _note(f"{args.keep!r} is not a stored name in any collision (see the list)")
            return EXIT_INVALID
        for name in group:
            if name != args.keep:
                store.delete_stored(name)
                print(f"deleted {name!r} (method, enrolments, backup codes, resets)")
        print(f"kept {args.keep!r}")
        if len(plan.collisions) > 1:
            _note(f"{len(plan.collisions) - 1} more collision(s) to resolve")
            return EXIT_OK
    finally:
        store.close()
    return _migrate(config)


# A string: argparse._SubParsersAction is not subscriptable at run time.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(commands: SubParsers, common: argparse.ArgumentParser) -> None:
    help_text = "list stored users that would share one identity; keep one of each"
    parser = commands.add_parser(
        "collisions", parents=[common], help=help_text, description=help_text
    )
    actions = parser.add_subparsers(dest="collisions_command", metavar="ACTION")
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="configuration file")
    keep = actions.add_parser(
        "keep", parents=[late], help="keep the record stored exactly as NAME, delete the others"
    )
    keep.add_argument("keep", metavar="NAME", help="a stored name, as listed")
    parser.set_defaults(func=cmd_collisions, keep=None)
