"""X-Wing (corridor.hybrid.xwing) against the draft's vectors, and its malformed inputs.

The vectors (tests/hybrid/data/xwing-draft-connolly-cfrg-xwing-kem.json, fields seed,
eseed, sk, pk, ct, ss) come from draft-connolly-cfrg-xwing-kem in the version whose
secret key is the 32-byte seed. Keygen and decapsulation run through pyca alone;
encapsulation needs ML-KEM's derandomised Encaps_internal, which pyca does not expose,
so it runs through encapsulate_derand with the tests' FIPS 203 reference
(mlkem768_fips203.py, itself checked against pyca's decapsulation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.hybrid import xwing
from tests.hybrid import mlkem768_fips203

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "xwing-draft-connolly-cfrg-xwing-kem.json").read_text())


def _v(vector: dict[str, Any], field: str) -> bytes:
    return bytes.fromhex(vector[field])


def test_vector_file_has_the_three_vectors() -> None:
    assert len(VECTORS) == 3
    assert {len(_v(v, "pk")) for v in VECTORS} == {xwing.PUBLIC_KEY_BYTES}
    assert {len(_v(v, "ct")) for v in VECTORS} == {xwing.CIPHERTEXT_BYTES}


@pytest.mark.parametrize("vector", VECTORS)
def test_keygen_matches_vector(vector: dict[str, Any]) -> None:
    sk, pk = xwing.generate_keypair(_v(vector, "seed"))
    assert sk == _v(vector, "sk")
    assert pk == _v(vector, "pk")


@pytest.mark.parametrize("vector", VECTORS)
def test_decapsulate_matches_vector(vector: dict[str, Any]) -> None:
    assert xwing.decapsulate(_v(vector, "sk"), _v(vector, "ct")) == _v(vector, "ss")


@pytest.mark.parametrize("vector", VECTORS)
def test_encapsulate_derand_matches_vector(vector: dict[str, Any]) -> None:
    ss, ct = xwing.encapsulate_derand(_v(vector, "pk"), _v(vector, "eseed"),
                                      mlkem768_fips203.encaps_derand)
    assert ct == _v(vector, "ct")
    assert ss == _v(vector, "ss")


@pytest.mark.parametrize("vector", VECTORS)
def test_encapsulate_with_eseed_fixes_the_x25519_half(vector: dict[str, Any]) -> None:
    ss, ct = xwing.encapsulate(_v(vector, "pk"), _v(vector, "eseed"))
    assert ct[xwing.MLKEM_CIPHERTEXT_BYTES:] == _v(vector, "ct")[xwing.MLKEM_CIPHERTEXT_BYTES:]
    assert xwing.decapsulate(_v(vector, "sk"), ct) == ss
    # ML-KEM's m cannot reach pyca: that half is fresh, so the secret differs.
    ss_again, ct_again = xwing.encapsulate(_v(vector, "pk"), _v(vector, "eseed"))
    assert ct_again[:xwing.MLKEM_CIPHERTEXT_BYTES] != ct[:xwing.MLKEM_CIPHERTEXT_BYTES]
    assert ss_again != ss


@settings(max_examples=20, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_round_trip_with_fresh_randomness(seed: bytes) -> None:
    sk, pk = xwing.generate_keypair(seed)
    ss, ct = xwing.encapsulate(pk)
    assert len(ss) == xwing.SHARED_SECRET_BYTES
    assert len(ct) == xwing.CIPHERTEXT_BYTES
    assert xwing.decapsulate(sk, ct) == ss


def test_a_different_seed_gives_a_different_key() -> None:
    seed = _v(VECTORS[0], "seed")
    flipped = bytes([seed[0] ^ 1]) + seed[1:]
    assert xwing.generate_keypair(flipped)[1] != _v(VECTORS[0], "pk")


@pytest.mark.parametrize("position", [0, 500, xwing.MLKEM_CIPHERTEXT_BYTES - 1,
                                      xwing.MLKEM_CIPHERTEXT_BYTES,
                                      xwing.CIPHERTEXT_BYTES - 2])
def test_a_flipped_ciphertext_bit_gives_another_secret_not_an_error(position: int) -> None:
    vector = VECTORS[1]
    ct = bytearray(_v(vector, "ct"))
    ct[position] ^= 0x04
    ss = xwing.decapsulate(_v(vector, "sk"), bytes(ct))
    assert len(ss) == xwing.SHARED_SECRET_BYTES
    assert ss != _v(vector, "ss")


def test_wrong_secret_key_gives_another_secret() -> None:
    vector = VECTORS[2]
    sk = bytearray(_v(vector, "sk"))
    sk[31] ^= 0x80
    assert xwing.decapsulate(bytes(sk), _v(vector, "ct")) != _v(vector, "ss")


@pytest.mark.parametrize(("call", "field", "size"), [
    (lambda b: xwing.generate_keypair(b), "seed", 32),
    (lambda b: xwing.encapsulate(b), "pk", 1216),
    (lambda b: xwing.encapsulate(_v(VECTORS[0], "pk"), b), "eseed", 64),
    (lambda b: xwing.decapsulate(b, _v(VECTORS[0], "ct")), "sk", 32),
    (lambda b: xwing.decapsulate(_v(VECTORS[0], "sk"), b), "ct", 1120),
])
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_lengths_name_field_and_size_without_the_bytes(call: Any, field: str,
                                                            size: int, delta: int) -> None:
    value = bytes(range(7, 7 + 200)) * 7
    value = value[:size + delta]
    with pytest.raises(ParameterError) as info:
        call(value)
    message = str(info.value)
    assert message.startswith(f"{field} = '{size + delta} bytes'")
    assert f"exactly {size} bytes" in message
    assert value[:8].hex() not in message
    assert repr(value[:8]) not in message


def test_not_bytes_is_refused() -> None:
    with pytest.raises(ParameterError, match=r"^seed = 'str'"):
        xwing.generate_keypair("00" * 32)  # type: ignore[arg-type]


def test_public_key_failing_the_modulus_check_is_refused() -> None:
    pk = bytearray(_v(VECTORS[0], "pk"))
    pk[0:2] = b"\xff\xff"  # first 12-bit coefficient 4095 >= q
    with pytest.raises(ParameterError, match=r"^pk = .*modulus check"):
        xwing.encapsulate(bytes(pk))


def test_low_order_x25519_ciphertext_is_refused() -> None:
    ct = _v(VECTORS[0], "ct")[:xwing.MLKEM_CIPHERTEXT_BYTES] + bytes(32)
    with pytest.raises(ParameterError, match=r"^ct = .*small subgroup"):
        xwing.decapsulate(_v(VECTORS[0], "sk"), ct)


def test_label_is_the_six_bytes_of_the_draft() -> None:
    assert bytes.fromhex("5c2e2f2f5e5c") == xwing.XWING_LABEL


def test_an_expanded_secret_key_gives_the_vectors_public_key_and_secret() -> None:
    for vector in VECTORS:
        expanded = xwing.ExpandedSecretKey(bytes.fromhex(vector["sk"]))
        assert expanded.public_key.hex() == vector["pk"]
        assert xwing.decapsulate(expanded, bytes.fromhex(vector["ct"])).hex() == vector["ss"]
        assert "<secret>" in repr(expanded) and vector["sk"][:8] not in repr(expanded)
