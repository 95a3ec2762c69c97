"""Per-NAS prompt profiles through a real engine, in process (tests/auth/harness.py):
the NAS's wording and length, keywords that keep working whatever the wording, and
OpenVPN's static-challenge encoding (SCRV1) in append mode."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.otp.backup_codes import generate_codes
from tests.auth.harness import SECRET, Harness, password

ACCEPT, REJECT, CHALLENGE = Outcome.ACCEPT, Outcome.REJECT, Outcome.CHALLENGE


def clients(**extra: dict[str, Any]) -> dict[str, Any]:
    """The harness's `vpn` client with `extra` settings, and more clients by name."""
    listed = [
        {"name": "vpn", "address": ["127.0.0.1/32"], "secret": SECRET, **extra.pop("vpn", {})}
    ]
    for index, (name, settings) in enumerate(extra.items(), start=10):
        listed.append(
            {"name": name, "address": [f"127.0.0.{index}/32"], "secret": SECRET, **settings}
        )
    return {"clients": listed}


def message(answer: Answer) -> str:
    assert answer.reply_message is not None
    return answer.reply_message


def with_backup_codes(h: Harness, user: str) -> list[str]:
    codes = generate_codes(3)
    h.store.replace_backup_codes(user, codes, h.clock.now)
    return codes


async def test_the_short_profile_keeps_every_prompt_on_one_line_of_80(tmp_path: Path) -> None:
    overrides = {
        **clients(vpn={"prompts": "short"}),
        "multifactor": {"alternate": ["backup_codes", "email"]},
    }
    async with Harness(tmp_path, overrides) as h:
        h.enrol_totp("alice")
        with_backup_codes(h, "alice")
        first = await h.send("alice", password("alice"))
        assert first.outcome is CHALLENGE
        assert message(first) == "Authenticator code (or backup, email, reset)"
        retry = await h.send("alice", "000000", first.state)
        assert message(retry) == "Wrong code. Authenticator code (or backup, email, reset)"
        backup = await h.send("alice", "backup", retry.state)  # the keyword still works
        assert (backup.outcome, message(backup)) == (CHALLENGE, "Backup code")
        for answer in (first, retry, backup):
            assert len(message(answer)) <= 80 and "\n" not in message(answer)


async def test_keywords_stay_the_words_typed_whatever_the_wording(tmp_path: Path) -> None:
    templates = {"totp": "Passcode bitte{options}", "options": " / {keywords}"}
    overrides = {**clients(vpn={"prompts": {"templates": templates}})}
    async with Harness(tmp_path, overrides) as h:
        h.enrol_totp("alice")
        codes = with_backup_codes(h, "alice")
        first = await h.send("alice", password("alice"))
        assert message(first) == "Passcode bitte / backup, reset"
        asked = await h.send("alice", "BACKUP", first.state)
        assert asked.outcome is CHALLENGE and asked.reason == "backup_prompt"
        done = await h.send("alice", codes[0], asked.state)
        assert (done.outcome, done.reason) == (ACCEPT, "mfa_backup_code_ok")


async def test_the_openvpn_profile_starts_only_the_first_prompt_with_otp(tmp_path: Path) -> None:
    async with Harness(tmp_path, clients(vpn={"prompts": "openvpn"})) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        # auth-pam answers a PAM query that starts with its configured name (`otp`).
        assert message(first).lower().startswith("otp")
        retry = await h.send("alice", "000000", first.state)
        # A follow-up does not: auth-pam ends the conversation instead of sending the
        # same static response again (one wrong code would be counted twice).
        assert retry.outcome is CHALLENGE and not message(retry).lower().startswith("otp")


async def test_attempts_left_and_method_fill_a_template(tmp_path: Path) -> None:
    templates = {"totp": "{method} code, {attempts_left} tries", "retry": "No. {prompt}"}
    overrides = {
        **clients(vpn={"prompts": {"templates": templates}}),
        "multifactor": {"challenge": {"attempts": 3}},
    }
    async with Harness(tmp_path, overrides) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        assert message(first).startswith("totp code, 3 tries")
        retry = await h.send("alice", "000000", first.state)
        assert message(retry).startswith("No. totp code, 3 tries")


async def test_options_are_dropped_before_a_prompt_is_cut(tmp_path: Path) -> None:
    overrides = clients(vpn={"max_prompt": 48})
    async with Harness(tmp_path, overrides) as h:
        h.enrol_totp("alice")
        with_backup_codes(h, "alice")
        first = await h.send("alice", password("alice"))
        # 42 characters of prompt, and " (or type backup, reset)" would not fit in 48.
        assert message(first) == "Enter the code from your authenticator app"


async def test_every_reply_message_to_a_client_is_cut_at_its_max_prompt(tmp_path: Path) -> None:
    # (check-config would refuse prompts this short; the engine cuts them all the same)
    overrides = {
        **clients(vpn={"max_prompt": 20}),
        "multifactor": {"lockout": {"max_failures": 1}},
        "replies": {"reject_message": "Authentication failed"},
    }
    async with Harness(tmp_path, overrides) as h:
        h.enrol_totp("alice")
        first = await h.send("alice", password("alice"))
        assert len(message(first)) <= 20
        locked = await h.send("alice", "000000", first.state)
        assert locked.outcome is REJECT
        assert message(locked) == "Too many failed a..."  # cut, and it says so


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def scrv1(secret: str, response: str) -> str:
    return f"SCRV1:{b64(secret)}:{b64(response)}"


OPENVPN = {"second_factor": "append", "append_format": "scrv1", "prompts": "openvpn"}


async def test_scrv1_carries_the_password_and_the_code(tmp_path: Path) -> None:
    async with Harness(tmp_path, clients(vpn=OPENVPN)) as h:
        h.enrol_totp("alice")
        ok = await h.send("alice", scrv1(password("alice"), h.code("alice")))
        assert (ok.outcome, ok.reason) == (ACCEPT, "mfa_code_ok")
        h.clock.advance(60)
        wrong = await h.send("alice", scrv1(password("alice"), "000000"))
        assert (wrong.outcome, wrong.reason) == (REJECT, "totp_bad_code")
        bad_password = await h.send("alice", scrv1("guess", h.code("alice")))
        assert bad_password.outcome is REJECT and bad_password.reason != "mfa_code_ok"
        # An empty response is no code: nothing to accept on.
        empty = await h.send("alice", scrv1(password("alice"), ""))
        assert (empty.outcome, empty.reason) == (REJECT, "code_missing")


async def test_a_password_not_in_scrv1_form_is_read_as_plain(tmp_path: Path) -> None:
    async with Harness(tmp_path, clients(vpn=OPENVPN)) as h:
        h.enrol_totp("alice")
        plain = await h.send("alice", f"{password('alice')},{h.code('alice')}")
        assert plain.outcome is ACCEPT
        h.clock.advance(60)
        # Broken base64 is not SCRV1: the whole text is the password, which is wrong.
        broken = f"SCRV1:{password('alice')}:{h.code('alice')}"
        assert (await h.send("alice", broken)).outcome is REJECT


async def test_scrv1_is_only_read_where_configured(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:  # `legacy` appends, plainly
        h.enrol_totp("alice")
        answer = await h.send("alice", scrv1(password("alice"), h.code("alice")), client="legacy")
        assert answer.outcome is REJECT
