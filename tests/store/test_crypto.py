"""The master key file and SecretBox."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mfaproxy.errors import ConfigError, DecryptionError, KeyFileError
from mfaproxy.store.crypto import KEY_BYTES, SecretBox, load_or_create_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "master.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert path.read_bytes() == key
    # no temporary file is left next to it
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]


def test_existing_key_is_loaded_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first


def test_key_created_under_restrictive_umask_is_readable(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        key = load_or_create_key(tmp_path / "master.key")
    finally:
        os.umask(old)
    assert load_or_create_key(tmp_path / "master.key") == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_key_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    load_or_create_key(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600") as caught:
        load_or_create_key(path)
    assert isinstance(caught.value, ConfigError)
    assert str(path) in caught.value.problems[0]


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_key_of_wrong_length_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="exactly 32 bytes"):
        load_or_create_key(path)


def test_key_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create_key(path)


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(bytes(range(32)))


def test_seal_open_round_trip(box: SecretBox) -> None:
    blob = box.seal("alice:totp", b"JBSWY3DPEHPK3PXP")
    assert blob[0] == 1  # version byte
    assert b"JBSWY3DPEHPK3PXP" not in blob
    assert box.open("alice:totp", blob) == b"JBSWY3DPEHPK3PXP"


def test_each_seal_uses_a_fresh_nonce(box: SecretBox) -> None:
    assert box.seal("alice:totp", b"same") != box.seal("alice:totp", b"same")


def test_empty_plaintext_round_trips(box: SecretBox) -> None:
    assert box.open("bob:email", box.seal("bob:email", b"")) == b""


@pytest.mark.parametrize("index", [0, 1, 12, 13, -1])
def test_tampered_blob_fails(box: SecretBox, index: int) -> None:
    blob = bytearray(box.seal("alice:totp", b"secret"))
    blob[index] ^= 0x01
    with pytest.raises(DecryptionError):
        box.open("alice:totp", bytes(blob))


def test_blob_moved_to_another_record_fails(box: SecretBox) -> None:
    blob = box.seal("alice:totp", b"secret")
    with pytest.raises(DecryptionError, match="bob:totp"):
        box.open("bob:totp", blob)
    with pytest.raises(DecryptionError):
        box.open("alice:email", blob)


def test_truncated_blob_fails(box: SecretBox) -> None:
    with pytest.raises(DecryptionError, match="truncated"):
        box.open("alice:totp", box.seal("alice:totp", b"x")[:20])


def test_other_key_cannot_open(box: SecretBox) -> None:
    blob = box.seal("alice:totp", b"secret")
    with pytest.raises(DecryptionError):
        SecretBox(bytes(32)).open("alice:totp", blob)


def test_key_length_is_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(b"short")
