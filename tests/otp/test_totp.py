"""TOTP: RFC 6238 Appendix B vectors, drift window, replay rejection, URIs."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from mfaproxy.otp.totp import (
    Algorithm,
    TotpSettings,
    code_at,
    code_at_step,
    new_secret,
    provisioning_uri,
    secret_from_bytes,
    time_step,
    verify,
)

# RFC 6238 Appendix B: the seed for each mode is the ASCII digits repeated to the
# HMAC output length.
SEEDS: dict[Algorithm, bytes] = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}

# (time, SHA1, SHA256, SHA512), copied from the RFC 6238 Appendix B table.
RFC6238_TABLE = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]
VECTORS = [
    (alg, t, codes[i])
    for t, *codes in RFC6238_TABLE
    for i, alg in enumerate(("sha1", "sha256", "sha512"))
]


def rfc(alg: Algorithm, window: int = 0) -> tuple[str, TotpSettings]:
    return secret_from_bytes(SEEDS[alg]), TotpSettings(digits=8, algorithm=alg, window=window)


@pytest.mark.parametrize(("alg", "now", "expected"), VECTORS)
def test_rfc6238_appendix_b_code(alg: Algorithm, now: int, expected: str) -> None:
    secret, settings = rfc(alg)
    assert code_at(secret, now, settings) == expected


@pytest.mark.parametrize(("alg", "now", "expected"), VECTORS)
def test_rfc6238_appendix_b_verifies(alg: Algorithm, now: int, expected: str) -> None:
    secret, settings = rfc(alg)
    assert verify(secret, expected, now, settings) == now // 30


def test_rfc6238_step_values() -> None:
    # The T column of Appendix B (hex): 1, 0x23523EC, 0x23523ED, 0x273EF07, 0x3F940AA, 0x27BC86AA
    settings = TotpSettings()
    steps = [time_step(t, settings) for t, *_ in RFC6238_TABLE]
    assert steps == [0x1, 0x23523EC, 0x23523ED, 0x273EF07, 0x3F940AA, 0x27BC86AA]


def test_six_digit_code_is_the_low_digits() -> None:
    secret = secret_from_bytes(SEEDS["sha1"])
    assert code_at(secret, 59, TotpSettings(digits=6)) == "287082"


@pytest.fixture
def setup() -> tuple[str, TotpSettings]:
    return new_secret(), TotpSettings()  # window 1, period 30


NOW = 1_700_000_015.0  # middle of step 56666667
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def test_window_accepts_one_step_either_side(setup: tuple[str, TotpSettings]) -> None:
    secret, settings = setup
    step = time_step(NOW, settings)
    for offset in (-1, 0, 1):
        code = code_at_step(secret, step + offset, settings)
        assert verify(secret, code, NOW, settings) == step + offset


def test_window_edge_rejects_two_steps_away(setup: tuple[str, TotpSettings]) -> None:
    secret, settings = setup
    step = time_step(NOW, settings)
    for offset in (-2, 2):
        assert verify(secret, code_at_step(secret, step + offset, settings), NOW, settings) is None


def test_window_edge_follows_the_clock(setup: tuple[str, TotpSettings]) -> None:
    secret, settings = setup
    code = code_at(secret, NOW, settings)
    step = time_step(NOW, settings)
    start = step * 30.0
    # still valid in the last second of the next step, refused at the start of the one after
    assert verify(secret, code, start + 59.999, settings) == step
    assert verify(secret, code, start + 60.0, settings) is None
    # and symmetrically a code from the future
    assert verify(secret, code, start - 30.0, settings) == step
    assert verify(secret, code, start - 0.001 - 30.0, settings) is None


def test_window_zero_accepts_only_current_step(setup: tuple[str, TotpSettings]) -> None:
    secret, _ = setup
    settings = TotpSettings(window=0)
    step = time_step(NOW, settings)
    assert verify(secret, code_at_step(secret, step, settings), NOW, settings) == step
    assert verify(secret, code_at_step(secret, step - 1, settings), NOW, settings) is None


def test_replay_of_the_same_step_is_rejected(setup: tuple[str, TotpSettings]) -> None:
    secret, settings = setup
    code = code_at(secret, NOW, settings)
    step = verify(secret, code, NOW, settings)
    assert step is not None
    assert verify(secret, code, NOW, settings, last_step=step) is None


def test_earlier_step_after_a_later_one_is_rejected(setup: tuple[str, TotpSettings]) -> None:
    secret, settings = setup
    step = time_step(NOW, settings)
    earlier = code_at_step(secret, step - 1, settings)
    assert verify(secret, earlier, NOW, settings, last_step=step) is None
    later = code_at_step(secret, step + 1, settings)
    assert verify(secret, later, NOW, settings, last_step=step) == step + 1


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "12345a", "+12345"])
def test_malformed_codes_are_rejected(setup: tuple[str, TotpSettings], bad: str) -> None:
    secret, settings = setup
    assert verify(secret, bad, NOW, settings) is None


def test_spaces_in_code_are_ignored(setup: tuple[str, TotpSettings]) -> None:
    secret, settings = setup
    code = code_at(secret, NOW, settings)
    assert verify(secret, f" {code[:3]} {code[3:]} ", NOW, settings) == time_step(NOW, settings)


def test_wrong_code_is_rejected(setup: tuple[str, TotpSettings]) -> None:
    secret, settings = setup
    code = code_at(secret, NOW, settings)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert verify(secret, wrong, NOW, settings) is None


def test_near_epoch_window_does_not_go_negative() -> None:
    secret, settings = rfc("sha1", window=1)
    assert verify(secret, "94287082", 59, settings) == 1
    assert verify(secret, code_at_step(secret, 0, settings), 5, settings) == 0


@pytest.mark.parametrize(("alg", "length"), [("sha1", 32), ("sha256", 52), ("sha512", 103)])
def test_new_secret_length_matches_digest(alg: Algorithm, length: int) -> None:
    secret = new_secret(TotpSettings(algorithm=alg))
    assert len(secret) == length
    assert "=" not in secret
    assert secret != new_secret(TotpSettings(algorithm=alg))


def test_provisioning_uri() -> None:
    settings = TotpSettings(issuer="Example VPN", digits=8, period=60, algorithm="sha256")
    uri = provisioning_uri(SECRET, "alice@example.com", settings)
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    assert parts.path == "/Example%20VPN:alice%40example.com"
    query = parse_qs(parts.query)
    assert query == {
        "secret": [SECRET],
        "issuer": ["Example VPN"],
        "algorithm": ["SHA256"],
        "digits": ["8"],
        "period": ["60"],
    }


def test_provisioning_uri_defaults_omit_default_parameters() -> None:
    uri = provisioning_uri(SECRET, "bob", TotpSettings())
    assert uri == "otpauth://totp/mfaproxy:bob?secret=" + SECRET + "&issuer=mfaproxy"


@pytest.mark.parametrize(
    "bad",
    [
        {"digits": 7},
        {"algorithm": "md5"},
        {"period": 0},
        {"period": 121},
        {"window": -1},
        {"issuer": "a:b"},
        {"issuer": ""},
        {"unknown": 1},
    ],
)
def test_settings_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TotpSettings.model_validate(bad)


def test_settings_defaults() -> None:
    settings = TotpSettings()
    assert (settings.issuer, settings.digits, settings.period) == ("mfaproxy", 6, 30)
    assert (settings.algorithm, settings.window) == ("sha1", 1)
