"""The master key file and authenticated encryption of per-user secrets at rest.

The master key is 32 random bytes in a file only its owner may read or write. It is
created on first start (atomically, so a crash or a second process starting at the same
moment never leaves a short or half-written key behind) and refused, never repaired,
when its mode or length is wrong: a key other users could read protects nothing, and a
silently regenerated key would make every stored secret undecryptable.

`SecretBox` seals one record with AES-256-GCM (NIST SP 800-38D). A fresh random 96-bit
nonce per seal stays far below the 2**32 messages per key that section 8.3 allows. The
record id (for instance ``"alice:totp"``) is the associated data, so a ciphertext copied
into another user's row, or into another field of the same user, does not decrypt.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mfaproxy.errors import DecryptionError, KeyFileError
from mfaproxy.store.ownership import give_to_directory_owner

KEY_BYTES = 32
_NONCE_BYTES = 12  # 96 bits: the IV length GCM is specified for (SP 800-38D section 5.2.1.1)
_TAG_BYTES = 16
_VERSION_1 = b"\x01"
# The AES key is derived from the master key rather than being the master key itself, so
# that other uses of the master key (the backup-code pepper) never share key material.
_SEAL_INFO = b"mfaproxy secrets at rest v1"


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """Return the 32-byte master key at `path`, creating it when the file is absent."""
    key_path = Path(path)
    if not key_path.exists():
        _create_key_file(key_path)
    return _read_key_file(key_path)


def key_file_problem(path: str | os.PathLike[str]) -> str | None:
    """What would stop `load_or_create_key` at start, without creating anything: an
    existing file that is unusable. An absent file is fine (it is created then)."""
    key_path = Path(path)
    if not key_path.exists():
        return None
    try:
        _read_key_file(key_path)
    except KeyFileError as exc:
        return exc.problems[0]
    return None


def _create_key_file(path: Path) -> None:
    # The parent may hold the SQLite store too: keep it private when we create it.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed owner bits; never added any
        give_to_directory_owner(fd, temp)  # root's CLI must not leave a root-owned key
        _write_all(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails when the target exists: exclusive and atomic, so two processes
        # starting together agree on one key and nobody ever sees a partial file.
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()
    _fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    # Without this the new directory entry itself can be lost on a crash.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(path, f"cannot open: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)  # of the opened file, so a swapped path cannot fool the check
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(path, "is not a regular file")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise KeyFileError(
                path, f"mode {mode:04o} lets group or others access it; run chmod 600 on it"
            )
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        found = f"more than {KEY_BYTES}" if len(data) > KEY_BYTES else str(len(data))
        raise KeyFileError(path, f"must hold exactly {KEY_BYTES} bytes, found {found}")
    return data


def derive_key(master_key: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """An independent subkey of the master key for one purpose (HKDF, RFC 5869)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info)
    return hkdf.derive(master_key)


class SecretBox:
    """Seal and open per-record secrets with AES-256-GCM bound to the record id.

    Blob layout: version byte (1) | nonce (12) | ciphertext | tag (16). The version byte
    is also authenticated (it is part of the associated data), so a future format can be
    introduced without old blobs being misread as new ones.
    """

    def __init__(self, key: bytes, info: bytes = _SEAL_INFO) -> None:
        # `info` names the purpose (HKDF, RFC 5869 section 3.2): boxes made with
        # different ones have independent keys, so a blob of one never opens in another.
        if len(key) != KEY_BYTES:
            raise ValueError(f"master key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(derive_key(key, info))

    def seal(self, record_id: str, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _associated(_VERSION_1, record_id))
        return _VERSION_1 + nonce + sealed

    def open(self, record_id: str, blob: bytes) -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES:
            raise DecryptionError(f"record {record_id!r}: sealed value is truncated")
        version, nonce, sealed = blob[:1], blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        if version != _VERSION_1:
            raise DecryptionError(f"record {record_id!r}: unknown format version {version[0]}")
        try:
            return self._aead.decrypt(nonce, sealed, _associated(version, record_id))
        except InvalidTag:
            raise DecryptionError(
                f"record {record_id!r}: does not decrypt (wrong key, altered, or moved)"
            ) from None


def _associated(version: bytes, record_id: str) -> bytes:
    # surrogatepass: a record id may hold a name taken from a packet; for every valid
    # string the bytes are plain UTF-8, so existing blobs keep opening.
    return version + record_id.encode("utf-8", "surrogatepass")
