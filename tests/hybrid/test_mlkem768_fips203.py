"""The tests' FIPS 203 Encaps_internal agrees with pyca's ML-KEM-768 decapsulation."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import mlkem
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hybrid import mlkem768_fips203


@settings(max_examples=10, deadline=None)
@given(seed=st.binary(min_size=64, max_size=64), m=st.binary(min_size=32, max_size=32))
def test_reference_ciphertext_decapsulates_to_its_secret(seed: bytes, m: bytes) -> None:
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    ek = key.public_key().public_bytes_raw()
    shared, ct = mlkem768_fips203.encaps_derand(ek, m)
    assert len(ct) == 1088
    # Any mistake in the encryption makes pyca's re-encryption check fail, and implicit
    # rejection then returns a different secret.
    assert key.decapsulate(ct) == shared


def test_ntt_inverse_undoes_ntt() -> None:
    f = [(i * 37 + 5) % mlkem768_fips203.Q for i in range(256)]
    assert mlkem768_fips203.ntt_inverse(mlkem768_fips203.ntt(f)) == f
