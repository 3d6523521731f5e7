"""End to end through Mosquitto: back end -> depot -> vehicle and the ack back, and every
attack the enclave must refuse (replay, reorder, expiry, role, tampering, forged
signature), with what the broker sees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corridor.kms.audit import verify_audit_log
from corridor.mobility.fleet.commands import new_command, now_ms
from corridor.mobility.fleet.keys import Sender
from corridor.mobility.fleet.signing import SigningKey
from corridor.mobility.fleet.wire import BackendEnvelope, VehicleEnvelope
from tests.mobility.fleet.harness import AUDIT_KEY, Fleet, running_fleet, wait_for


def _audit_reasons(fleet: Fleet, party: str) -> list[str]:
    fleet.audits[party].sync()
    import json

    lines = (fleet.root / f"{party}-audit.jsonl").read_text().splitlines()
    return [json.loads(line)["fields"].get("reason") for line in lines
            if json.loads(line)["event"] == "fleet_command_refused"]


def test_command_reaches_vehicle_encrypted_and_signed_and_replay_is_refused(
        tmp_path: Path) -> None:
    with running_fleet(tmp_path) as fleet:
        assert fleet.backend.records[0].inputs == ("qkd", "pqc")
        alice = fleet.sender("alice")
        command = fleet.backend.send(alice, "v-001", "immobilise", {"mode": "immediate"})
        ack = fleet.backend.wait_ack(command.command_id)
        assert (ack.source, ack.status, ack.vehicle_id, ack.sequence) == \
            ("vehicle", "executed", "v-001", 1)
        vehicle = fleet.vehicles["v-001"]
        assert vehicle.state.immobilised == "immediate"
        # What reached the vehicle was an FV01 envelope (ML-KEM-768 + AES-GCM).
        to_vehicle = fleet.sniffer.on("/vehicle/v-001/cmd")
        assert len(to_vehicle) == 1
        envelope = VehicleEnvelope.decode(to_vehicle[0])
        assert envelope.vehicle_id == "v-001" and len(envelope.kem_ciphertext) == 1088

        # An attacker on the broker replays the depot's envelope to the vehicle ...
        fleet.sniffer.link.publish(f"corridor/fleet/{fleet.depot_id}/vehicle/v-001/cmd",
                                   to_vehicle[0])
        assert wait_for(lambda: vehicle.guard.refused["replayed"] == 1)
        # ... and the back end's envelope to the depot.
        to_depot = fleet.sniffer.on(f"/cmd/{fleet.backend.channel}")
        fleet.sniffer.link.publish(f"corridor/fleet/{fleet.depot_id}/cmd/"
                                   f"{fleet.backend.channel}", to_depot[0])
        assert wait_for(lambda: fleet.depot.guard.refused["replayed"] == 1)
        assert vehicle.guard.accepted == 1 and fleet.depot.guard.accepted == 1
        # The vehicle acknowledged the replay as refused, signed; the back end got it.
        refused = fleet.backend.acks.get(timeout=5)
        while refused.status == "executed":
            refused = fleet.backend.acks.get(timeout=5)
        assert (refused.status, refused.reason) in {("refused", "replayed")}
        assert "replayed" in _audit_reasons(fleet, "v-001")
        assert "replayed" in _audit_reasons(fleet, "depot")
        for party in ("depot", "v-001"):
            assert verify_audit_log(tmp_path / f"{party}-audit.jsonl", AUDIT_KEY).ok


def test_broker_sees_only_ciphertext(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as fleet:
        bob = fleet.sender("bob")
        secret_route = "route-7f3a9c"
        waypoints = "52.37912,4.90012;52.38199,4.91342;52.38811,4.92008"
        command = fleet.backend.send(bob, "v-002", "route-change",
                                     {"route_id": secret_route, "waypoints": waypoints})
        ack = fleet.backend.wait_ack(command.command_id)
        assert ack.status == "executed" and ack.result["route_id"] == secret_route
        assert wait_for(lambda: len(fleet.sniffer.messages) >= 6)
        forbidden = [secret_route.encode(), waypoints.encode(), b"52.37912", b"route-change",
                     b"bob", command.command_id, command.command_id.hex().encode(),
                     command.encode()[:40], b"executed"]
        for topic, payload in fleet.sniffer.messages:
            for needle in forbidden:
                assert needle not in payload, f"plaintext {needle[:12]!r} on {topic}"
        # The handshake went through the broker too, and carries no key material.
        assert fleet.sniffer.on("/up") and fleet.sniffer.on("/down")


def _seal_and_publish(fleet: Fleet, sender: Sender, command: object) -> None:
    signed = fleet.backend.sign(sender, command)  # type: ignore[arg-type]
    fleet.backend.publish(fleet.backend.seal_signed(signed))


def test_expired_reordered_unauthorised_are_refused(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as fleet:
        alice, bob = fleet.sender("alice"), fleet.sender("bob")
        expired = new_command(sender_id="alice", depot_id=fleet.depot_id, vehicle_id="v-001",
                              sequence=50, command_type="remote-diagnostics", lifetime_s=30,
                              issued_at_ms=now_ms() - 120_000)
        _seal_and_publish(fleet, alice, expired)
        ack = fleet.backend.wait_ack(expired.command_id)
        assert (ack.source, ack.reason) == ("depot", "expired")

        newer = new_command(sender_id="alice", depot_id=fleet.depot_id, vehicle_id="v-001",
                            sequence=10, command_type="remote-diagnostics")
        older = new_command(sender_id="alice", depot_id=fleet.depot_id, vehicle_id="v-001",
                            sequence=9, command_type="immobilise")
        _seal_and_publish(fleet, alice, newer)
        assert fleet.backend.wait_ack(newer.command_id).status == "executed"
        _seal_and_publish(fleet, alice, older)
        ack = fleet.backend.wait_ack(older.command_id)
        assert (ack.source, ack.status, ack.reason) == ("depot", "refused", "reordered")
        assert fleet.vehicles["v-001"].state.immobilised is None

        # A dispatcher may route-change but never immobilise.
        command = fleet.backend.send(bob, "v-001", "immobilise")
        ack = fleet.backend.wait_ack(command.command_id)
        assert (ack.source, ack.reason) == ("depot", "unauthorised")
        assert fleet.vehicles["v-001"].guard.accepted == 1
        assert dict(fleet.depot.guard.refused) == {"expired": 1, "reordered": 1,
                                                   "unauthorised": 1}
        assert sorted(_audit_reasons(fleet, "depot")) == ["expired", "reordered",
                                                           "unauthorised"]


def test_vehicle_refuses_what_a_compromised_depot_forwards(tmp_path: Path) -> None:
    """The vehicle checks on its own: a command that skipped the depot's checks (the
    depot's guard replaced by one that lets everything through) is still refused."""
    with running_fleet(tmp_path) as fleet:
        fleet.depot.guard.check = lambda signed, **kw: __import__(  # type: ignore[method-assign]
            "corridor.mobility.fleet.wire", fromlist=["Signed"]).Command.decode(
            __import__("corridor.mobility.fleet.wire", fromlist=["Signed"]).Signed.decode(
                signed, b"FS01", "signed command").body)
        bob = fleet.sender("bob")
        command = fleet.backend.send(bob, "v-001", "immobilise")
        ack = fleet.backend.wait_ack(command.command_id)
        assert (ack.source, ack.status, ack.reason) == ("vehicle", "refused", "unauthorised")
        # Wrongly signed: alice's name, another key.
        impostor = Sender("alice", SigningKey.generate())
        forged = new_command(sender_id="alice", depot_id=fleet.depot_id, vehicle_id="v-001",
                             sequence=100, command_type="immobilise")
        _seal_and_publish(fleet, impostor, forged)
        ack = fleet.backend.wait_ack(forged.command_id)
        assert (ack.source, ack.reason) == ("vehicle", "bad_signature")
        assert fleet.vehicles["v-001"].state.immobilised is None
        assert fleet.vehicles["v-001"].guard.refused["bad_signature"] == 1


def test_tampered_envelopes_are_refused(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as fleet:
        alice = fleet.sender("alice")
        command = fleet.backend.send(alice, "v-002", "geofence-update",
                                     {"polygon": "52.1,4.1;52.2,4.1;52.2,4.2"})
        assert fleet.backend.wait_ack(command.command_id).status == "executed"
        depot_topic = f"corridor/fleet/{fleet.depot_id}/cmd/{fleet.backend.channel}"
        vehicle_topic = f"corridor/fleet/{fleet.depot_id}/vehicle/v-002/cmd"
        original = fleet.sniffer.on(f"/cmd/{fleet.backend.channel}")[0]
        flipped = bytearray(original)
        flipped[-5] ^= 0x40  # inside the AES-GCM ciphertext
        fleet.sniffer.link.publish(depot_topic, bytes(flipped))
        assert wait_for(lambda: fleet.depot.guard.refused["tampered"] == 1)
        # A header field (the associated data) changed: the tag fails too.
        envelope = BackendEnvelope.decode(original)
        other = BackendEnvelope(envelope.direction, envelope.backend_sae_id,
                                envelope.depot_sae_id, envelope.session_id,
                                envelope.generation, os.urandom(12), envelope.ciphertext)
        fleet.sniffer.link.publish(depot_topic, other.encode())
        assert wait_for(lambda: fleet.depot.guard.refused["tampered"] == 2)
        to_vehicle = bytearray(fleet.sniffer.on("/vehicle/v-002/cmd")[0])
        to_vehicle[-3] ^= 0x01
        fleet.sniffer.link.publish(vehicle_topic, bytes(to_vehicle))
        assert wait_for(lambda: fleet.vehicles["v-002"].guard.refused["tampered"] == 1)
        fleet.sniffer.link.publish(vehicle_topic, b"FV01 garbage")
        assert wait_for(lambda: fleet.vehicles["v-002"].guard.refused["malformed"] == 1)
        assert fleet.vehicles["v-002"].guard.accepted == 1


@pytest.mark.slow
def test_back_end_and_depot_keyed_by_two_real_kmes(tmp_path: Path) -> None:
    from corridor.hybrid.qkd import KmeQkdKeys
    from tests.kms.mtls_harness import two_kme_deployment

    with two_kme_deployment(tmp_path / "kmes") as deployment:
        deployment.ingest(4096)
        with deployment.client("sae-a") as client_a, deployment.client("sae-b") as client_b, \
                running_fleet(tmp_path, qkd_backend=KmeQkdKeys(client_a),
                              qkd_depot=KmeQkdKeys(client_b)) as fleet:
            record = fleet.backend.records[0]
            assert record.inputs == ("qkd", "pqc") and record.key_id is not None
            # The key was delivered to both SAEs: it cannot be fetched again.
            with pytest.raises(Exception, match="not found"):
                client_b.get_key_with_id("sae-a", record.key_id)
            command = fleet.backend.send(fleet.sender("alice"), "v-001", "remote-diagnostics",
                                         {"scope": "full"})
            ack = fleet.backend.wait_ack(command.command_id)
            assert ack.status == "executed" and ack.result["odometer_km"] == "48213"
            assert fleet.depot.status()["channels"][0]["inputs"] == ["qkd", "pqc"]


def test_a_sleeping_vehicle_gets_its_commands_when_it_reconnects(tmp_path: Path) -> None:
    """Persistent MQTT session: the broker queues QoS 1 commands for a vehicle that is
    away; on reconnecting it executes what is still valid and refuses what expired."""
    import time

    from corridor.mobility.fleet.keys import load_vehicle
    from corridor.mobility.fleet.transport import MqttLink, vehicle_client_id
    from corridor.mobility.fleet.vehicle import SimulatedVehicle

    with running_fleet(tmp_path) as fleet:
        fleet.vehicles["v-002"].link.close()  # the harness's v-002 leaves for good
        client_id = vehicle_client_id(fleet.depot_id, "v-002")

        def wake() -> tuple[MqttLink, SimulatedVehicle]:
            link = MqttLink(client_id, persistent=True)
            vehicle = SimulatedVehicle(load_vehicle(fleet.keys_dir, "v-002"), fleet.depot_id,
                                       fleet.directory, fleet.policy, link)
            vehicle.start()
            link.start()
            return link, vehicle

        link, _ = wake()
        link.close()  # asleep: the broker keeps its session and queues for it
        alice = fleet.sender("alice")
        valid = fleet.backend.send(alice, "v-002", "geofence-update",
                                   {"polygon": "52.1,4.1;52.2,4.1;52.2,4.2", "action": "slow"})
        short = fleet.backend.send(alice, "v-002", "remote-diagnostics", lifetime_s=0.5)
        time.sleep(1.0)
        link, vehicle = wake()
        try:
            first = fleet.backend.wait_ack(valid.command_id)
            assert (first.status, first.vehicle_id) == ("executed", "v-002")
            late = fleet.backend.wait_ack(short.command_id)
            assert (late.source, late.status, late.reason) == ("vehicle", "refused", "expired")
            assert vehicle.state.geofence_action == "slow"
        finally:
            link.close()
