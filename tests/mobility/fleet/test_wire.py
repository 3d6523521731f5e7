"""The wire format: deterministic, round-trips, and refuses every malformed input by name."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.mobility.fleet.commands import check_params, new_command
from corridor.mobility.fleet.errors import FleetRefusal
from corridor.mobility.fleet.wire import (
    Ack,
    BackendEnvelope,
    Command,
    DepotNotice,
    Signed,
    VehicleEnvelope,
)


def _command() -> Command:
    return new_command(sender_id="alice", depot_id="depot-n", vehicle_id="v-001", sequence=7,
                       command_type="route-change",
                       params={"waypoints": "52.1,4.3;52.2,4.4", "route_id": "r-9"},
                       issued_at_ms=1_700_000_000_000, command_id=bytes(range(16)))


def test_command_encoding_is_fixed_and_round_trips() -> None:
    command = _command()
    data = command.encode()
    # Magic, then the first field: a 4-byte length (16) and the command ID.
    assert data[:4] == b"FC01" and data[4:8] == b"\x00\x00\x00\x10"
    assert data[8:24] == bytes(range(16))
    assert Command.decode(data) == command
    # Parameter order given does not matter: one value, one encoding.
    same = new_command(sender_id="alice", depot_id="depot-n", vehicle_id="v-001",
                       sequence=7, command_type="route-change",
                       params={"route_id": "r-9", "waypoints": "52.1,4.3;52.2,4.4"},
                       issued_at_ms=1_700_000_000_000, command_id=bytes(range(16)))
    assert same.encode() == data
    assert command.expires_at_ms - command.issued_at_ms == 60_000


@pytest.mark.parametrize("cut", [3, 10, 30, -1])
def test_truncated_or_extended_commands_are_malformed(cut: int) -> None:
    data = _command().encode()
    with pytest.raises(FleetRefusal, match="malformed") as exc:
        Command.decode(data[:cut])
    assert exc.value.reason == "malformed"
    with pytest.raises(FleetRefusal, match="1 trailing bytes"):
        Command.decode(data + b"\x00")


def test_unsorted_params_and_wrong_widths_are_refused() -> None:
    from corridor.mobility.fleet.wire import lp

    pairs = lp(b"z") + lp(b"1") + lp(b"a") + lp(b"2")
    data = b"FC01" + b"".join(lp(p) for p in (
        bytes(16), b"alice", b"d", b"v", bytes(8), b"immobilise", bytes(8), bytes(8), pairs))
    with pytest.raises(FleetRefusal, match="not sorted and unique"):
        Command.decode(data)
    short_sequence = b"FC01" + b"".join(lp(p) for p in (
        bytes(16), b"alice", b"d", b"v", bytes(4), b"immobilise", bytes(8), bytes(8), b""))
    with pytest.raises(FleetRefusal, match=r"command.sequence is 4 bytes: must be 8"):
        Command.decode(short_sequence)
    with pytest.raises(FleetRefusal, match="not an allowed identifier"):
        Command.decode(b"FC01" + b"".join(lp(p) for p in (
            bytes(16), b"al/ice", b"d", b"v", bytes(8), b"immobilise", bytes(8), bytes(8),
            b"")))


def test_signed_ack_envelopes_round_trip() -> None:
    signed = Signed(b"body", bytes(2420), bytes(64))
    assert Signed.decode(signed.encode(b"FS01"), b"FS01", "x") == signed
    with pytest.raises(FleetRefusal, match="magic is not FT01"):
        Signed.decode(signed.encode(b"FS01"), b"FT01", "signed ack")
    with pytest.raises(FleetRefusal, match="mldsa_signature is 2419 bytes"):
        Signed.decode(Signed(b"b", bytes(2419), bytes(64)).encode(b"FS01"), b"FS01", "x")
    ack = Ack(bytes(16), "v-001", "alice", 3, "executed", "", (("b", "2"), ("a", "1")), 5)
    assert Ack.decode(ack.encode()) == ack and ack.result == (("a", "1"), ("b", "2"))
    notice = DepotNotice(bytes(16), "expired", "late")
    assert DepotNotice.decode(notice.encode()) == notice
    envelope = BackendEnvelope("b2d", "sae-a", "sae-b", bytes(16), 2, bytes(12), bytes(40))
    assert BackendEnvelope.decode(envelope.encode()) == envelope
    assert envelope.encode().startswith(envelope.header())
    vehicle = VehicleEnvelope("d", "v", bytes(1088), bytes(12), bytes(20))
    assert VehicleEnvelope.decode(vehicle.encode()) == vehicle
    with pytest.raises(FleetRefusal, match="kem_ciphertext is 1087 bytes"):
        VehicleEnvelope.decode(VehicleEnvelope("d", "v", bytes(1087), bytes(12),
                                               bytes(20)).encode())


def test_command_parameters_are_checked() -> None:
    assert check_params("immobilise", {}) == (("mode", "next-stop"),)
    with pytest.raises(ParameterError, match=r"params.mode = 'now': one of next-stop, immediate"):
        check_params("immobilise", {"mode": "now"})
    with pytest.raises(ParameterError, match=r"params\.route_id = None: required"):
        check_params("route-change", {"waypoints": "1,2;3,4"})
    with pytest.raises(ParameterError, match=r"params\.polygon"):
        check_params("geofence-update", {"polygon": "1,2;3,4"})
    with pytest.raises(ParameterError, match=r"latitude -90\.\.90"):
        check_params("route-change", {"route_id": "r", "waypoints": "95,2;3,4"})
    with pytest.raises(ParameterError, match="command_type = 'self-destruct'"):
        new_command(sender_id="a", depot_id="d", vehicle_id="v", sequence=1,
                    command_type="self-destruct")
    with pytest.raises(ParameterError, match="sequence = 0"):
        new_command(sender_id="a", depot_id="d", vehicle_id="v", sequence=0,
                    command_type="immobilise")


_DECODERS = (
    lambda d: Command.decode(d), lambda d: Ack.decode(d), lambda d: DepotNotice.decode(d),
    lambda d: BackendEnvelope.decode(d), lambda d: VehicleEnvelope.decode(d),
    lambda d: Signed.decode(d, b"FS01", "signed command"),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_decoders_refuse_any_mutation_by_name(data: st.DataObject) -> None:
    """Whatever the bytes, a decoder returns a value or raises FleetRefusal (malformed):
    never another exception."""
    valid = data.draw(st.sampled_from([
        _command().encode(), Ack(bytes(16), "v", "a", 1, "refused", "expired", (), 2).encode(),
        DepotNotice(bytes(16), "expired", "x").encode(),
        BackendEnvelope("b2d", "a", "b", bytes(16), 0, bytes(12), bytes(17)).encode(),
        VehicleEnvelope("d", "v", bytes(1088), bytes(12), bytes(16)).encode(),
        Signed(b"x", bytes(2420), bytes(64)).encode(b"FS01")]))
    position = data.draw(st.integers(0, len(valid) - 1))
    mutated = data.draw(st.one_of(
        st.just(valid[:position]),
        st.binary(min_size=1, max_size=8).map(lambda b: valid[:position] + b +
                                               valid[position + 1:]),
        st.binary(max_size=64).map(lambda b: valid[:4] + b)))
    for decode in _DECODERS:
        try:
            decode(mutated)
        except FleetRefusal as exc:
            assert exc.reason == "malformed"
