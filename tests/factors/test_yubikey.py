"""The YubiKey method with real OTPs (yubiotp's simulator), a real SQLite user store and
the real YubiCloud client against a fake verify-v2 server on loopback."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from mfaproxy.config.multifactor import MultifactorConfig
from mfaproxy.errors import UpstreamUnavailable, YubikeyEnrolmentError
from mfaproxy.factors.base import FactorRequest, FactorServices, FactorUser, Verdict
from mfaproxy.factors.yubikey import PUBLIC_ID_LENGTH, YubikeyFactor, build, enrol
from mfaproxy.observability import metrics
from mfaproxy.store import users as users_module
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.crypto import load_or_create_key
from mfaproxy.store.sqlite_schema import MIGRATIONS
from mfaproxy.store.state import MemoryStateStore
from mfaproxy.store.users import UserStore
from tests.support.ports import free_port
from tests.support.yubicloud import FakeYubicloud, SimulatedKey, sign

CLIENT_ID = "4711"
API_KEY = base64.b64encode(b"shared api key 20 b.").decode()
NOW = 1_700_000_000.0


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "master.key"


@pytest.fixture
async def services(tmp_path: Path, key_file: Path) -> AsyncIterator[FactorServices]:
    master = load_or_create_key(key_file)
    users = AsyncUserStore(UserStore(tmp_path / "state" / "users.sqlite3", master))
    yield FactorServices(
        users=users, state=MemoryStateStore(), mail=None, dictionary=None, master_key=master
    )
    await users.close()


@pytest.fixture
def yubikey() -> SimulatedKey:
    return SimulatedKey.random()


@pytest.fixture
def cloud(yubikey: SimulatedKey) -> Iterator[FakeYubicloud]:
    with FakeYubicloud(CLIENT_ID, API_KEY, [yubikey]) as server:
        yield server


def upstream_up(url: str) -> float | None:
    labels = {"service": "yubicloud", "server": url}
    return metrics.REGISTRY.get_sample_value("mfaproxy_upstream_up", labels)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/wsapi/2.0/verify"


def config(validation: str = "yubicloud", urls: list[str] | None = None, **extra: Any) -> Any:
    section: dict[str, Any] = {"validation": validation, **extra}
    if validation == "yubicloud":
        section = {"client_id": CLIENT_ID, "api_key": API_KEY, "api_urls": urls, **section}
    return MultifactorConfig.model_validate(
        {"enabled": ["yubikey"], "default": "yubikey", "yubikey": section}
    )


@asynccontextmanager
async def factor(cfg: MultifactorConfig, services: FactorServices) -> AsyncIterator[Any]:
    made = build(cfg, services)
    try:
        yield made
    finally:
        await made.close()


async def request(services: FactorServices, user: str = "alice") -> FactorRequest:
    record = await services.users.run(lambda s: s.get_user(user))
    return FactorRequest(FactorUser(user, user, record=record), "vpn", None, NOW)


async def check(made: Any, services: FactorServices, otp: str, user: str = "alice") -> Any:
    return await made.check(await request(services, user), otp, {})


async def enrol_local(services: FactorServices, key: SimulatedKey, user: str = "alice") -> str:
    settings = config("local").yubikey
    assert settings is not None
    return await enrol(
        services, settings, user, key.otp(), NOW, key.aes_key_hex, key.private_id_hex
    )


async def bind(services: FactorServices, key: SimulatedKey, user: str = "alice") -> None:
    """Bind by public id only, as cloud enrolment does, without asking the fake."""

    def store(s: Any) -> None:
        s.set_enrolment(user, "yubikey", {"public_id": key.public_id}, NOW)
        s.set_method(user, "yubikey", NOW)

    await services.users.run(store)


# ----------------------------------------------------------------- syntax, binding


@pytest.mark.parametrize(
    "answer",
    ["", "123456", "c" * 43, "c" * 45, "a" * 44, "cccccccccccc cccccccccccccccccccccccccccccccc"],
)
async def test_malformed_otp_is_rejected_before_any_network(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey, answer: str
) -> None:
    await bind(services, yubikey)
    async with factor(config(urls=[cloud.url]), services) as made:
        result = await check(made, services, answer)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "malformed_code")
    assert cloud.requests == []


async def test_unenrolled_user_is_rejected(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    async with factor(config(urls=[cloud.url]), services) as made:
        assert not made.is_enrolled((await request(services)).user)
        result = await check(made, services, yubikey.otp())
    assert (result.verdict, result.reason) == (Verdict.REJECT, "not_enrolled")


@pytest.mark.parametrize("validation", ["local", "yubicloud"])
async def test_another_keys_otp_is_wrong_key(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey, validation: str
) -> None:
    other = SimulatedKey.random()
    cloud.add_key(other)  # YubiCloud would say OK: the binding must refuse it first
    await enrol_local(services, yubikey)
    async with factor(config(validation, urls=[cloud.url]), services) as made:
        result = await check(made, services, other.otp())
    assert (result.verdict, result.reason) == (Verdict.REJECT, "wrong_key")
    assert cloud.requests == []


# ----------------------------------------------------------------- local validation


async def test_local_accepts_a_fresh_otp_and_rejects_its_replay(
    services: FactorServices, yubikey: SimulatedKey
) -> None:
    enrolment_otp = yubikey.otp()
    settings = config("local").yubikey
    assert settings is not None
    public_id = await enrol(
        services, settings, "alice", enrolment_otp, NOW, yubikey.aes_key_hex, yubikey.private_id_hex
    )
    assert public_id == yubikey.public_id
    otp = yubikey.otp()
    async with factor(config("local"), services) as made:
        assert made.is_enrolled((await request(services)).user)
        first = await check(made, services, otp.upper())  # modhex is case-insensitive
        again = await check(made, services, otp)
        enrolment_replay = await check(made, services, enrolment_otp)
    assert (first.verdict, first.reason) == (Verdict.ACCEPT, "code_ok")
    assert (again.verdict, again.reason) == (Verdict.REJECT, "replayed")
    assert enrolment_replay.reason == "replayed"  # enrol() used its OTP up


async def test_local_rejects_an_older_counter(
    services: FactorServices, yubikey: SimulatedKey
) -> None:
    await enrol_local(services, yubikey)
    older, newer = yubikey.otp(), yubikey.otp()
    async with factor(config("local"), services) as made:
        assert (await check(made, services, newer)).verdict is Verdict.ACCEPT
        late = await check(made, services, older)
    assert (late.verdict, late.reason) == (Verdict.REJECT, "replayed")


async def test_local_session_counter_outranks_use_counter(
    services: FactorServices, yubikey: SimulatedKey
) -> None:
    await enrol_local(services, yubikey)
    for _ in range(3):
        yubikey.otp()  # use counter 4 in session 1
    replugged = SimulatedKey(yubikey.public_id, yubikey.aes_key, yubikey.private_id, session=2)
    async with factor(config("local"), services) as made:
        assert (await check(made, services, yubikey.otp())).verdict is Verdict.ACCEPT
        # Session 2 restarts the use counter at 0, and is still newer.
        assert (await check(made, services, replugged.otp())).verdict is Verdict.ACCEPT
        assert (await check(made, services, yubikey.otp())).reason == "replayed"


async def test_local_concurrent_requests_with_one_otp_one_wins(
    services: FactorServices, yubikey: SimulatedKey
) -> None:
    await enrol_local(services, yubikey)
    otp = yubikey.otp()
    async with factor(config("local"), services) as made:
        req = await request(services)
        results = await asyncio.gather(*(made.check(req, otp, {}) for _ in range(8)))
    assert [r.verdict for r in results].count(Verdict.ACCEPT) == 1
    assert {r.reason for r in results if r.verdict is not Verdict.ACCEPT} == {"replayed"}


async def test_local_rejects_a_token_from_another_aes_key_or_private_id(
    services: FactorServices, yubikey: SimulatedKey
) -> None:
    await enrol_local(services, yubikey)
    other_aes = SimulatedKey(yubikey.public_id, bytes(16), yubikey.private_id)
    other_uid = SimulatedKey(yubikey.public_id, yubikey.aes_key, bytes(6))
    async with factor(config("local"), services) as made:
        for forged in (other_aes.otp(), other_uid.otp()):
            result = await check(made, services, forged)
            assert (result.verdict, result.reason) == (Verdict.REJECT, "bad_code")
        # Neither forgery moved the replay marker: the real key still works.
        assert (await check(made, services, yubikey.otp())).verdict is Verdict.ACCEPT


async def test_local_mode_cannot_enrol_inline(
    services: FactorServices, yubikey: SimulatedKey
) -> None:
    async with factor(config("local"), services) as made:
        req = await request(services)
        assert not made.can_enrol_inline(req.user)
        assert (await made.begin_enrolment(req)).verdict is Verdict.REJECT
        assert (await made.finish_enrolment(req, yubikey.otp(), {})).verdict is Verdict.REJECT


async def test_enrol_helper_local_checks_and_seals_the_key(
    services: FactorServices, yubikey: SimulatedKey, tmp_path: Path
) -> None:
    settings = config("local").yubikey
    assert settings is not None
    with pytest.raises(YubikeyEnrolmentError, match="needs the AES key"):
        await enrol(services, settings, "alice", yubikey.otp(), NOW)
    with pytest.raises(YubikeyEnrolmentError, match="does not decrypt"):
        await enrol(
            services, settings, "alice", yubikey.otp(), NOW, "00" * 16, yubikey.private_id_hex
        )
    with pytest.raises(YubikeyEnrolmentError, match="not a YubiKey OTP"):
        await enrol(services, settings, "alice", "123456", NOW, yubikey.aes_key_hex, "00" * 6)
    assert await services.users.run(lambda s: s.get_enrolment("alice", "yubikey")) is None

    assert await enrol_local(services, yubikey, "Alice") == yubikey.public_id
    record = await services.users.run(lambda s: s.get_user("alice"))
    assert record is not None and record.method == "yubikey" and "yubikey" in record.enrolled
    stored = (tmp_path / "state" / "users.sqlite3").read_bytes()
    assert yubikey.aes_key_hex.encode() not in stored  # sealed at rest


# ----------------------------------------------------------------- YubiCloud


async def test_cloud_accepts_then_reports_the_replay(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    await bind(services, yubikey)
    otp = yubikey.otp()
    async with factor(config(urls=[cloud.url]), services) as made:
        first = await check(made, services, otp)
        again = await check(made, services, otp)
    assert (first.verdict, first.reason) == (Verdict.ACCEPT, "code_ok")
    assert (again.verdict, again.reason) == (Verdict.REJECT, "replayed")
    sent = cloud.requests[0]
    assert sent["id"] == CLIENT_ID and sent["otp"] == otp
    assert sent["h"] == sign(base64.b64decode(API_KEY), sent)
    nonces = [r["nonce"] for r in cloud.requests]
    assert all(16 <= len(n) <= 40 and n.isalnum() for n in nonces)
    assert nonces[0] != nonces[1]


async def test_cloud_bad_otp_is_bad_code(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    await bind(services, yubikey)
    forged = SimulatedKey(yubikey.public_id, bytes(16), yubikey.private_id).otp()
    async with factor(config(urls=[cloud.url]), services) as made:
        result = await check(made, services, forged)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "bad_code")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("bad_signature", "bad_response"),
        ("wrong_nonce", "bad_response"),
        ("backend_error", "yubicloud_error"),
    ],
)
async def test_cloud_untrustworthy_or_failed_answers_are_unavailable(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey, fault: Any, reason: str
) -> None:
    await bind(services, yubikey)
    cloud.fault = fault
    async with factor(config(urls=[cloud.url]), services) as made:
        result = await check(made, services, yubikey.otp())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, reason)
    assert not result.counts_as_failure
    assert len(cloud.requests) == 1


async def test_cloud_forged_ok_does_not_pass(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    # An attacker without the API key answers OK to a garbage OTP: the signature fails.
    await bind(services, yubikey)
    cloud.status_override, cloud.fault = "OK", "bad_signature"
    forged = SimulatedKey(yubikey.public_id, bytes(16), yubikey.private_id).otp()
    async with factor(config(urls=[cloud.url]), services) as made:
        result = await check(made, services, forged)
    assert result.verdict is Verdict.UNAVAILABLE


@pytest.mark.parametrize(
    "override", [{"api_key": base64.b64encode(b"another key").decode()}, {"client_id": "1"}]
)
async def test_cloud_credentials_refused_are_misconfiguration(
    services: FactorServices,
    cloud: FakeYubicloud,
    yubikey: SimulatedKey,
    override: dict[str, str],
) -> None:
    await bind(services, yubikey)
    async with factor(config(urls=[cloud.url], **override), services) as made:
        result = await check(made, services, yubikey.otp())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "yubicloud_misconfigured")


async def test_cloud_one_dead_url_and_one_good_accepts(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    await bind(services, yubikey)
    dead = dead_url()
    async with factor(config(urls=[dead, cloud.url]), services) as made:
        result = await check(made, services, yubikey.otp())
    assert result.verdict is Verdict.ACCEPT
    # The dead server may not have failed yet when the good one answered.
    assert upstream_up(cloud.url) == 1
    assert upstream_up(dead) in (None, 0)


async def test_no_otp_or_key_is_logged(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    await bind(services, yubikey)
    cloud.fault = "bad_signature"
    otp = yubikey.otp()
    with structlog.testing.capture_logs() as logs:
        async with factor(config(urls=[cloud.url, dead_url()]), services) as made:
            await check(made, services, otp)
            await check(made, services, SimulatedKey.random().otp())
    assert logs  # the failures were logged...
    assert otp[PUBLIC_ID_LENGTH:] not in repr(logs)  # ...without the token
    assert API_KEY not in repr(logs)


async def test_cloud_all_dead_is_unavailable(
    services: FactorServices, yubikey: SimulatedKey
) -> None:
    await bind(services, yubikey)
    urls = [dead_url(), dead_url()]
    async with factor(config(urls=urls), services) as made:
        result = await check(made, services, yubikey.otp())
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "unreachable")
    assert [upstream_up(url) for url in urls] == [0, 0]


async def test_cloud_a_hanging_server_does_not_block_a_good_one(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    await bind(services, yubikey)
    with FakeYubicloud(CLIENT_ID, API_KEY, [yubikey]) as stuck:
        stuck.fault = "hang"
        # Asking in turn would wait out the hung server's 60 s before the good one and
        # trip the guard; the fan-out is answered by the good server at once.
        async with factor(config(urls=[stuck.url, cloud.url], timeout=60), services) as made:
            async with asyncio.timeout(30):
                result = await check(made, services, yubikey.otp())
    assert result.verdict is Verdict.ACCEPT


async def test_cloud_timeout_is_unavailable(
    services: FactorServices, yubikey: SimulatedKey
) -> None:
    await bind(services, yubikey)
    with FakeYubicloud(CLIENT_ID, API_KEY, [yubikey]) as stuck:
        stuck.fault = "hang"
        async with factor(config(urls=[stuck.url], timeout=0.2), services) as made:
            result = await check(made, services, yubikey.otp())
        assert len(stuck.requests) == 1
    assert (result.verdict, result.reason) == (Verdict.UNAVAILABLE, "unreachable")


async def test_cloud_inline_enrolment_binds_the_key(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    async with factor(config(urls=[cloud.url]), services) as made:
        req = await request(services)
        assert made.can_enrol_inline(req.user)
        begun = await made.begin_enrolment(req)
        assert begun.verdict is Verdict.CHALLENGE
        assert begun.prompt == "Touch your YubiKey to register it"
        otp = yubikey.otp()
        done = await made.finish_enrolment(req, otp, begun.pending)
        replay = await made.finish_enrolment(await request(services, "bob"), otp, {})
        after = await check(made, services, yubikey.otp())
    assert (done.verdict, done.reason) == (Verdict.ACCEPT, "enrolled")
    assert (replay.verdict, replay.reason) == (Verdict.REJECT, "replayed")
    assert after.verdict is Verdict.ACCEPT
    record = await services.users.run(lambda s: s.get_user("alice"))
    assert record is not None and record.method == "yubikey"
    data = await services.users.run(lambda s: s.get_enrolment("alice", "yubikey"))
    assert data == {"public_id": yubikey.public_id}
    assert await services.users.run(lambda s: s.get_user("bob")) is None


async def test_enrol_helper_cloud_mode(
    services: FactorServices, cloud: FakeYubicloud, yubikey: SimulatedKey
) -> None:
    settings = config(urls=[cloud.url]).yubikey
    assert settings is not None
    otp = yubikey.otp()
    assert await enrol(services, settings, "alice", otp, NOW) == yubikey.public_id
    with pytest.raises(YubikeyEnrolmentError, match="replayed"):
        await enrol(services, settings, "bob", otp, NOW)
    dead = config(urls=[dead_url()]).yubikey
    assert dead is not None
    with pytest.raises(UpstreamUnavailable):
        await enrol(services, dead, "carol", yubikey.otp(), NOW)


def test_factor_shape() -> None:
    assert YubikeyFactor.name == "yubikey"
    assert YubikeyFactor.keywords == frozenset()


# ----------------------------------------------------------------- the store's counter


def test_store_counter_needs_an_enrolment_and_restarts_with_a_new_key(
    tmp_path: Path, key_file: Path
) -> None:
    store = UserStore(tmp_path / "users.sqlite3", load_or_create_key(key_file))
    try:
        assert not store.accept_yubikey_counter("alice", 5)  # no such user
        store.set_method("alice", "yubikey", NOW)
        assert not store.accept_yubikey_counter("alice", 5)  # no key bound
        store.set_enrolment("alice", "yubikey", {"public_id": "cccccccccccb"}, NOW)
        assert store.accept_yubikey_counter("alice", 500)
        assert not store.accept_yubikey_counter("alice", 500)
        assert not store.accept_yubikey_counter("alice", 499)
        store.set_enrolment("alice", "yubikey", {"public_id": "cccccccccccd"}, NOW)
        assert store.accept_yubikey_counter("alice", 5)  # the new key's own counters
    finally:
        store.close()


def test_store_upgrade_from_schema_1_keeps_users(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, master = tmp_path / "users.sqlite3", load_or_create_key(key_file)
    with monkeypatch.context() as patch:
        patch.setattr(users_module, "MIGRATIONS", MIGRATIONS[:1])
        old = UserStore(path, master)
        old.set_enrolment("alice", "email", {"address": "alice@example.com"}, NOW)
        old.close()
    store = UserStore(path, master)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        assert store.get_enrolment("alice", "email") == {"address": "alice@example.com"}
        store.set_enrolment("alice", "yubikey", {"public_id": "cccccccccccb"}, NOW)
        assert store.accept_yubikey_counter("alice", 1)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
    finally:
        conn.close()
    assert "yubikey_counter" in columns
