"""A small running fleet fed by a corridor's SAEs: what ``corridor up`` shows live.

This module owns :class:`FleetEnclave`: one back end (the master SAE of a pair), one depot
gateway (the slave SAE), a few simulated vehicles, all on the MQTT broker, the back
end-to-depot session keyed by QKD from the two SAEs' KMEs + X-Wing (CatKDF, the pair's
hybrid policy). A traffic thread sends one command every ``command_interval_s`` (cycling
through remote diagnostics, route change, geofence update and immobilise, from the
dispatcher and the security officer, so that the live status shows refusals by the
role policy too), and :meth:`FleetEnclave.status` returns plain data. When the broker is
down it says so and retries every ``retry_interval_s``.

State lives in ``fleet_dir`` (created on first start: identities, ``public.json``,
``policy.toml``, ``audit-key.hex``; :mod:`.keys`), the audit logs in
``fleet_dir/audit/<party>.jsonl`` (depot, each vehicle, ``hybrid`` for the session's
policy decisions), HMAC-chained under the fleet's audit key: ``corridor audit verify
<log> --kek-file <fleet_dir>/audit-key.hex`` checks one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from corridor.hybrid.policy import DecisionRecorder
from corridor.hybrid.qkd import KmeQkdKeys
from corridor.kms.audit import AuditLog
from corridor.kms.client import SaeClient
from corridor.mobility.fleet.backend import AckRecord, FleetBackend, SequenceStore
from corridor.mobility.fleet.commands import (
    GEOFENCE_UPDATE,
    IMMOBILISE,
    REMOTE_DIAGNOSTICS,
    ROUTE_CHANGE,
)
from corridor.mobility.fleet.depot import DepotGateway
from corridor.mobility.fleet.keys import (
    POLICY_FILE,
    PUBLIC_FILE,
    init_fleet_dir,
    load_audit_key,
    load_directory,
    load_sender,
    load_vehicle,
)
from corridor.mobility.fleet.policy import example_policy, load_policy
from corridor.mobility.fleet.transport import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    MqttLink,
    depot_client_id,
    vehicle_client_id,
)
from corridor.mobility.fleet.vehicle import SimulatedVehicle

_log = logging.getLogger(__name__)

OFFICER, DISPATCHER = "alice", "bob"
TRAFFIC: tuple[tuple[str, str, dict[str, str]], ...] = (
    (DISPATCHER, REMOTE_DIAGNOSTICS, {"scope": "dtc"}),
    (DISPATCHER, ROUTE_CHANGE, {"route_id": "r-12", "waypoints": "52.370,4.890;52.380,4.910"}),
    (OFFICER, GEOFENCE_UPDATE, {"polygon": "52.36,4.88;52.39,4.88;52.39,4.93",
                                "action": "alert"}),
    (DISPATCHER, IMMOBILISE, {}),  # refused: a dispatcher may not immobilise
    (OFFICER, IMMOBILISE, {"mode": "next-stop"}),
)
"""What the traffic thread sends, in turn, to the vehicles in turn."""


def ensure_fleet_dir(fleet_dir: Path, depot_id: str, vehicle_count: int) -> None:
    """Create the fleet's identities and policy unless ``fleet_dir`` already has them."""
    if (fleet_dir / PUBLIC_FILE).exists():
        return
    vehicles = [f"v-{n:03d}" for n in range(1, vehicle_count + 1)]
    init_fleet_dir(fleet_dir, senders=[OFFICER, DISPATCHER], vehicles=vehicles,
                   policy_text=example_policy(depot_id, vehicles, officer=OFFICER,
                                              dispatcher=DISPATCHER))


class FleetEnclave:
    """A depot, vehicles and a back end fed by two SAEs (module docstring).

    Args:
        backend_client, depot_client: each SAE's client of its own KME (closed by
            :meth:`close`).
        backend_sae_id, depot_sae_id: the SAE IDs (master and slave of the QKD keys).
        fleet_dir: the fleet's state directory.
        hybrid_policy: the pair's hybrid policy.
        depot_id: the depot's fleet ID (default ``depot-<depot_sae_id>``).
        vehicle_count: vehicles created in a new ``fleet_dir``.
        host, port: the MQTT broker.
        command_interval_s: one command per interval (0: no traffic thread).
        link_check: returns ``link_quarantined`` while the link feeding the pair must not
            be used (as for ``corridor up``'s hybrid sessions).
    """

    def __init__(self, backend_client: SaeClient, depot_client: SaeClient, backend_sae_id: str,
                 depot_sae_id: str, fleet_dir: Path, *, hybrid_policy: str = "both-required",
                 depot_id: str | None = None, vehicle_count: int = 3,
                 host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 command_interval_s: float = 5.0, retry_interval_s: float = 10.0,
                 link_check: Any = None) -> None:
        self.backend_client = backend_client
        self.depot_client = depot_client
        self.backend_sae_id = backend_sae_id
        self.depot_sae_id = depot_sae_id
        self.fleet_dir = fleet_dir
        self.hybrid_policy = hybrid_policy
        self.depot_id = depot_id or f"depot-{depot_sae_id}"
        self.vehicle_count = vehicle_count
        self.host, self.port = host, port
        self.command_interval_s = command_interval_s
        self.retry_interval_s = retry_interval_s
        self.link_check = link_check
        self.backend: FleetBackend | None = None
        self.depot: DepotGateway | None = None
        self.vehicles: list[SimulatedVehicle] = []
        self._parts = ExitStack()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "starting"
        self._last_error: str | None = None
        self._acks: Counter[str] = Counter()
        self._last_ack: dict[str, Any] | None = None
        self._sent = 0
        self._send_failures = 0

    @classmethod
    def for_corridor(cls, corridor: Any, **options: Any) -> FleetEnclave:
        """A fleet on a running :class:`corridor.kms.node.Corridor`: back end and depot
        are the first ``[[hybrid]]`` pair's master and slave SAEs (else the first two
        SAEs at different KMEs), the fleet's state in ``<workdir>/fleet``."""
        spec = corridor.spec
        if spec.hybrid:
            pair = spec.hybrid[0]
            backend_sae, depot_sae, policy = pair.master_sae_id, pair.slave_sae_id, pair.policy
        else:
            saes = list(spec.saes)
            backend_sae = saes[0]
            depot_sae = next(s for s in saes if spec.saes[s] != spec.saes[backend_sae])
            policy = "both-required"
        pki = corridor.pki

        def client(sae_id: str) -> SaeClient:
            kme_id = spec.saes[sae_id]
            paths = pki.saes[sae_id]
            return SaeClient(corridor.nodes[kme_id].url or "", paths.cert, paths.key,
                             pki.ca_cert, expected_kme_id=kme_id, max_connections=2)

        link = spec.directory().link_between(spec.saes[backend_sae], spec.saes[depot_sae])
        monitor = corridor.monitor

        def link_check() -> str | None:
            if link is not None and monitor is not None and monitor.is_quarantined(link.link_id):
                return "link_quarantined"
            return None

        options.setdefault("hybrid_policy", policy)
        options.setdefault("link_check", link_check)
        return cls(client(backend_sae), client(depot_sae), backend_sae, depot_sae,
                   corridor.workdir / "fleet", **options)

    def __repr__(self) -> str:
        return (f"FleetEnclave({self.backend_sae_id!r} -> {self.depot_sae_id!r}, "
                f"depot={self.depot_id!r})")

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start in the background (the broker may still be down: :meth:`status` says)."""
        self._thread = threading.Thread(target=self._run, name="fleet-enclave", daemon=True)
        self._thread.start()

    def _audit(self, key: bytes, party: str) -> AuditLog:
        log = AuditLog(self.fleet_dir / "audit" / f"{party}.jsonl", key, fsync_interval_s=1.0)
        self._parts.callback(log.close)
        return log

    def _link(self, name: str, client_id: str | None = None, *, start: bool = True
              ) -> MqttLink:
        link = MqttLink(client_id or f"corridor-{name}-{os.urandom(3).hex()}", self.host,
                        self.port, persistent=client_id is not None)
        self._parts.callback(link.close)
        return link.start() if start else link

    def _bring_up(self) -> None:
        ensure_fleet_dir(self.fleet_dir, self.depot_id, self.vehicle_count)
        directory = load_directory(self.fleet_dir)
        policy = load_policy(self.fleet_dir / POLICY_FILE)
        key = load_audit_key(self.fleet_dir)
        recorder = DecisionRecorder(self._audit(key, "hybrid"))
        depot = DepotGateway(
            self.depot_id, self.depot_sae_id, {self.backend_sae_id: self.hybrid_policy},
            KmeQkdKeys(self.depot_client, link_check=self.link_check), directory, policy,
            self._link(self.depot_id, depot_client_id(self.depot_id)),
            events=self._audit(key, self.depot_id),
            recorder=recorder, state_path=self.fleet_dir / "state" / f"{self.depot_id}.json")
        self._parts.callback(depot.close)
        depot.start()
        vehicles = []
        for vehicle_id in sorted(v for v in directory.vehicles if v in policy.vehicles
                                 and policy.vehicles[v] == self.depot_id):
            link = self._link(vehicle_id, vehicle_client_id(self.depot_id, vehicle_id),
                              start=False)
            vehicle = SimulatedVehicle(load_vehicle(self.fleet_dir, vehicle_id), self.depot_id,
                                       directory, policy, link,
                                       events=self._audit(key, vehicle_id),
                                       state_path=self.fleet_dir / "state" / f"{vehicle_id}.json")
            vehicle.start()  # handler first: queued commands arrive as soon as it connects
            link.start()
            vehicles.append(vehicle)
        backend = FleetBackend(self.backend_sae_id, self.depot_sae_id, self.depot_id,
                               KmeQkdKeys(self.backend_client, link_check=self.link_check),
                               directory, self._link("backend"), hybrid_policy=self.hybrid_policy,
                               recorder=recorder,
                               sequences=SequenceStore(self.fleet_dir / "sequences.json"))
        self._parts.callback(backend.close)
        backend.on_ack = self._on_ack
        with self._lock:
            self.depot, self.vehicles, self.backend = depot, vehicles, backend
        backend.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._bring_up()
            except Exception as exc:  # broker down, KME refused, policy missing QKD key
                self._tear_down(f"{type(exc).__name__}: {exc}")
                self._stop.wait(self.retry_interval_s)
                continue
            with self._lock:
                self._state, self._last_error = "running", None
            self._traffic()
            return

    def _traffic(self) -> None:
        if self.command_interval_s <= 0:
            self._stop.wait()
            return
        senders = {name: load_sender(self.fleet_dir, name) for name in (OFFICER, DISPATCHER)}
        plan = itertools.cycle(TRAFFIC)
        turn = itertools.count()
        while not self._stop.wait(self.command_interval_s):
            backend, vehicles = self.backend, self.vehicles
            if backend is None or not vehicles:
                return
            sender, command_type, params = next(plan)
            vehicle = vehicles[next(turn) % len(vehicles)]
            try:
                backend.send(senders[sender], vehicle.vehicle_id, command_type, params)
                with self._lock:
                    self._sent += 1
            except Exception as exc:  # a refused re-key, the broker gone: shown, retried
                with self._lock:
                    self._send_failures += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"

    def _on_ack(self, record: AckRecord) -> None:
        with self._lock:
            self._acks[f"{record.source}:{record.status}"] += 1
            self._last_ack = {"command_id": record.command_id, "source": record.source,
                              "status": record.status, "reason": record.reason,
                              "vehicle_id": record.vehicle_id}

    def _tear_down(self, error: str | None) -> None:
        with self._lock:
            self.backend, self.depot, self.vehicles = None, None, []
            self._state = "down" if error else "stopped"
            self._last_error = error
        with contextlib.suppress(Exception):
            self._parts.close()
        self._parts = ExitStack()

    def close(self) -> None:
        """Stop traffic, close every party (keys wiped), the audit logs and both clients."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._tear_down(None)
        for client in (self.backend_client, self.depot_client):
            with contextlib.suppress(Exception):
                client.close()

    # -- what the live status shows ----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``corridor-up.json`` could say about the fleet (paths as given)."""
        return {"backend_sae_id": self.backend_sae_id, "depot_sae_id": self.depot_sae_id,
                "depot_id": self.depot_id, "broker": f"{self.host}:{self.port}",
                "fleet_dir": str(self.fleet_dir), "audit_dir": str(self.fleet_dir / "audit"),
                "hybrid_policy": self.hybrid_policy}

    def status(self) -> dict[str, Any]:
        """Plain data: state, the session's inputs, commands sent, acks by outcome,
        refusals per party and reason, each vehicle's state."""
        with self._lock:
            backend, depot, vehicles = self.backend, self.depot, list(self.vehicles)
            out: dict[str, Any] = {
                "state": self._state, "last_error": self._last_error,
                "broker": f"{self.host}:{self.port}", "depot_id": self.depot_id,
                "backend_sae_id": self.backend_sae_id, "depot_sae_id": self.depot_sae_id,
                "commands_sent": self._sent, "send_failures": self._send_failures,
                "acks": dict(self._acks), "last_ack": self._last_ack}
        out["session"] = backend.status() if backend is not None else None
        out["depot"] = depot.status() if depot is not None else None
        out["vehicles"] = [{k: v for k, v in vehicle.status().items() if k != "recent"}
                           for vehicle in vehicles]
        return out

    def wait_running(self, timeout_s: float = 30.0) -> bool:
        """Whether the fleet reached ``running`` within ``timeout_s`` (tests, demos)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.status()["state"] == "running":
                return True
            time.sleep(0.05)
        return False


__all__ = ["TRAFFIC", "FleetEnclave", "ensure_fleet_dir"]
