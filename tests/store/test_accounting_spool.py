"""The accounting spool file (store/accounting_spool.py): bounded appends, leases that
keep two readers off one record, deletion only on acknowledgement, expiry, and rows
edited, moved, forged or corrupted on disk, which are rejected, never trusted and
never a traceback. Two processes append to one file at once and neither overfills it."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfaproxy.errors import SpoolUnavailable
from mfaproxy.store.accounting_spool import (
    AccountingSpool,
    RejectedRow,
    SpooledRecord,
    SpoolEntry,
)

KEY = bytes(range(32))
NOW = 1_700_000_000.0


def entry(n: int, received: float = NOW) -> SpoolEntry:
    return SpoolEntry(f"req-{n}", "nas", "start", received, bytes([44, 4]) + f"{n:02d}".encode())


@pytest.fixture
def spool(tmp_path: Path) -> Any:
    made = AccountingSpool(tmp_path / "spool.sqlite3", KEY)
    yield made
    made.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def opened(rows: list[SpooledRecord | RejectedRow]) -> list[SpooledRecord]:
    return [r for r in rows if isinstance(r, SpooledRecord)]


def test_records_come_back_oldest_first_and_only_an_acknowledgement_deletes_them(
    spool: AccountingSpool,
) -> None:
    assert len(spool.append([entry(1), entry(2), entry(3)], max_records=10)) == 3
    claimed = opened(spool.claim(NOW, limit=2, lease_seconds=5))
    assert [r.entry for r in claimed] == [entry(1), entry(2)]
    spool.retry([claimed[1].row], next_try=NOW + 10)
    spool.acknowledge([claimed[0].row])
    assert spool.stats() == (2, NOW)
    # Record 2 backs off; record 3 is due.
    third = opened(spool.claim(NOW + 1, 10, 5))
    assert [r.entry for r in third] == [entry(3)]
    spool.acknowledge([third[0].row])
    later = opened(spool.claim(NOW + 11, 10, 5))
    assert [(r.entry, r.attempts) for r in later] == [(entry(2), 1)]


def test_a_leased_record_is_skipped_by_another_reader_until_its_lease_runs_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite3"
    one, two = AccountingSpool(path, KEY), AccountingSpool(path, KEY)
    try:
        one.append([entry(1), entry(2)], 10)
        first = opened(one.claim(NOW, 1, lease_seconds=5))
        second = opened(two.claim(NOW, 10, lease_seconds=5))
        assert [r.entry for r in first] == [entry(1)]
        assert [r.entry for r in second] == [entry(2)]
        assert two.claim(NOW + 4, 10, 5) == []  # both leased
        two.acknowledge([second[0].row])
        # The first holder died: after its lease, the other reader takes the record.
        assert [r.entry for r in opened(two.claim(NOW + 5, 10, 5))] == [entry(1)]
    finally:
        one.close()
        two.close()


def test_the_bound_refuses_what_does_not_fit_and_deletion_makes_room(
    spool: AccountingSpool,
) -> None:
    assert len(spool.append([entry(1), entry(2)], max_records=3)) == 2
    assert len(spool.append([entry(3), entry(4), entry(5)], max_records=3)) == 1
    assert len(spool.append([entry(6)], max_records=3)) == 0
    assert spool.stats()[0] == 3
    rows = opened(spool.claim(NOW, 10, 5))
    assert [r.entry for r in rows] == [entry(1), entry(2), entry(3)]
    spool.acknowledge([rows[0].row])
    assert len(spool.append([entry(6), entry(7)], max_records=3)) == 1


def test_expiry_deletes_old_records_and_names_them(spool: AccountingSpool) -> None:
    spool.append([entry(1, NOW - 100), entry(2, NOW - 10)], 10)
    expired = spool.expire(cutoff=NOW - 50)
    assert [(e.request_id, e.status_type, e.received) for e in expired] == [
        ("req-1", "start", NOW - 100)
    ]
    assert spool.stats() == (1, NOW - 10)


def test_a_removed_or_edited_size_counter_is_recounted(spool: AccountingSpool) -> None:
    spool.append([entry(1), entry(2)], 10)
    with raw(spool.path) as conn:
        conn.execute("DELETE FROM spool_size")
    assert spool.stats()[0] == 2
    with raw(spool.path) as conn:
        conn.execute("UPDATE spool_size SET records = -5")
    assert len(spool.append([entry(3), entry(4)], max_records=3)) == 1


# --------------------------------------------------------------------------- tampering


def tamper(path: Path, sql: str, *args: Any) -> None:
    with raw(path) as conn:
        conn.execute(sql, args)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        # A byte of the sealed record flipped.
        (
            "UPDATE spool SET sealed = CAST(substr(sealed, 1, 20) || X'00' ||"
            " substr(sealed, 22) AS BLOB) WHERE request_id = 'req-1'",
            "unauthentic",
        ),
        # Another row's sealed record moved onto this one.
        (
            "UPDATE spool SET sealed = (SELECT sealed FROM spool WHERE request_id = 'req-2')"
            " WHERE request_id = 'req-1'",
            "unauthentic",
        ),
        # A plain column changed: older (a larger Acct-Delay-Time), another status type.
        ("UPDATE spool SET received = received - 3600 WHERE request_id = 'req-1'", "unauthentic"),
        ("UPDATE spool SET status_type = 'stop' WHERE request_id = 'req-1'", "unauthentic"),
        # Columns of the wrong type, and garbage.
        ("UPDATE spool SET sealed = 'text' WHERE request_id = 'req-1'", "malformed"),
        ("UPDATE spool SET received = 'x' WHERE request_id = 'req-1'", "malformed"),
        ("UPDATE spool SET sealed = X'01' WHERE request_id = 'req-1'", "unauthentic"),
    ],
)
def test_a_tampered_row_is_rejected_and_the_others_still_open(
    spool: AccountingSpool, sql: str, reason: str
) -> None:
    spool.append([entry(1), entry(2)], 10)
    tamper(spool.path, sql)
    rows = spool.claim(NOW + 10_000, 10, 5)
    assert [r.reason for r in rows if isinstance(r, RejectedRow)] == [reason]
    assert [r.entry for r in opened(rows)] == [entry(2)]


def test_a_forged_row_and_a_duplicated_row_do_not_open(spool: AccountingSpool) -> None:
    spool.append([entry(1)], 10)
    with raw(spool.path) as conn:
        # A row written by someone without the key.
        conn.execute(
            "INSERT INTO spool (token, request_id, status_type, received, sealed, next_try)"
            " VALUES ('forged', 'req-9', 'start', ?, ?, 0)",
            (NOW, bytes(64)),
        )
        # A copy of a genuine row under a new token (the same token is refused: UNIQUE).
        conn.execute(
            "INSERT INTO spool (token, request_id, status_type, received, sealed, next_try)"
            " SELECT token || 'x', request_id, status_type, received, sealed, 0 FROM spool"
            " WHERE request_id = 'req-1'"
        )
    rows = spool.claim(NOW, 10, 5)
    assert [r.entry for r in opened(rows)] == [entry(1)]
    assert sorted(r.reason for r in rows if isinstance(r, RejectedRow)) == ["unauthentic"] * 2


COLUMNS = ("token", "request_id", "status_type", "received", "sealed", "attempts")
VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=120),
)


@settings(max_examples=150, suppress_health_check=list(HealthCheck), deadline=None)
@given(column=st.sampled_from(COLUMNS), value=VALUES)
def test_any_value_in_any_column_is_rejected_or_opens_unchanged_never_raises(
    tmp_path_factory: pytest.TempPathFactory, column: str, value: object
) -> None:
    spool = AccountingSpool(tmp_path_factory.mktemp("fuzz") / "spool.sqlite3", KEY)
    try:
        spool.append([entry(1)], 10)
        try:
            tamper(spool.path, f"UPDATE spool SET {column} = ?", value)
        except sqlite3.IntegrityError:
            return  # NOT NULL: the file refuses it
        rows = spool.claim(NOW + 10**9, 10, 5) if column != "attempts" else spool.claim(NOW, 10, 5)
        for row in rows:
            assert isinstance(row, RejectedRow) or row.entry == entry(1)
        spool.stats()
        spool.expire(NOW - 1)
    finally:
        spool.close()


def test_a_file_that_is_not_a_spool_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    path.write_bytes(b"not a database at all, but long enough to be read as one" * 100)
    with pytest.raises(SpoolUnavailable):
        AccountingSpool(path, KEY)


# --------------------------------------------------------------------------- processes


def _append_many(path: str, first: int, count: int, start: Any, kept: Any) -> None:
    spool = AccountingSpool(path, KEY)
    start.wait()
    total = 0
    for n in range(first, first + count, 5):
        total += len(spool.append([entry(i) for i in range(n, n + 5)], max_records=300))
    kept.put(total)
    spool.close()


def test_two_processes_appending_at_once_never_overfill_the_spool(tmp_path: Path) -> None:
    path = str(tmp_path / "spool.sqlite3")
    AccountingSpool(path, KEY).close()
    context = multiprocessing.get_context("spawn")
    start, kept = context.Event(), context.Queue()
    workers = [
        context.Process(target=_append_many, args=(path, i * 1000, 250, start, kept))
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    start.set()
    totals = [kept.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sum(totals) == 300  # 500 offered, exactly the bound kept
    spool = AccountingSpool(path, KEY)
    try:
        assert spool.stats()[0] == 300
        assert len(opened(spool.claim(NOW, 1000, 5))) == 300
    finally:
        spool.close()
