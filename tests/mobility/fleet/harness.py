"""A small fleet for the tests: identities in a temp directory, a depot, vehicles and a
back end on the local Mosquitto, QKD keys from the in-memory pool of the hybrid tests
(or from two real KMEs), and a sniffer that records everything the broker carries."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corridor.hybrid.qkd import QkdKeySource
from corridor.kms.audit import AuditLog
from corridor.mobility.fleet.backend import FleetBackend
from corridor.mobility.fleet.depot import DepotGateway
from corridor.mobility.fleet.keys import (
    FleetDirectory,
    init_fleet_dir,
    load_directory,
    load_sender,
    load_vehicle,
)
from corridor.mobility.fleet.policy import FleetPolicy, example_policy, load_policy
from corridor.mobility.fleet.transport import MqttLink, broker_reachable
from corridor.mobility.fleet.vehicle import SimulatedVehicle
from tests.hybrid.session_helpers import FakeQkd, SharedPool

AUDIT_KEY = bytes(range(32))
VEHICLES = ("v-001", "v-002")


def require_broker() -> None:
    """Skip without Mosquitto at 127.0.0.1:1883, except under CI=true: then fail."""
    if broker_reachable():
        return
    message = ("Mosquitto is not reachable at 127.0.0.1:1883 (start it with "
               "`mosquitto -d`, or let scripts/test do it)")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def make_fleet_dir(root: Path, depot_id: str) -> tuple[Path, FleetDirectory, FleetPolicy]:
    directory = root / "fleet"
    init_fleet_dir(directory, senders=["alice", "bob"], vehicles=list(VEHICLES),
                   policy_text=example_policy(depot_id, list(VEHICLES)))
    return directory, load_directory(directory), load_policy(directory / "policy.toml")


class Sniffer:
    """A third MQTT client subscribed to every fleet topic: what the broker sees."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.link = MqttLink(f"sniffer-{os.urandom(4).hex()}").start()
        self.link.subscribe("corridor/fleet/#", self._on)

    def _on(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def on(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t.endswith(suffix)]


@dataclass
class Fleet:
    root: Path
    depot_id: str
    keys_dir: Path
    directory: FleetDirectory
    policy: FleetPolicy
    depot: DepotGateway
    vehicles: dict[str, SimulatedVehicle]
    backend: FleetBackend
    sniffer: Sniffer
    audits: dict[str, AuditLog] = field(default_factory=dict)

    def sender(self, name: str) -> Any:
        return load_sender(self.keys_dir, name)


def wait_for(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


@contextmanager
def running_fleet(root: Path, *, qkd_backend: QkdKeySource | None = None,
                  qkd_depot: QkdKeySource | None = None) -> Iterator[Fleet]:
    require_broker()
    depot_id = f"depot-{os.urandom(4).hex()}"
    keys_dir, directory, policy = make_fleet_dir(root, depot_id)
    pool = SharedPool()
    with ExitStack() as stack:
        audits: dict[str, AuditLog] = {}

        def audit(name: str) -> AuditLog:
            log = AuditLog(root / f"{name}-audit.jsonl", AUDIT_KEY)
            stack.callback(log.close)
            audits[name] = log
            return log

        def link(name: str) -> MqttLink:
            mqtt = MqttLink(f"{name}-{depot_id}").start()
            stack.callback(mqtt.close)
            return mqtt

        sniffer = Sniffer()
        stack.callback(sniffer.link.close)
        depot = DepotGateway(depot_id, "sae-b", {"sae-a": "both-required"},
                             qkd_depot or FakeQkd(pool), directory, policy, link("depot"),
                             events=audit("depot"))
        stack.callback(depot.close)
        depot.start()
        vehicles = {}
        for vehicle_id in VEHICLES:
            vehicle = SimulatedVehicle(load_vehicle(keys_dir, vehicle_id), depot_id, directory,
                                       policy, link(vehicle_id), events=audit(vehicle_id))
            vehicle.start()
            vehicles[vehicle_id] = vehicle
        backend = FleetBackend("sae-a", "sae-b", depot_id, qkd_backend or FakeQkd(pool),
                               directory, link("backend"))
        stack.callback(backend.close)
        backend.start()
        yield Fleet(root, depot_id, keys_dir, directory, policy, depot, vehicles, backend,
                    sniffer, audits)
