"""The local users file checker: argon2id costs, hashes verified at their own cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from argon2 import PasswordHasher, extract_parameters
from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.admission.pool import PoolClosed
from mfaproxy.core.primary import PrimaryOutcome
from mfaproxy.directory.local import (
    COSTS,
    DEFAULT_COST,
    INLINE_MAX_KIB_PASSES,
    HashCost,
    LocalChecker,
    cost_of,
    hash_password,
    load_users_file,
    parse_cost,
    typical_cost,
    verified_inline,
)
from mfaproxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
# Cheap costs keep the tests fast; what matters is that they differ.
LOW = HashCost(time_cost=1, memory_kib=64, parallelism=1)
OTHER = HashCost(time_cost=2, memory_kib=128, parallelism=2)


def write_users(path: Path, users: dict[str, str]) -> Path:
    document = {"users": {name: {"password_hash": value} for name, value in users.items()}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_default_cost_is_owasp_minimum_for_argon2id() -> None:
    # OWASP Password Storage Cheat Sheet: m = 19 MiB, t = 2, p = 1 at least.
    assert HashCost(time_cost=2, memory_kib=19456, parallelism=1) == DEFAULT_COST
    params = extract_parameters(hash_password("pw"))
    assert (params.memory_cost, params.time_cost, params.parallelism) == (19456, 2, 1)
    assert params.type.name == "ID"


@pytest.mark.parametrize("name", sorted(COSTS))
def test_named_costs_parse(name: str) -> None:
    assert parse_cost(name) is COSTS[name]


def test_explicit_cost_parses() -> None:
    assert parse_cost("m=65536,t=3,p=4") == HashCost(3, 65536, 4)
    assert parse_cost("m = 1024, t = 1, p = 1") == HashCost(1, 1024, 1)


@pytest.mark.parametrize(
    "text", ["", "fast", "m=7,t=1,p=1", "m=64,t=0,p=1", "m=64,t=1,p=0", "m=64,t=1,p=9", "t=1"]
)
def test_bad_cost_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="cost"):
        parse_cost(text)


@given(st.text(max_size=40))
def test_parse_cost_never_raises_anything_but_value_error(text: str) -> None:
    try:
        cost = parse_cost(text)
    except ValueError:
        return
    assert cost.memory_kib >= 8 * cost.parallelism


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "empty"), ("\n# all users removed\n", "empty"), ("users:\n  bob: \udcff\n", "not UTF-8")],
)
def test_an_empty_or_undecodable_users_file_is_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    """A truncated file must not load as "no users" (every login rejected after a
    reload); `users: {}` says that on purpose."""
    path = tmp_path / "users.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as caught:
        load_users_file(path)
    assert caught.value.problems[0].startswith(f"{path}: {problem}")
    path.write_text("users: {}\n")
    assert load_users_file(path) == {}


async def test_hashes_verify_at_their_own_cost(tmp_path: Path) -> None:
    # A file written by an older release (argon2-cffi's default cost) keeps working
    # next to hashes made at today's default or at any other cost.
    old = PasswordHasher(time_cost=1, memory_cost=256, parallelism=4).hash("old-pw")
    users = {"old": old, "low": hash_password("low-pw", LOW), "other": hash_password("o-pw", OTHER)}
    checker = LocalChecker(write_users(tmp_path / "users.yaml", users))
    try:
        for name, password in (("old", "old-pw"), ("low", "low-pw"), ("other", "o-pw")):
            good = await checker.authenticate(name, password)
            assert good.outcome is PrimaryOutcome.ACCEPT, name
            bad = await checker.authenticate(name, password + "x")
            assert bad.outcome is PrimaryOutcome.REJECT, name
    finally:
        await checker.close()


async def test_unknown_user_costs_what_most_users_cost(tmp_path: Path) -> None:
    users = {f"u{i}": hash_password("pw", LOW) for i in range(3)} | {
        "x": hash_password("pw", OTHER)
    }
    path = write_users(tmp_path / "users.yaml", users)
    checker = LocalChecker(path)
    try:
        assert cost_of(checker._dummy_hash) == LOW
        result = await checker.authenticate("nobody", "pw")
        assert result.reason == "no_such_user"
    finally:
        await checker.close()
    assert typical_cost({}) == DEFAULT_COST


async def test_a_hash_cheaper_than_a_thread_hop_is_verified_without_the_pool(
    tmp_path: Path,
) -> None:
    """With the hash pool closed, a file of hashes at or below INLINE_MAX_KIB_PASSES
    still answers (verified on the loop, rightly); one at the default cost cannot."""
    tiny = HashCost(time_cost=1, memory_kib=8, parallelism=1)
    cheap = {"ann": hash_password("ann-pw", tiny), "ben": hash_password("ben-pw", LOW)}
    checker = LocalChecker(write_users(tmp_path / "cheap.yaml", cheap))
    await checker._pool.close()
    assert (await checker.authenticate("ann", "ann-pw")).outcome is PrimaryOutcome.ACCEPT
    assert (await checker.authenticate("ben", "ann-pw")).reason == "bad_password"
    assert (await checker.authenticate("nobody", "ann-pw")).reason == "no_such_user"
    costly = {"cat": hash_password("cat-pw", DEFAULT_COST)}
    checker = LocalChecker(write_users(tmp_path / "costly.yaml", costly))
    await checker._pool.close()
    with pytest.raises(PoolClosed):
        await checker.authenticate("cat", "cat-pw")
    with pytest.raises(PoolClosed):  # the dummy hash of an unknown user too
        await checker.authenticate("nobody", "cat-pw")


@pytest.mark.parametrize(
    ("cost", "inline"),
    [
        (HashCost(1, 8, 1), True),
        (HashCost(1, INLINE_MAX_KIB_PASSES, 1), True),
        (HashCost(2, INLINE_MAX_KIB_PASSES, 1), False),
        (HashCost(1, INLINE_MAX_KIB_PASSES + 8, 1), False),
        (DEFAULT_COST, False),
    ],
)
def test_only_hashes_within_the_inline_bound_skip_the_pool(cost: HashCost, inline: bool) -> None:
    assert verified_inline(hash_password("pw", cost)) is inline


def test_an_unparsable_hash_is_never_verified_inline() -> None:
    assert not verified_inline("$argon2id$v=19$m=8,t=1,p=1")
    assert not verified_inline("not a hash")


def run_hash_password(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfaproxy", "users", "hash-password", *args],
        input="hunter2\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_hash_password_cost_option() -> None:
    done = run_hash_password("--cost", "m=1024,t=1,p=2")
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip()
    assert cost_of(digest) == HashCost(1, 1024, 2)
    assert PasswordHasher().verify(digest, "hunter2")


def test_hash_password_refuses_a_bad_cost() -> None:
    done = run_hash_password("--cost", "m=1,t=1,p=1")
    assert done.returncode == 2
    assert "--cost" in done.stderr
    assert done.stdout == ""
