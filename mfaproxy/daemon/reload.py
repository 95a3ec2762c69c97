"""What a reload needs besides swapping the runtime: the slow, blocking part of building
one (read and validate the file, load dictionaries and the users file, derive the dummy
hash, open GeoIP databases) as a plain function to run in a thread, so the event loop
keeps serving. What a reload changed, and what waits for a restart, is
daemon/changes.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyrad.dictionary import Dictionary

from mfaproxy.adapters.geoip import GeoIpDatabases
from mfaproxy.config.schema import Config
from mfaproxy.daemon.preflight import check
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.directory.registry import build_checker
from mfaproxy.radius.codec import load_dictionary


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
