"""The second-factor stage through a real engine, in process (tests/auth/harness.py):
each rule of the state machine as a login sees it."""

from __future__ import annotations

from pathlib import Path

from mfaproxy.core.answer import Outcome
from mfaproxy.core.session import STATE_LENGTH, is_well_formed_state
from mfaproxy.otp.backup_codes import generate_codes
from tests.auth.harness import Harness, password

ACCEPT, REJECT, CHALLENGE = Outcome.ACCEPT, Outcome.REJECT, Outcome.CHALLENGE


async def test_password_then_code_then_accept(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        assert first.outcome is CHALLENGE and first.reply_message is not None
        assert "authenticator app" in first.reply_message
        final = await h.send("alice", h.code("alice"), first.state)
        assert (final.outcome, final.reason) == (ACCEPT, "mfa_code_ok")


async def test_a_wrong_code_is_asked_again_with_a_fresh_state_then_rejected(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        retry = await h.send("alice", "000000", first.state)
        assert retry.outcome is CHALLENGE and retry.reason == "retry"
        assert retry.state != first.state
        assert retry.reply_message is not None and retry.reply_message.startswith("Wrong code")
        second = await h.send("alice", "000001", retry.state)
        assert second.outcome is CHALLENGE
        assert second.reply_message is not None
        assert second.reply_message.count("Wrong code") == 1  # not stacked up
        last = await h.send("alice", "000002", second.state)
        assert (last.outcome, last.reason) == (REJECT, "totp_bad_code")
        record = h.store.get_user("alice")
        assert record is not None and record.failures == 3


async def test_a_state_is_single_use(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        assert (await h.send("alice", h.code("alice"), first.state)).outcome is ACCEPT
        again = await h.send("alice", h.code("alice", 1), first.state)
        assert (again.outcome, again.reason) == (REJECT, "unknown_state")


async def test_a_state_expires(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        h.clock.advance(h.config.multifactor.challenge.timeout_seconds + 1)
        late = await h.send("alice", h.code("alice"), first.state)
        assert (late.outcome, late.reason) == (REJECT, "unknown_state")


async def test_a_state_is_bound_to_its_user(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        h.enrol_totp("carol")
        first = await h.send("alice", password("alice"))
        other = await h.send("carol", h.code("carol"), first.state)
        assert (other.outcome, other.reason) == (REJECT, "state_mismatch")


async def test_lockout_after_max_failures_then_unlock(tmp_path: Path) -> None:
    async with Harness(tmp_path, {"multifactor": {"lockout": {"max_failures": 3}}}) as h:
        h.enrol_totp("alice")
        reply = await h.login("alice", password("alice"), "000000", "000001", "000002")
        assert (reply.outcome, reply.reason) == (REJECT, "locked_out")
        locked = await h.send("alice", password("alice"))
        assert (locked.outcome, locked.reason) == (REJECT, "locked_out")
        h.clock.advance(h.config.multifactor.lockout.lockout_seconds)
        assert (await h.login("alice", password("alice"), h.code("alice"))).outcome is ACCEPT


async def test_backup_codes_by_keyword_or_typed_directly_once_each(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        codes = generate_codes(2)
        h.store.replace_backup_codes("alice", codes, h.clock.now)
        first = await h.send("alice", password("alice"))
        assert first.reply_message is not None and "backup" in first.reply_message
        asked = await h.send("alice", "backup", first.state)
        assert asked.outcome is CHALLENGE and asked.reason == "backup_prompt"
        used = await h.send("alice", codes[0], asked.state)
        assert (used.outcome, used.reason) == (ACCEPT, "mfa_backup_code_ok")
        direct = await h.login("alice", password("alice"), codes[1])
        assert direct.outcome is ACCEPT
        again = await h.login("alice", password("alice"), codes[0])
        assert again.outcome is not ACCEPT


async def test_a_wrong_backup_code_at_a_code_prompt_asks_for_a_backup_code(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        h.store.replace_backup_codes("alice", generate_codes(1), h.clock.now)
        first = await h.send("alice", password("alice"))
        wrong = await h.send("alice", generate_codes(1)[0], first.state)
        assert wrong.outcome is CHALLENGE and wrong.reply_message is not None
        assert "backup codes" in wrong.reply_message and wrong.reason == "retry"


async def test_append_mode(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        ok = await h.send("alice", f"{password('alice')},{h.code('alice')}", client="legacy")
        assert (ok.outcome, ok.reason) == (ACCEPT, "mfa_code_ok")
        missing = await h.send("alice", password("alice"), client="legacy")
        assert (missing.outcome, missing.reason) == (REJECT, "code_missing")
        wrong = await h.send("alice", f"{password('alice')},000000", client="legacy")
        assert (wrong.outcome, wrong.reason) == (REJECT, "totp_bad_code")


async def test_inline_enrolment_for_configure_later(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.store.set_method("carol", "totp", h.clock.now, configure_later=True)
        h.store.open_enrolment("carol", h.clock.now + 3600, h.clock.now)
        first = await h.send("carol", password("carol"))
        assert first.outcome is CHALLENGE and first.reply_message is not None
        key = first.reply_message.split(": ", 1)[1].split(" then")[0].replace(" ", "")
        h.totp_secrets["carol"] = key
        done = await h.send("carol", h.code("carol"), first.state)
        assert (done.outcome, done.reason) == (ACCEPT, "mfa_enrolled")
        record = h.store.get_user("carol")
        assert record is not None and record.method == "totp" and "totp" in record.enrolled


async def test_a_required_user_without_a_method_is_refused(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        reply = await h.send("carol", password("carol"))
        assert (reply.outcome, reply.reason) == (REJECT, "not_enrolled")
        assert reply.reply_message is not None and "not set up" in reply.reply_message


async def test_reset_is_recorded(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        reply = await h.login("alice", password("alice"), "reset")
        assert (reply.outcome, reply.reason) == (REJECT, "reset_requested")
        assert [r.user for r in h.store.list_resets()] == ["alice"]


async def test_a_wrong_password_never_reaches_the_second_factor(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        reply = await h.send("alice", "not-the-password")
        assert reply.outcome is REJECT and reply.state is None


async def test_a_state_a_client_trimmed_is_refused_and_the_real_one_still_works(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        assert first.state is not None
        for cut in range(1, STATE_LENGTH):  # every prefix a client could leave
            trimmed = await h.send("alice", h.code("alice"), first.state[:-cut])
            assert (trimmed.outcome, trimmed.reason) == (REJECT, "malformed_state")
        assert (await h.send("alice", h.code("alice"), first.state)).outcome is ACCEPT


async def test_every_state_issued_is_printable_without_nul(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.enrol_totp("alice")
        for _ in range(50):
            reply = await h.send("alice", password("alice"))
            assert reply.state is not None and is_well_formed_state(reply.state)
            assert b"\x00" not in reply.state


async def test_backup_codes_for_a_user_with_no_method_yet(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        codes = generate_codes(2)
        h.store.replace_backup_codes("carol", codes, h.clock.now)
        first = await h.send("carol", password("carol"))
        assert first.outcome is CHALLENGE and first.reply_message is not None
        assert "backup codes" in first.reply_message
        wrong = await h.send("carol", generate_codes(1)[0], first.state)
        assert wrong.outcome is CHALLENGE and wrong.reason == "retry"
        done = await h.send("carol", codes[0], wrong.state)
        assert (done.outcome, done.reason) == (ACCEPT, "mfa_backup_code_ok")
        appended = await h.send("carol", f"{password('carol')},{codes[1]}", client="legacy")
        assert (appended.outcome, appended.reason) == (ACCEPT, "mfa_backup_code_ok")
        # all used up: back to "not set up"
        spent = await h.send("carol", password("carol"))
        assert (spent.outcome, spent.reason) == (REJECT, "not_enrolled")
