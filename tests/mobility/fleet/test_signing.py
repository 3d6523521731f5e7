"""Hybrid signatures: both must verify; each failure is named; contexts separate."""

from __future__ import annotations

import pytest

from corridor.mobility.fleet.errors import FleetRefusal
from corridor.mobility.fleet.sealing import (
    VehicleKemKey,
    encapsulate,
    open_sealed,
    seal,
    vehicle_leg_keys,
)
from corridor.mobility.fleet.signing import CONTEXT_ACK, CONTEXT_COMMAND, SigningKey, VerifyKey
from corridor.mobility.fleet.wire import Signed


def test_both_signatures_must_verify() -> None:
    key = SigningKey.generate()
    signed = key.sign(b"immobilise v-001", CONTEXT_COMMAND)
    key.verify_key.verify(signed, CONTEXT_COMMAND, "alice")
    assert len(signed.mldsa_signature) == 2420 and len(signed.ed25519_signature) == 64
    other = SigningKey.generate().sign(b"immobilise v-001", CONTEXT_COMMAND)
    # A valid Ed25519 signature cannot carry a bad ML-DSA one, nor the reverse.
    for mixed, failing in ((Signed(signed.body, other.mldsa_signature,
                                   signed.ed25519_signature), "ML-DSA-44 signature"),
                           (Signed(signed.body, signed.mldsa_signature,
                                   other.ed25519_signature), "Ed25519 signature"),
                           (Signed(b"immobilise v-002", signed.mldsa_signature,
                                   signed.ed25519_signature), "ML-DSA-44 and Ed25519")):
        with pytest.raises(FleetRefusal, match=failing) as exc:
            key.verify_key.verify(mixed, CONTEXT_COMMAND, "alice")
        assert exc.value.reason == "bad_signature"


def test_a_command_signature_is_not_an_ack_signature() -> None:
    key = SigningKey.generate()
    signed = key.sign(b"body", CONTEXT_COMMAND)
    with pytest.raises(FleetRefusal, match="ML-DSA-44 and Ed25519"):
        key.verify_key.verify(signed, CONTEXT_ACK, "v-001")


def test_keys_rebuild_from_seeds_and_hide_in_repr() -> None:
    key = SigningKey.generate()
    again = SigningKey(*key.seeds())
    assert again.verify_key.as_dict() == key.verify_key.as_dict()
    assert "not shown" in repr(key) and key.seeds()[0].hex() not in repr(key)
    public = VerifyKey(key.verify_key.mldsa_public, key.verify_key.ed25519_public)
    public.verify(again.sign(b"x", CONTEXT_ACK), CONTEXT_ACK, "x")


def test_vehicle_leg_keys_agree_and_tampering_is_named() -> None:
    vehicle = VehicleKemKey.generate()
    shared, ct = encapsulate(vehicle.public_bytes)
    depot_side = vehicle_leg_keys(shared, "depot-n", "v-001", ct)
    vehicle_side = vehicle_leg_keys(vehicle.decapsulate(ct), "depot-n", "v-001", ct)
    assert depot_side == vehicle_side
    command_key, ack_key, handle = depot_side
    assert command_key != ack_key and len(handle) == 16
    # Bound to the addressing: another vehicle's name derives other keys.
    assert vehicle_leg_keys(shared, "depot-n", "v-002", ct)[0] != command_key
    sealed = seal(command_key, bytes(12), b"command", b"header")
    assert open_sealed(command_key, bytes(12), sealed, b"header", "x") == b"command"
    with pytest.raises(FleetRefusal, match="tampered: x: AES-256-GCM tag"):
        open_sealed(command_key, bytes(12), sealed, b"headex", "x")
    assert VehicleKemKey(vehicle.seed()).public_bytes == vehicle.public_bytes
