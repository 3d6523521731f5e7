"""QKD-keyed pskRecipInfo EncryptedData: round trip, rotation with grace, refusals."""

from __future__ import annotations

import os
import uuid

import pytest

from corridor.errors import ParameterError
from corridor.mobility.v2x.encoding import compile_subset, decode_data, encode_data
from corridor.mobility.v2x.psk import (
    CENTRE_MESSAGES,
    PskKeyring,
    RotationPolicy,
    derive_psk,
    psk_recipient_id,
)
from corridor.mobility.v2x.verifier import Refused

QKD_KEY = os.urandom(32)
KEY_ID = str(uuid.uuid4())


def _pair(policy: RotationPolicy | None = None) -> tuple[PskKeyring, PskKeyring]:
    centre = PskKeyring(policy or RotationPolicy())
    rsu = PskKeyring(policy or RotationPolicy())
    for ring in (centre, rsu):
        ring.install(QKD_KEY, key_id=KEY_ID, generation=1, now_unix_s=1000.0)
    return centre, rsu


@pytest.mark.parametrize("name", sorted(CENTRE_MESSAGES))
def test_centre_messages_reach_the_rsu(name: str) -> None:
    centre, rsu = _pair()
    payload = os.urandom(CENTRE_MESSAGES[name][1])
    data = centre.encrypt(payload)
    assert rsu.decrypt(data, now_unix_s=1001.0) == payload
    assert payload not in data
    # 1609.2 shape, cross-decoded by asn1tools to the same bytes
    codec = compile_subset()
    other = codec.decode("Ieee1609Dot2Data", data)
    assert codec.encode("Ieee1609Dot2Data", other) == data
    kind, content = other["content"]
    assert kind == "encryptedData"
    assert content["recipients"] == [("pskRecipInfo", psk_recipient_id(
        derive_psk(QKD_KEY, key_id=KEY_ID, generation=1)))]
    assert content["ciphertext"][0] == "aes128ccm"
    # the plaintext is the OER Ieee1609Dot2Data around the payload, then a 16-byte tag
    inner = encode_data({"protocolVersion": 3, "content": ("unsecuredData", payload)})
    assert len(content["ciphertext"][1]["ccmCiphertext"]) == len(inner) + 16


def test_the_old_generation_is_accepted_only_within_the_grace_window() -> None:
    centre, rsu = _pair(RotationPolicy(interval_s=60.0, grace_s=5.0))
    old = centre.encrypt(b"old key")
    assert rsu.due(1060.0) and not rsu.due(1059.0)
    for ring in (centre, rsu):
        ring.install(QKD_KEY, key_id=KEY_ID, generation=2, now_unix_s=1060.0)
    new = centre.encrypt(b"new key")
    assert rsu.decrypt(new, now_unix_s=1061.0) == b"new key"
    assert rsu.decrypt(old, now_unix_s=1064.0) == b"old key"
    with pytest.raises(Refused) as info:
        rsu.decrypt(old, now_unix_s=1066.0)
    assert info.value.reason == "psk_retired"
    for ring in (centre, rsu):
        ring.install(QKD_KEY, key_id=KEY_ID, generation=3, now_unix_s=1120.0)
    with pytest.raises(Refused) as info:
        rsu.decrypt(old, now_unix_s=1120.0)  # two generations back: forgotten
    assert info.value.reason == "psk_unknown"
    assert rsu.counts == {"accepted": 2, "psk_retired": 1, "psk_unknown": 1}


def test_each_generation_and_key_id_gives_another_key_and_identifier() -> None:
    keys = {derive_psk(QKD_KEY, key_id=KEY_ID, generation=g) for g in range(4)}
    keys.add(derive_psk(QKD_KEY, key_id=str(uuid.uuid4()), generation=0))
    assert len(keys) == 5 and all(len(k) == 16 for k in keys)
    assert len({psk_recipient_id(k) for k in keys}) == 5


def test_a_tampered_ciphertext_and_a_foreign_key_are_refused() -> None:
    centre, rsu = _pair()
    value = decode_data(centre.encrypt(b"lane 2 closed"))
    ccm = value["content"][1]["ciphertext"][1]
    ccm["ccmCiphertext"] = bytes([ccm["ccmCiphertext"][0] ^ 1]) + ccm["ccmCiphertext"][1:]
    with pytest.raises(Refused) as info:
        rsu.decrypt(encode_data(value), now_unix_s=1000.0)
    assert info.value.reason == "psk_auth_failed"
    stranger = PskKeyring()
    stranger.install(os.urandom(32), key_id=KEY_ID, generation=1, now_unix_s=1000.0)
    with pytest.raises(Refused) as info:
        rsu.decrypt(stranger.encrypt(b"x"), now_unix_s=1000.0)
    assert info.value.reason == "psk_unknown"


def test_keys_stay_out_of_reprs_and_errors() -> None:
    centre, _ = _pair()
    key = derive_psk(QKD_KEY, key_id=KEY_ID, generation=1)
    assert key.hex() not in repr(centre) and QKD_KEY.hex() not in repr(centre)
    with pytest.raises(ParameterError) as info:
        derive_psk(QKD_KEY[:8], key_id=KEY_ID, generation=1)
    assert QKD_KEY[:8].hex() not in str(info.value)


def test_bad_policy_and_generation_order_name_the_field() -> None:
    with pytest.raises(ParameterError, match="grace_s"):
        RotationPolicy(interval_s=10.0, grace_s=10.0)
    centre, _ = _pair()
    with pytest.raises(ParameterError, match="generation"):
        centre.install(QKD_KEY, key_id=KEY_ID, generation=1, now_unix_s=2000.0)
    with pytest.raises(ParameterError, match="key_id"):
        centre.install(QKD_KEY, key_id="not-a-uuid", generation=2, now_unix_s=2000.0)
