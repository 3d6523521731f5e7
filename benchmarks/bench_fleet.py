"""Fleet commands end to end through Mosquitto: commands per second and the cost split
(issue 11, "Performance").

Everything runs in this one process on 127.0.0.1 (back end, depot gateway, vehicles,
each its own paho-mqtt client of the local Mosquitto), so the figures are what this
machine does with all parties on its cores, plus the broker's process. A *command* here
is the whole path: number, sign (ML-DSA-44 + Ed25519), seal under the back end-depot
session key (AES-256-GCM), MQTT to the depot, open, check (both signatures, policy,
replay, order, expiry), one ML-KEM-768 encapsulation and seal, MQTT to the vehicle,
decapsulate, open, check again, execute, sign the ack, seal it, MQTT to the depot, open,
verify, seal under the session key, MQTT to the back end, open, verify.

Measured:

- ``cost_us``: median microseconds of each step alone (sign, verify, seal, open,
  encapsulate, decapsulate), over ``--ops`` repetitions;
- ``mqtt``: QoS 1 messages of a command's size from one client to another through the
  broker (pipelined, and one at a time round trip);
- ``end_to_end``: commands acknowledged per second with ``--window`` commands in flight,
  and the latency of one command at a time (send to verified ack), median and p90.

The back end-depot session is established once (one hybrid handshake); with
``--from-up corridor-up.json`` its QKD key comes from that corridor's KMEs (as
``corridor fleet`` does), else it runs under ``pqc-required`` (X-Wing alone): per-command
costs do not depend on it. Prints one JSON object.

    .venv/bin/python benchmarks/bench_fleet.py [--commands 1000] [--window 50] [--ops 300]
        [--broker 127.0.0.1:1883] [--from-up corridor-up.json]

Mosquitto's default leaves Nagle's algorithm on for the sockets it writes to
subscribers (``set_tcp_nodelay false``): a message then waits for the subscriber's
delayed ACK, about 40 ms per hop on Linux. The clients here set TCP_NODELAY on their own
sockets; run the broker with ``set_tcp_nodelay true`` to remove the other half
(docs/benchmarks.md, "Fleet commands").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from corridor.mobility.fleet.backend import FleetBackend
from corridor.mobility.fleet.commands import new_command
from corridor.mobility.fleet.depot import DepotGateway
from corridor.mobility.fleet.enclave import ensure_fleet_dir
from corridor.mobility.fleet.keys import (
    POLICY_FILE,
    load_directory,
    load_sender,
    load_vehicle,
)
from corridor.mobility.fleet.policy import load_policy
from corridor.mobility.fleet.sealing import (
    backend_leg_key,
    encapsulate,
    open_sealed,
    seal,
    vehicle_leg_keys,
)
from corridor.mobility.fleet.signing import CONTEXT_COMMAND
from corridor.mobility.fleet.transport import MqttLink, broker_reachable
from corridor.mobility.fleet.vehicle import SimulatedVehicle
from corridor.mobility.fleet.wire import MAGIC_SIGNED_COMMAND


def _median_us(run: Any, ops: int) -> float:
    times = []
    for _ in range(ops):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e6, 1)


def _costs(fleet_dir: Path, ops: int) -> dict[str, Any]:
    sender = load_sender(fleet_dir, "alice")
    directory = load_directory(fleet_dir)
    vehicle = load_vehicle(fleet_dir, "v-001")
    command = new_command(sender_id="alice", depot_id="d", vehicle_id="v-001", sequence=1,
                          command_type="route-change",
                          params={"route_id": "r-1", "waypoints": "52.1,4.3;52.2,4.4"})
    body = command.encode()
    key = sender.signing_key
    signed = key.sign(body, CONTEXT_COMMAND)
    signed_bytes = signed.encode(MAGIC_SIGNED_COMMAND)
    verify = directory.senders["alice"]
    session_key = os.urandom(32)
    leg = backend_leg_key(session_key, "b2d", bytes(16), 0)
    nonce = os.urandom(12)
    sealed = seal(leg, nonce, signed_bytes, b"header")
    _, ct = encapsulate(vehicle.kem_key.public_bytes)
    mldsa, ed = key._mldsa, key._ed  # one scheme at a time, for the split

    def encapsulate_and_derive() -> None:
        shared, kem_ct = encapsulate(vehicle.kem_key.public_bytes)
        vehicle_leg_keys(shared, "d", "v-001", kem_ct)

    return {
        "signed_command_bytes": len(signed_bytes),
        "sign_hybrid": _median_us(lambda: key.sign(body, CONTEXT_COMMAND), ops),
        "sign_mldsa44": _median_us(lambda: mldsa.sign(body, CONTEXT_COMMAND), ops),
        "sign_ed25519": _median_us(lambda: ed.sign(body), ops),
        "verify_hybrid": _median_us(lambda: verify.verify(signed, CONTEXT_COMMAND, "a"), ops),
        "seal_aes256gcm_backend_leg": _median_us(
            lambda: seal(backend_leg_key(session_key, "b2d", bytes(16), 0), nonce,
                         signed_bytes, b"header"), ops),
        "open_aes256gcm_backend_leg": _median_us(
            lambda: open_sealed(leg, nonce, sealed, b"header", "x"), ops),
        "encapsulate_mlkem768_and_derive": _median_us(encapsulate_and_derive, ops),
        "decapsulate_mlkem768_and_derive": _median_us(
            lambda: vehicle_leg_keys(vehicle.kem_key.decapsulate(ct), "d", "v-001", ct), ops),
    }


BROKER = ("127.0.0.1", 1883)


def _mqtt(size: int, count: int) -> dict[str, Any]:
    received = threading.Semaphore(0)
    topic = f"corridor/fleet/bench-{os.urandom(3).hex()}"
    sender = MqttLink(f"bench-tx-{os.urandom(3).hex()}", *BROKER).start()
    receiver = MqttLink(f"bench-rx-{os.urandom(3).hex()}", *BROKER).start()
    try:
        receiver.subscribe(topic, lambda t, p: received.release())
        payload = os.urandom(size)
        started = time.perf_counter()
        for _ in range(count):
            sender.publish(topic, payload, wait=False)
        for _ in range(count):
            received.acquire(timeout=30)
        pipelined_s = time.perf_counter() - started
        one_at_a_time = []
        for _ in range(min(count, 200)):
            t0 = time.perf_counter()
            sender.publish(topic, payload)
            received.acquire(timeout=30)
            one_at_a_time.append(time.perf_counter() - t0)
    finally:
        sender.close()
        receiver.close()
    return {"payload_bytes": size, "messages": count,
            "pipelined_messages_per_s": round(count / pipelined_s),
            "round_trip_ms_median": round(statistics.median(one_at_a_time) * 1000, 3)}


def _end_to_end(fleet_dir: Path, depot_id: str, commands: int, window: int,
                from_up: Path | None) -> dict[str, Any]:
    directory = load_directory(fleet_dir)
    policy = load_policy(fleet_dir / POLICY_FILE)
    links: list[MqttLink] = []

    def link(name: str) -> MqttLink:
        mqtt = MqttLink(f"bench-{name}-{os.urandom(3).hex()}", *BROKER).start()
        links.append(mqtt)
        return mqtt

    qkd_backend = qkd_depot = None
    backend_sae, depot_sae, hybrid_policy = "backend", "depot", "pqc-required"
    clients = []
    if from_up is not None:
        from corridor.hybrid.qkd import KmeQkdKeys
        from corridor.kms.client import SaeClient

        up = json.loads(from_up.read_text())
        pair = up["hybrid_sessions"][0]
        backend_sae, depot_sae = pair["initiator_sae_id"], pair["responder_sae_id"]
        hybrid_policy = pair["policy"]
        base = from_up.resolve().parent
        for sae_id in (backend_sae, depot_sae):
            sae = next(s for s in up["saes"] if s["sae_id"] == sae_id)
            kme = next(k for k in up["kmes"] if k["kme_id"] == sae["kme_id"])
            clients.append(SaeClient(kme["base_url"], base / sae["cert"], base / sae["key"],
                                     base / sae["ca_cert"], expected_kme_id=kme["kme_id"]))
        qkd_backend, qkd_depot = KmeQkdKeys(clients[0]), KmeQkdKeys(clients[1])
    depot = DepotGateway(depot_id, depot_sae, {backend_sae: hybrid_policy}, qkd_depot,
                         directory, policy, link("depot"))
    depot.start()
    vehicles = [SimulatedVehicle(load_vehicle(fleet_dir, v), depot_id, directory, policy,
                                 link(v)) for v in sorted(policy.vehicles)]
    for vehicle in vehicles:
        vehicle.start()
    backend = FleetBackend(backend_sae, depot_sae, depot_id, qkd_backend, directory,
                           link("backend"), hybrid_policy=hybrid_policy)
    try:
        record = backend.start()
        alice = load_sender(fleet_dir, "alice")
        names = [v.vehicle_id for v in vehicles]
        latencies = []
        for index in range(100):
            t0 = time.perf_counter()
            command = backend.send(alice, names[index % len(names)], "remote-diagnostics")
            ack = backend.wait_ack(command.command_id, 30)
            assert ack.status == "executed", ack
            latencies.append(time.perf_counter() - t0)
        cpu0, started = time.process_time(), time.perf_counter()
        in_flight: list[bytes] = []
        for index in range(commands):
            command = backend.send(alice, names[index % len(names)], "route-change",
                                   {"route_id": "r-1", "waypoints": "52.1,4.3;52.2,4.4"},
                                   wait=False)
            in_flight.append(command.command_id)
            if len(in_flight) >= window:
                assert backend.wait_ack(in_flight.pop(0), 60).status == "executed"
        for command_id in in_flight:
            assert backend.wait_ack(command_id, 60).status == "executed"
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
        latencies.sort()
        return {"session_inputs": list(record.inputs), "hybrid_policy": record.policy,
                "vehicles": len(vehicles), "commands": commands, "window": window,
                "commands_per_s": round(commands / elapsed, 1),
                "process_cpu_s_per_command_ms": round(cpu / commands * 1000, 3),
                "latency_ms_median": round(statistics.median(latencies) * 1000, 1),
                "latency_ms_p90": round(latencies[int(0.9 * len(latencies))] * 1000, 1),
                "depot": {k: v for k, v in depot.status().items() if k != "channels"}}
    finally:
        backend.close()
        depot.close()
        for mqtt in links:
            mqtt.close()
        for client in clients:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--vehicles", type=int, default=3)
    parser.add_argument("--from-up", type=Path, default=None)
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT")
    args = parser.parse_args()
    global BROKER
    host, _, port = args.broker.rpartition(":")
    BROKER = (host, int(port))
    if not broker_reachable(*BROKER):
        raise SystemExit(f"Mosquitto is not reachable at {args.broker}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        fleet_dir = Path(scratch) / "fleet"
        depot_id = f"depot-bench-{os.urandom(2).hex()}"
        ensure_fleet_dir(fleet_dir, depot_id, args.vehicles)
        costs = _costs(fleet_dir, args.ops)
        # A depot -> vehicle envelope: the signed command, the KEM ciphertext, the header.
        mqtt = _mqtt(costs["signed_command_bytes"] + 1088 + 60, args.commands)
        end_to_end = _end_to_end(fleet_dir, depot_id, args.commands, args.window, args.from_up)
    print(json.dumps({
        "benchmark": "fleet commands end to end through Mosquitto",
        "broker": args.broker,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cost_us": costs, "mqtt": mqtt, "end_to_end": end_to_end}, indent=2))


if __name__ == "__main__":
    main()
