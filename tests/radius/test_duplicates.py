from __future__ import annotations

from mfaproxy.radius.duplicates import DuplicateTable, Seen

KEY = ("192.0.2.1", 1645, 7, b"a" * 16)


def test_first_copy_is_new_then_in_flight_then_answered_from_cache() -> None:
    table = DuplicateTable(reply_ttl=30, in_flight_ttl=300)
    assert table.begin(KEY, 0).seen is Seen.NEW
    assert table.begin(KEY, 1).seen is Seen.IN_FLIGHT
    table.finish(KEY, b"reply", 2)
    lookup = table.begin(KEY, 3)
    assert lookup.seen is Seen.ANSWERED and lookup.reply == b"reply"


def test_cached_reply_expires() -> None:
    table = DuplicateTable(reply_ttl=30, in_flight_ttl=300)
    table.begin(KEY, 0)
    table.finish(KEY, b"reply", 0)
    assert table.begin(KEY, 31).seen is Seen.NEW


def test_new_authenticator_with_same_identifier_is_a_new_request() -> None:
    table = DuplicateTable(reply_ttl=30, in_flight_ttl=300)
    table.begin(KEY, 0)
    table.finish(KEY, b"reply", 0)
    assert table.begin((*KEY[:3], b"b" * 16), 1).seen is Seen.NEW


def test_other_source_port_is_a_new_request() -> None:
    table = DuplicateTable(reply_ttl=30, in_flight_ttl=300)
    table.begin(KEY, 0)
    assert table.begin((KEY[0], 1646, KEY[2], KEY[3]), 0).seen is Seen.NEW


def test_dropped_request_copies_stay_silent() -> None:
    table = DuplicateTable(reply_ttl=30, in_flight_ttl=300)
    table.begin(KEY, 0)
    table.finish(KEY, None, 0)
    assert table.begin(KEY, 1).seen is Seen.IN_FLIGHT


def test_table_is_bounded() -> None:
    table = DuplicateTable(reply_ttl=30, in_flight_ttl=300, max_entries=10)
    for i in range(50):
        table.begin(("192.0.2.1", i, 0, b"x" * 16), 0)
    assert len(table) == 10


def test_stuck_in_flight_entry_is_forgotten() -> None:
    table = DuplicateTable(reply_ttl=30, in_flight_ttl=300)
    table.begin(KEY, 0)
    assert table.begin(KEY, 301).seen is Seen.NEW
