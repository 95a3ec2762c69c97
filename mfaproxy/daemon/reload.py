"""What a reload needs besides swapping the runtime: the slow, blocking part of building
one (read and validate the file, load dictionaries and the users file, derive the dummy
hash, open GeoIP databases) as a plain function to run in a thread, so the event loop
keeps serving; and what changed, compared with what is running.

`changed_settings` lists the dotted paths whose values differ (secrets compared, never
shown). `restart_required` lists those of `RESTART_ONLY` that differ from the
configuration the process started with, so that a second reload of a still-unapplied
`listen` change warns again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyrad.dictionary import Dictionary

from mfaproxy.adapters.geoip import GeoIpDatabases
from mfaproxy.config.schema import Config
from mfaproxy.daemon.preflight import check
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.directory.registry import build_checker
from mfaproxy.radius.codec import load_dictionary

# Settings applied only at start: sockets, processes, stores, queues and the tables
# sized from them. Everything else (clients, secrets, policies, methods, backends,
# logging, max_queue_wait, reject_delay) applies to new requests on reload.
RESTART_ONLY = (
    "server.listen",
    "server.metrics",
    "server.workers",
    "server.state_dir",
    "server.secrets_key_file",
    "server.state_store",
    "server.user_store",
    "server.intake_queue",
    "server.concurrency",
    "server.duplicate_cache_seconds",
)


@dataclass
class Prepared:
    """A validated configuration and the backends built from it, not yet serving."""

    config: Config
    dictionary: Dictionary
    checker: PasswordChecker
    geoip: GeoIpDatabases


def prepare(config: Config) -> Prepared:
    """Everything of a new runtime that blocks; safe to run off the event loop."""
    dictionary = load_dictionary(config.server.dictionaries)
    check(config, dictionary)
    geoip = GeoIpDatabases.open_for(config.access_policies)
    try:
        checker = build_checker(config.directory, dictionary)
    except BaseException:
        geoip.close()
        raise
    return Prepared(config, dictionary, checker, geoip)


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def _flat(config: Config) -> dict[str, Any]:
    # Python mode keeps SecretStr objects, which compare by their secret value.
    return dict(_walk(config.model_dump(), ""))


def changed_settings(old: Config, new: Config) -> list[str]:
    """Dotted paths whose values differ (lists compare whole)."""
    before, after = _flat(old), _flat(new)
    missing = object()  # unset vs set (a section appearing) differs too
    return sorted(
        p for p in before.keys() | after.keys() if before.get(p, missing) != after.get(p, missing)
    )


def restart_required(running: Config, new: Config) -> list[str]:
    changed = changed_settings(running, new)
    return [
        setting
        for setting in RESTART_ONLY
        if any(p == setting or p.startswith(setting + ".") for p in changed)
    ]
