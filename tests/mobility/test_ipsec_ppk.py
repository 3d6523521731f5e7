"""The PPK derivation, the PPK IDs and the charon connection a tunnel spec produces
(no daemon needed)."""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.mobility.ipsec import TunnelSpec
from corridor.mobility.ppk import PPK_LABEL, derive_ppk, key_id_from_ppk_id, ppk_id_for

KEY_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
QKD_KEY = bytes(range(32))


def _rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 written out from RFC 5869, independent of pyca/cryptography."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def test_the_ppk_is_the_documented_hkdf() -> None:
    info = PPK_LABEL + struct.pack(">H", 36) + KEY_ID.encode() + struct.pack(">Q", 7)
    assert derive_ppk(QKD_KEY, KEY_ID, 7) == _rfc5869(QKD_KEY, b"corridor ipsec ppk v1",
                                                      info, 32)


@given(st.binary(min_size=16, max_size=64), st.uuids(), st.integers(0, 2**64 - 1),
       st.integers(0, 2**64 - 1))
def test_the_ppk_depends_on_the_key_id_and_the_generation(key, key_uuid, gen_a, gen_b) -> None:
    key_id = str(key_uuid)
    other_id = str(uuid.UUID(int=key_uuid.int ^ 1))
    ppk = derive_ppk(key, key_id, gen_a)
    assert len(ppk) == 32 and ppk == derive_ppk(key, key_id, gen_a)
    assert ppk != derive_ppk(key, other_id, gen_a)
    assert (ppk == derive_ppk(key, key_id, gen_b)) == (gen_a == gen_b)
    assert ppk != derive_ppk(bytes([key[0] ^ 1]) + key[1:], key_id, gen_a)


@pytest.mark.parametrize(("key", "key_id", "generation", "field"), [
    (b"short", KEY_ID, 1, "qkd_key"),
    (QKD_KEY, "not-a-uuid", 1, "key_ID"),
    (QKD_KEY, KEY_ID + "x", 1, "key_ID"),
    (QKD_KEY, KEY_ID, -1, "generation"),
    (QKD_KEY, KEY_ID, True, "generation"),
])
def test_bad_inputs_name_the_field_and_never_show_key_bytes(key, key_id, generation,
                                                             field) -> None:
    with pytest.raises(ParameterError, match=field) as info:
        derive_ppk(key, key_id, generation)
    assert "short" not in str(info.value) and repr(QKD_KEY) not in str(info.value)


def test_the_ppk_id_carries_the_key_id() -> None:
    assert ppk_id_for(KEY_ID) == f"corridor-{KEY_ID}"
    assert key_id_from_ppk_id(ppk_id_for(KEY_ID)) == KEY_ID
    for bad in ("corridor-1", f"other-{KEY_ID}", KEY_ID):
        with pytest.raises(ParameterError, match=r"ppk_id|key_ID"):
            key_id_from_ppk_id(bad)


def test_every_generation_is_its_own_connection_with_ppk_required() -> None:
    spec = TunnelSpec("corr", "10.0.0.1", "10.0.0.2", ("10.1.0.0/24",), ("10.2.0.0/24",))
    conn = spec.connection(3, ppk_id_for(KEY_ID))
    assert spec.conn_name(3) == "corr-g3"
    assert conn["ppk_id"] == f"corridor-{KEY_ID}" and conn["ppk_required"] == "yes"
    assert conn["encap"] == "yes" and conn["unique"] == "never"
    assert conn["children"]["net"]["local_ts"] == ["10.1.0.0/24"]
    assert conn["local"] == {"auth": "psk", "id": "10.0.0.1"}


def test_pqc_is_present_only_with_an_mlkem_key_exchange() -> None:
    base = TunnelSpec("corr", "10.0.0.1", "10.0.0.2", ("10.1.0.1/32",), ("10.2.0.1/32",))
    assert base.pqc_missing == "ike_without_mlkem"
    hybrid = TunnelSpec("corr", "10.0.0.1", "10.0.0.2", ("10.1.0.1/32",), ("10.2.0.1/32",),
                        ike_proposals=("aes256-sha256-x25519-ke1_mlkem768",))
    assert hybrid.pqc_missing is None
    with pytest.raises(ParameterError, match="name"):
        TunnelSpec("bad name", "10.0.0.1", "10.0.0.2", ("a",), ("b",))
