"""CatKDF and CasKDF (corridor.hybrid.kdf) against ETSI's reference implementation.

tests/hybrid/data/etsi103744_vectors.json holds what the TS 103 744 reference code
(etsi-forge/cyber.103744_QHKEX, qshkex.c) printed for each input; see its
``provenance`` field and make_etsi103744_vectors.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.hybrid import kdf

DATA = json.loads((Path(__file__).parent / "data" / "etsi103744_vectors.json").read_text())
CAT = DATA["catkdf"]
CAS = DATA["caskdf"]


def _cat_args(case: dict[str, Any]) -> dict[str, Any]:
    fields = ("psk", "k1", "k2", "ma", "mb", "info", "label")
    return {**{f: bytes.fromhex(case[f]) for f in fields}, "length": case["length"],
            "hash": case["hash"]}


def test_vectors_cover_both_hashes_and_empty_and_full_fields() -> None:
    assert {c["hash"] for c in CAT} == {"sha256", "sha384"}
    assert {c["hash"] for c in CAS} == {"sha256", "sha384"}
    for field in ("psk", "info", "label"):
        assert {bool(c[field]) for c in CAT} == {True, False}, field
    assert {len(c["stages"]) for c in CAS} == {2, 3}
    assert "41caf04ef4d5e03a207c09e86d71f8ca18bf8042" in DATA["provenance"]


@pytest.mark.parametrize("case", CAT, ids=lambda c: f"{c['hash']}-{c['length']}")
def test_catkdf_matches_reference(case: dict[str, Any]) -> None:
    assert kdf.catkdf(**_cat_args(case)).hex() == case["key"]


@pytest.mark.parametrize("case", CAS, ids=lambda c: f"{c['hash']}-{len(c['stages'])}")
def test_caskdf_chain_matches_reference(case: dict[str, Any]) -> None:
    chain = b""
    for stage in case["stages"]:
        assert chain.hex() == stage["previous_chain"]
        chain, key = kdf.caskdf_stage(
            previous_chain=chain, k=bytes.fromhex(stage["k"]), ma=bytes.fromhex(stage["ma"]),
            mb=bytes.fromhex(stage["mb"]), info=bytes.fromhex(stage["info"]),
            label=bytes.fromhex(stage["label"]), chain_length=case["chain_length"],
            length=stage["length"], hash=case["hash"])
        assert chain.hex() == stage["chain"]
        assert key.hex() == stage["key"]


def test_lengths_come_before_their_arguments() -> None:
    """The reference's layout, len(x) || x, not the comments' x || len(x): moving one
    byte from MA to MB changes the key, and a hand-built context reproduces it."""
    case = _cat_args(CAT[1])
    context = hashlib.sha256(b"".join(len(x).to_bytes(4, "big") + x
                                      for x in (case["info"], case["ma"], case["mb"])))
    expected = HKDF(hashes.SHA256(), case["length"], case["label"], context.digest()).derive(
        case["psk"] + case["k1"] + case["k2"])
    assert kdf.catkdf(**case) == expected
    moved = {**case, "ma": case["ma"][:-1], "mb": case["ma"][-1:] + case["mb"]}
    assert kdf.catkdf(**moved) != expected


@settings(max_examples=50, deadline=None)
@given(k1=st.binary(min_size=1, max_size=64), k2=st.binary(min_size=1, max_size=64),
       flip=st.integers(min_value=0, max_value=7))
def test_catkdf_depends_on_each_secret(k1: bytes, k2: bytes, flip: int) -> None:
    base = {"psk": b"", "ma": b"A", "mb": b"B", "info": b"i", "label": b"l", "length": 32}
    key = kdf.catkdf(k1=k1, k2=k2, **base)  # type: ignore[arg-type]
    k1_flipped = bytes([k1[0] ^ (1 << flip)]) + k1[1:]
    k2_flipped = bytes([k2[0] ^ (1 << flip)]) + k2[1:]
    assert kdf.catkdf(k1=k1_flipped, k2=k2, **base) != key  # type: ignore[arg-type]
    assert kdf.catkdf(k1=k1, k2=k2_flipped, **base) != key  # type: ignore[arg-type]


def test_caskdf_returns_the_requested_lengths() -> None:
    chain, key = kdf.caskdf_stage(previous_chain=b"", k=b"k" * 32, ma=b"", mb=b"", info=b"",
                                  label=b"", chain_length=48, length=100, hash="sha384")
    assert (len(chain), len(key)) == (48, 100)


@pytest.mark.parametrize(("changes", "field"), [
    ({"hash": "md5"}, "hash"),
    ({"hash": "SHA256"}, "hash"),
    ({"length": 0}, "length"),
    ({"length": 255 * 32 + 1}, "length"),
    ({"length": True}, "length"),
    ({"psk": b"", "k1": b"", "k2": b""}, "psk + k1 + k2"),
    ({"psk": "00"}, "psk"),
])
def test_catkdf_refuses_bad_parameters(changes: dict[str, Any], field: str) -> None:
    args = {**_cat_args(CAT[0]), **changes}
    with pytest.raises(ParameterError) as info:
        kdf.catkdf(**args)
    assert info.value.field == field
    assert CAT[0]["k1"][:16] not in str(info.value)


def test_catkdf_takes_an_empty_slot_and_binds_which_one() -> None:
    # A policy may let a session go without one input; the slots stay apart because
    # the application binds which inputs it used (Corridor: the key_ID in info).
    args = _cat_args(CAT[0])
    only_k1 = kdf.catkdf(**{**args, "psk": b"", "k2": b""})
    assert len(only_k1) == args["length"]
    assert only_k1 != kdf.catkdf(**{**args, "psk": b"", "k2": b"", "k1": args["k1"][:-1]})


def test_catkdf_accepts_the_hkdf_maximum() -> None:
    args = {**_cat_args(CAT[5]), "length": kdf.max_output_bytes("sha384")}
    assert len(kdf.catkdf(**args)) == 255 * 48


@pytest.mark.parametrize(("changes", "field"), [
    ({"chain_length": 0}, "chain_length"),
    ({"chain_length": 256}, "chain_length"),
    ({"length": 255 * 32}, "chain_length + length"),
    ({"k": b""}, "k"),
    ({"previous_chain": b"x" * 256}, "previous_chain"),
    ({"hash": "sha3_256"}, "hash"),
])
def test_caskdf_refuses_bad_parameters(changes: dict[str, Any], field: str) -> None:
    args = {"previous_chain": b"", "k": b"k" * 32, "ma": b"", "mb": b"", "info": b"",
            "label": b"", "chain_length": 32, "length": 32, **changes}
    with pytest.raises(ParameterError) as info:
        kdf.caskdf_stage(**args)
    assert info.value.field == field


def test_hkdf_matches_rfc5869_sha256_vectors() -> None:
    # RFC 5869 appendix A.1 (basic) and A.3 (empty salt and info).
    okm = kdf.hkdf(ikm=b"\x0b" * 22, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)),
                   length=42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")
    okm = kdf.hkdf(ikm=b"\x0b" * 22, salt=b"", info=b"", length=42)
    assert okm.hex() == ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                         "9d201395faa4b61a96c8")


@settings(max_examples=200, deadline=None)
@given(hash_name=st.sampled_from(kdf.HASHES), ikm=st.binary(max_size=300),
       salt=st.binary(max_size=300), info=st.binary(max_size=300),
       length=st.integers(min_value=1, max_value=255 * 32))
def test_hkdf_and_hmac_give_the_libraries_bytes(hash_name: str, ikm: bytes, salt: bytes,
                                                info: bytes, length: int) -> None:
    """Our HMAC/HKDF over hashlib against pyca's HKDF and the standard library's HMAC,
    salts and keys longer than the hash block (hashed first) and empty included."""
    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[hash_name]
    expected = HKDF(algorithm, length, salt, info).derive(ikm)
    assert kdf.hkdf(ikm=ikm, salt=salt, info=info, length=length, hash=hash_name) == expected
    assert kdf.hmac_digest(salt, ikm, hash_name) == hmac.digest(salt, ikm, hash_name)


def test_catkdf_labels_of_every_length_give_the_reference_construction() -> None:
    # The label's HMAC states are computed once per label: each label (empty, short,
    # one hash block, longer than a block) must still give its own key.
    case = _cat_args(CAT[1])
    keys = set()
    for label in (b"", b"l", b"x" * 64, b"x" * 65, b"x" * 200, b"y" * 200):
        context = hashlib.sha256(b"".join(len(x).to_bytes(4, "big") + x
                                          for x in (case["info"], case["ma"], case["mb"])))
        expected = HKDF(hashes.SHA256(), 64, label, context.digest()).derive(
            case["psk"] + case["k1"] + case["k2"])
        for _ in range(2):  # the second call takes the cached label states
            assert kdf.catkdf(**{**case, "label": label, "length": 64}) == expected
        keys.add(expected)
    assert len(keys) == 6


def test_catkdf_takes_bytearray_and_memoryview_like_bytes() -> None:
    case = _cat_args(CAT[2])
    expected = kdf.catkdf(**case)
    assert kdf.catkdf(**{**case, "psk": bytearray(case["psk"]),
                         "ma": memoryview(case["ma"]), "label": bytearray(case["label"])}) \
        == expected
