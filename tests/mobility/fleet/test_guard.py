"""The guard's checks one by one (fake clock), every refusal counted and audited in a
hash-chained log; and a vehicle's own checks without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corridor.kms.audit import AuditLog, verify_audit_log
from corridor.mobility.fleet.commands import new_command
from corridor.mobility.fleet.errors import FleetRefusal
from corridor.mobility.fleet.guard import CommandGuard
from corridor.mobility.fleet.keys import load_sender, load_vehicle
from corridor.mobility.fleet.sealing import encapsulate, new_nonce, seal, vehicle_leg_keys
from corridor.mobility.fleet.signing import CONTEXT_COMMAND, SigningKey
from corridor.mobility.fleet.vehicle import SimulatedVehicle
from corridor.mobility.fleet.wire import (
    MAGIC_SIGNED_COMMAND,
    AckEnvelope,
    Command,
    Signed,
    VehicleEnvelope,
)
from tests.mobility.fleet.harness import AUDIT_KEY, make_fleet_dir

NOW = 1_800_000_000_000
DEPOT = "depot-n"


class Clock:
    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, object, object]:
    return make_fleet_dir(tmp_path, DEPOT)


def _signed(keys_dir: Path, sender: str, **fields: object) -> tuple[Command, bytes]:
    options = {"sender_id": sender, "depot_id": DEPOT, "vehicle_id": "v-001", "sequence": 1,
               "command_type": "remote-diagnostics", "issued_at_ms": NOW, **fields}
    command = new_command(**options)  # type: ignore[arg-type]
    key = load_sender(keys_dir, sender).signing_key
    return command, key.sign(command.encode(), CONTEXT_COMMAND).encode(MAGIC_SIGNED_COMMAND)


def test_each_check_refuses_with_its_reason(tmp_path: Path, fleet: tuple) -> None:
    keys_dir, directory, policy = fleet
    clock = Clock()
    with AuditLog(tmp_path / "audit.jsonl", AUDIT_KEY) as audit:
        guard = CommandGuard("vehicle:v-001", directory, policy, events=audit, clock_ms=clock)

        def refused(signed: bytes, reason: str, **where: str | None) -> None:
            with pytest.raises(FleetRefusal) as exc:
                guard.check(signed, depot_id=where.get("depot", DEPOT),  # type: ignore[arg-type]
                            vehicle_id=where.get("vehicle", "v-001"))
            assert exc.value.reason == reason, str(exc.value)

        first, signed = _signed(keys_dir, "alice", sequence=5)
        assert guard.check(signed, depot_id=DEPOT, vehicle_id="v-001") == first
        refused(signed, "replayed")
        refused(_signed(keys_dir, "alice", sequence=4)[1], "reordered")
        refused(_signed(keys_dir, "alice", sequence=5)[1], "reordered")
        refused(_signed(keys_dir, "bob", sequence=6, command_type="immobilise")[1],
                "unauthorised")
        refused(_signed(keys_dir, "alice", sequence=7, vehicle_id="v-002")[1], "misaddressed")
        refused(_signed(keys_dir, "alice", sequence=8)[1], "misaddressed", depot="depot-s")
        refused(_signed(keys_dir, "alice", sequence=9, lifetime_s=10,
                        issued_at_ms=NOW - 11_000)[1], "expired")
        refused(_signed(keys_dir, "alice", sequence=10, issued_at_ms=NOW + 6_000)[1],
                "not_yet_valid")
        refused(_signed(keys_dir, "alice", sequence=11, lifetime_s=301)[1],
                "lifetime_too_long")
        command, _ = _signed(keys_dir, "alice", sequence=12)
        forged = SigningKey.generate().sign(command.encode(), CONTEXT_COMMAND)
        refused(forged.encode(MAGIC_SIGNED_COMMAND), "bad_signature")
        body = bytearray(signed)
        body[30] ^= 1  # inside the command: the signatures no longer match it
        refused(bytes(body), "bad_signature")
        mallory = Command(bytes(16), "mallory", DEPOT, "v-001", 13, "immobilise", NOW,
                          NOW + 1000, (("mode", "immediate"),))
        refused(Signed(mallory.encode(), bytes(2420), bytes(64)).encode(MAGIC_SIGNED_COMMAND),
                "unknown_sender")
        refused(b"FS01junk", "malformed")
        # Gaps are fine: sequence 20 after 5 (the ones between may have expired unsent).
        guard.check(_signed(keys_dir, "alice", sequence=20)[1], depot_id=DEPOT,
                    vehicle_id="v-001")
        # Sequences are per (sender, vehicle): bob starts at 1.
        guard.check(_signed(keys_dir, "bob", sequence=1, command_type="route-change",
                            params={"route_id": "r", "waypoints": "1,1;2,2"})[1],
                    depot_id=DEPOT, vehicle_id="v-001")
        assert guard.accepted == 3
        assert dict(guard.refused) == {
            "replayed": 1, "reordered": 2, "unauthorised": 1, "misaddressed": 2, "expired": 1,
            "not_yet_valid": 1, "lifetime_too_long": 1, "bad_signature": 2,
            "unknown_sender": 1, "malformed": 1}
    assert verify_audit_log(tmp_path / "audit.jsonl", AUDIT_KEY).ok
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    refusals = [e["fields"] for e in entries if e["event"] == "fleet_command_refused"]
    assert len(refusals) == 13 and refusals[0]["reason"] == "replayed"
    assert refusals[0]["command_id"] == first.command_id.hex()
    # The command's parameters stay out of the audit log (checked by their own values:
    # a bare "52." matched the log's time stamps whenever the seconds were 52).
    logged = json.dumps(entries)
    assert not any(word in logged for word in ("params", "waypoints", "1,1;2,2"))


def test_vehicle_handles_envelopes_without_a_broker(fleet: tuple) -> None:
    keys_dir, directory, policy = fleet
    clock = Clock()
    identity = load_vehicle(keys_dir, "v-001")
    vehicle = SimulatedVehicle(identity, DEPOT, directory, policy, clock_ms=clock)
    _, signed = _signed(keys_dir, "alice", command_type="immobilise")

    def envelope(vehicle_id: str = "v-001", flip: bool = False) -> tuple[bytes, bytes, bytes]:
        shared, ct = encapsulate(directory.vehicles["v-001"].kem_public)
        key, ack_key, handle = vehicle_leg_keys(shared, DEPOT, vehicle_id, ct)
        nonce = new_nonce()
        header = VehicleEnvelope(DEPOT, vehicle_id, ct, nonce, b"").header()
        sealed = bytearray(seal(key, nonce, signed, header))
        if flip:
            sealed[0] ^= 1
        return (VehicleEnvelope(DEPOT, vehicle_id, ct, nonce, bytes(sealed)).encode(),
                bytes(ack_key), handle)

    data, _, handle = envelope()
    ack = vehicle.handle(data)
    assert ack is not None and AckEnvelope.decode(ack).ack_handle == handle
    assert vehicle.state.immobilised == "next-stop"
    assert vehicle.handle(envelope(flip=True)[0]) is None
    assert vehicle.handle(envelope(vehicle_id="v-002")[0]) is None
    assert dict(vehicle.guard.refused) == {"tampered": 1, "misaddressed": 1}
    assert vehicle.status()["recent"][-1] == {"outcome": "refused", "reason": "misaddressed"}


def test_sequence_state_survives_a_restart(tmp_path: Path, fleet: tuple) -> None:
    from corridor.errors import ParameterError

    keys_dir, directory, policy = fleet
    state = tmp_path / "state" / "v-001.json"
    guard = CommandGuard("vehicle:v-001", directory, policy, clock_ms=Clock(),
                         state_path=state)
    _, signed = _signed(keys_dir, "alice", sequence=3)
    guard.check(signed, depot_id=DEPOT, vehicle_id="v-001")
    assert json.loads(state.read_text()) == {"last_sequence": {"alice/v-001": 3}}
    restarted = CommandGuard("vehicle:v-001", directory, policy, clock_ms=Clock(),
                             state_path=state)
    with pytest.raises(FleetRefusal) as exc:  # the command IDs are gone, the order is not
        restarted.check(signed, depot_id=DEPOT, vehicle_id="v-001")
    assert exc.value.reason == "reordered"
    restarted.check(_signed(keys_dir, "alice", sequence=4)[1], depot_id=DEPOT,
                    vehicle_id="v-001")
    state.write_text("{")
    with pytest.raises(ParameterError, match="a readable guard state file"):
        CommandGuard("vehicle:v-001", directory, policy, state_path=state)
