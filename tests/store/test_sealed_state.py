"""Sealed state (store/sealed.py) under attack: someone who can write to the state store
edits, moves, forges or replays stored values. Each is rejected (absent to the caller),
counted in `mfaproxy_state_rejected_total` and logged without the key or the value.

The edits are the strongest an attacker without the key can make: AES-GCM encrypts
in counter mode, so flipping ciphertext bits flips the same plaintext bits. Each test
edit is first shown to produce exactly the intended plaintext when the tag is not
checked (`unchecked_plaintext`), so only the authentication stops it. A real
redis-server is the store; the memory store gets the same checks through the wrapper.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from mfaproxy.config.stores import RedisSettings
from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult
from mfaproxy.core.second_factor import Stage
from mfaproxy.core.session import Session, primary_to_json
from mfaproxy.observability import metrics
from mfaproxy.store.crypto import derive_key
from mfaproxy.store.redis_state import RedisStateStore
from mfaproxy.store.sealed import SEAL_INFO, Rejected, SealedStateStore, record_id
from mfaproxy.store.state import MemoryStateStore, StateStore
from tests.support.redis_server import RedisServer

NOW = 1_700_000_000.0
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
STATE = "a1" * 24
PREFIX = "sealtest"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
ATTACKER_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"


def session(stage: Stage = Stage.ENROL) -> dict[str, Any]:
    primary = PrimaryResult(
        PrimaryOutcome.ACCEPT, "local", "password_ok", groups=frozenset({"staff"}), identity="alice"
    )
    return Session(
        user="alice",
        login_name="alice",
        client="vpn",
        nas="127.0.0.1",
        stage=stage,
        method="totp",
        pending={"secret": SECRET},
        primary=primary_to_json(primary),
    ).to_json()


def rejected(reason: str, namespace: str = "challenge") -> float:
    value = metrics.REGISTRY.get_sample_value(
        "mfaproxy_state_rejected_total", {"namespace": namespace, "reason": reason}
    )
    return value or 0.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStateStore]:
    redis_server.flush()
    store = RedisStateStore(
        RedisSettings.model_validate({"url": redis_server.url, "key_prefix": PREFIX})
    )
    yield store
    await store.close()


# --------------------------------------------------------------------------- raw access


def raw_key(namespace: str, key: str) -> str:
    return f"{PREFIX}:{namespace}:v:{key}"


def read_raw(server: RedisServer, namespace: str, key: str) -> dict[str, Any]:
    client = server.client()
    try:
        raw = client.get(raw_key(namespace, key))
    finally:
        client.close()
    assert raw is not None
    stored: dict[str, Any] = json.loads(raw)
    return stored


def write_raw(server: RedisServer, namespace: str, key: str, stored: dict[str, Any]) -> None:
    client = server.client()
    try:
        client.set(raw_key(namespace, key), json.dumps(stored), px=3_600_000)
    finally:
        client.close()


def blob_of(envelope: dict[str, Any]) -> bytes:
    return base64.b64decode(envelope["sealed"])


def with_blob(blob: bytes) -> dict[str, Any]:
    return {"sealed": base64.b64encode(blob).decode()}


def unchecked_plaintext(blob: bytes, master_key: bytes = KEY) -> bytes:
    """Decrypt without checking the tag (GCM is CTR with the counter starting at 2,
    NIST SP 800-38D section 7.1): what a store without authentication would read."""
    key = derive_key(master_key, SEAL_INFO)
    nonce, body = blob[1:13], blob[13:-16]
    decryptor = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor()
    return decryptor.update(body) + decryptor.finalize()


def flip(blob: bytes, old: bytes, new: bytes, master_key: bytes = KEY) -> bytes:
    """Edit the ciphertext so the plaintext reads `new` where it read `old` (the
    attacker knows the layout; the key is used only to find the offset and to show
    that the edit is exact)."""
    assert len(old) == len(new)
    plaintext = unchecked_plaintext(blob, master_key)
    at = plaintext.index(old)
    edited = bytearray(blob)
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        edited[13 + at + i] ^= a ^ b
    result = bytes(edited)
    assert unchecked_plaintext(result, master_key) == plaintext.replace(old, new, 1)
    return result


# --------------------------------------------------------------------------- tests

FIELD_EDITS = [
    pytest.param(b'"user":"alice"', b'"user":"mallo"', id="user"),
    pytest.param(b'"groups":["staff"]', b'"groups":["admin"]', id="groups"),
    pytest.param(b'"stage":"enrol"', b'"stage":"backu"', id="stage"),
    pytest.param(SECRET.encode(), ATTACKER_SECRET.encode(), id="pending-secret"),
    pytest.param(b'"attempts":0', b'"attempts":9', id="attempts"),
]


@pytest.mark.parametrize(("old", "new"), FIELD_EDITS)
async def test_an_edited_session_field_is_rejected_and_counted(
    redis_server: RedisServer, redis_store: RedisStateStore, old: bytes, new: bytes
) -> None:
    store = SealedStateStore(redis_store, KEY)
    await store.put("challenge", STATE, session(), ttl=120, now=NOW)
    stored = read_raw(redis_server, "challenge", STATE)
    assert SECRET not in json.dumps(stored)  # sealed values are encrypted too
    stored["value"] = with_blob(flip(blob_of(stored["value"]), old, new))
    write_raw(redis_server, "challenge", STATE, stored)
    before = rejected("unauthentic")
    with capture_logs() as logs:
        assert await store.take("challenge", STATE, NOW + 1) is None
    assert rejected("unauthentic") == before + 1
    assert [e["event"] for e in logs] == ["state_value_rejected"]
    assert STATE not in repr(logs) and "alice" not in repr(logs)


async def test_an_untouched_session_opens(redis_store: RedisStateStore) -> None:
    store = SealedStateStore(redis_store, KEY)
    await store.put("challenge", STATE, session(), ttl=120, now=NOW)
    assert await store.take("challenge", STATE, NOW + 1) == session()


async def test_a_session_moved_to_another_state_or_namespace_is_rejected(
    redis_server: RedisServer, redis_store: RedisStateStore
) -> None:
    store = SealedStateStore(redis_store, KEY)
    await store.put("challenge", STATE, session(), ttl=120, now=NOW)
    stored = read_raw(redis_server, "challenge", STATE)
    other = "b2" * 24
    write_raw(redis_server, "challenge", other, stored)
    write_raw(redis_server, "duplicates", STATE, stored)
    before = rejected("unauthentic")
    assert await store.take("challenge", other, NOW + 1) is None
    assert await store.get("duplicates", STATE, NOW + 1) is None
    assert rejected("unauthentic") == before + 1
    assert rejected("unauthentic", "duplicates") >= 1
    assert await store.take("challenge", STATE, NOW + 1) == session()  # the original is fine


async def test_a_forged_plaintext_session_is_rejected(
    redis_server: RedisServer, redis_store: RedisStateStore
) -> None:
    """The finding: a session written straight into Redis, as the daemon used to store
    it, with the attacker's secret and the admin group."""
    store = SealedStateStore(redis_store, KEY)
    forged = session()
    forged["pending"] = {"secret": ATTACKER_SECRET}
    forged["primary"]["groups"] = ["mfa-admins"]
    write_raw(redis_server, "challenge", STATE, {"expires": NOW + 120, "value": forged})
    before = rejected("malformed")
    assert await store.take("challenge", STATE, NOW + 1) is None
    assert rejected("malformed") == before + 1


async def test_a_value_sealed_under_another_key_is_rejected(
    redis_store: RedisStateStore,
) -> None:
    """An attacker's own mfaproxy (or a cluster with another key file) cannot mint values."""
    await SealedStateStore(redis_store, OTHER_KEY).put("challenge", STATE, session(), 120, NOW)
    before = rejected("unauthentic")
    assert await SealedStateStore(redis_store, KEY).take("challenge", STATE, NOW + 1) is None
    assert rejected("unauthentic") == before + 1


async def test_an_old_value_replayed_after_its_expiry_is_rejected(
    redis_server: RedisServer, redis_store: RedisStateStore
) -> None:
    """Captured, used, then put back later with the store's own expiry pushed out."""
    store = SealedStateStore(redis_store, KEY)
    await store.put("challenge", STATE, session(), ttl=120, now=NOW)
    captured = read_raw(redis_server, "challenge", STATE)
    assert await store.take("challenge", STATE, NOW + 1) == session()
    later = NOW + 600
    write_raw(redis_server, "challenge", STATE, {**captured, "expires": later + 120})
    before = rejected("expired")
    assert await store.take("challenge", STATE, later) is None
    assert rejected("expired") == before + 1


async def test_a_duplicate_table_reply_cannot_be_swapped(
    redis_server: RedisServer, redis_store: RedisStateStore
) -> None:
    """The reply cached for one request, copied onto another's slot, is not sent; the
    request counts as new (it is processed, never silenced by a forged in-flight mark)."""
    store = SealedStateStore(redis_store, KEY)
    accept = {"done": True, "reply": "02" * 20}
    await store.put("duplicates", "nas|1|7|aa", accept, ttl=30, now=NOW)
    write_raw(
        redis_server, "duplicates", "nas|1|8|bb", read_raw(redis_server, "duplicates", "nas|1|7|aa")
    )
    mine = {"done": False}
    assert await store.put_if_absent("duplicates", "nas|1|8|bb", mine, ttl=30, now=NOW) is None
    assert await store.get("duplicates", "nas|1|8|bb", NOW) == mine
    # and a genuine entry still wins the race
    assert await store.put_if_absent("duplicates", "nas|1|7|aa", mine, ttl=30, now=NOW) == accept


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_every_backend_is_sealed(backend: str, redis_store: RedisStateStore) -> None:
    """The memory store is wrapped too: what the wrapper hands the inner store is an
    envelope, never the value."""
    inner: StateStore = MemoryStateStore() if backend == "memory" else redis_store
    store = SealedStateStore(inner, KEY)
    await store.put("challenge", STATE, session(), ttl=120, now=NOW)
    envelope = await inner.get("challenge", STATE, NOW)
    assert envelope is not None and set(envelope) == {"sealed"}
    assert SECRET not in json.dumps(envelope)
    await inner.put("challenge", STATE, session(), ttl=120, now=NOW)  # unsealed
    assert await store.get("challenge", STATE, NOW) is None


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    position=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
    namespace=st.sampled_from(["challenge", "duplicates", "x"]),
    key=st.text(max_size=40),
)
def test_no_single_byte_edit_opens(position: int, mask: int, namespace: str, key: str) -> None:
    store = SealedStateStore(MemoryStateStore(), KEY)
    envelope = store.seal(namespace, key, session(), NOW + 60)
    blob = bytearray(blob_of(envelope))
    blob[position % len(blob)] ^= mask
    with pytest.raises(Rejected):
        store.open(namespace, key, with_blob(bytes(blob)), NOW)
    assert store.open(namespace, key, envelope, NOW) == session()


def test_record_ids_never_collide() -> None:
    pairs = [("a:b", "c"), ("a", "b:c"), ("a", ":b:c"), ("", "a:b:c")]
    assert len({record_id(n, k) for n, k in pairs}) == len(pairs)
