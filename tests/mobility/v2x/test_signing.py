"""The signature schemes: each verifies its own signatures and nothing else, and the
hybrid needs both halves, neither of which can be passed off on its own."""

from __future__ import annotations

import pytest

from corridor.errors import ParameterError
from corridor.mobility.v2x.signing import (
    Scheme,
    SigningKey,
    VerificationKey,
    parse_scheme,
    signature_input,
)

MESSAGE = signature_input(b"tbs", b"certificate")


@pytest.mark.parametrize("scheme", list(Scheme))
def test_each_scheme_verifies_its_own_signature_only(scheme: Scheme) -> None:
    key = SigningKey.generate(scheme)
    signature = key.sign(MESSAGE)
    public = VerificationKey.from_asn1(key.public().to_asn1())
    assert public.verify(signature, MESSAGE)
    assert not public.verify(signature, MESSAGE[:-1] + bytes([MESSAGE[-1] ^ 1]))
    assert not SigningKey.generate(scheme).public().verify(signature, MESSAGE)


def test_the_halves_of_a_hybrid_signature_do_not_stand_alone() -> None:
    hybrid = SigningKey.generate(Scheme.hybrid)
    kind, value = hybrid.sign(MESSAGE)
    assert kind == "ecdsaNistP256WithMlDsa44Signature"
    public = hybrid.public()
    # the ECDSA half against the same ECDSA key: a hybrid key wants both halves
    assert not public.verify(("ecdsaNistP256Signature", value["ecdsaNistP256Signature"]),
                             MESSAGE)
    # the ML-DSA half as a plain ML-DSA-44 signature under the same ML-DSA key: the
    # hybrid context string makes it fail
    alone = VerificationKey(Scheme.ml_dsa_44, mldsa=public.mldsa)
    assert not alone.verify(("mlDsa44Signature", value["altSignatureValue"]), MESSAGE)
    # while the ECDSA half does verify under a plain ECDSA key (ECDSA has no context):
    # which is why the verifier takes the scheme from the certificate, never the message
    assert VerificationKey(Scheme.ecdsa, ecdsa=public.ecdsa).verify(
        ("ecdsaNistP256Signature", value["ecdsaNistP256Signature"]), MESSAGE)


def test_keys_stay_out_of_repr_and_schemes_are_named() -> None:
    key = SigningKey.generate(Scheme.hybrid)
    assert repr(key) == "SigningKey(scheme=hybrid)"
    with pytest.raises(ParameterError, match="ecdsa-p256, ml-dsa-44, hybrid"):
        parse_scheme("falcon-512")
