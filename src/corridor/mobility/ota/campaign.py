"""A small OTA campaign run in the background: what ``corridor up`` shows live.

This module owns :class:`OtaCampaign`: in ``ota_dir`` (created on first start with
``vehicle_count`` vehicles, each a telematics primary and a brakes secondary) it starts
the HTTPS server, releases a telematics image (next version), assigns it to every
vehicle (the campaign key over the hybrid session between the OEM SAE and the regional
SAE: QKD from their KMEs + X-Wing, the pair's policy), then lets each simulated vehicle
update in turn. With ``release_interval_s`` > 0 it does so again every interval. A
campaign whose key could not cross (the corridor has no QKD key yet, and the policy
requires one) is retried every ``retry_interval_s`` with the same release.
Everything runs in one thread; :meth:`OtaCampaign.status` returns plain data, with one
row per vehicle (ID, state, installed version, last error) that the dashboard shows.

The hybrid session's decisions are audited in ``ota_dir/audit/hybrid.jsonl``
(HMAC-chained under ``ota_dir/audit-key.hex``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from contextlib import ExitStack
from http import HTTPStatus
from pathlib import Path
from typing import Any

from corridor.hybrid.policy import DecisionRecorder
from corridor.hybrid.qkd import QkdKeySource
from corridor.kms.audit import AuditLog
from corridor.mobility.ota.backend import (
    CONFIG_FILE,
    PRIMARY_HARDWARE,
    OtaDirectory,
    assign,
    init_ota,
    release,
)
from corridor.mobility.ota.director import Director
from corridor.mobility.ota.primary import Limits, PrimaryEcu
from corridor.mobility.ota.regional import transfer_campaign_key
from corridor.mobility.ota.server import OtaServer
from corridor.mobility.ota.slots import make_firmware

AUDIT_KEY_FILE = "audit-key.hex"
IMAGE_SIZE_BYTES = 64 * 1024


def _audit_key(ota_dir: Path) -> bytes:
    path = ota_dir / AUDIT_KEY_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(os.urandom(32).hex() + "\n")
    return bytes.fromhex(path.read_text().strip())


class OtaCampaign:
    """Server, director and simulated vehicles of one OTA directory (module docstring).

    Args:
        ota_dir: the OTA directory (created when missing).
        oem_sae_id, regional_sae_id: the SAEs of the campaign key's hybrid leg.
        policy: their hybrid policy.
        oem_qkd, regional_qkd: each SAE's QKD keys (None: no KME; the policy decides).
        vehicle_count: vehicles of a new directory.
        release_interval_s: a new release every interval (0: one campaign).
        retry_interval_s: the wait before a campaign that failed (no QKD key yet under
            ``both-required``, a KME unreachable) is tried again, the same release.
    """

    def __init__(self, ota_dir: Path, *, oem_sae_id: str, regional_sae_id: str,
                 policy: str = "both-required", oem_qkd: QkdKeySource | None = None,
                 regional_qkd: QkdKeySource | None = None, vehicle_count: int = 3,
                 release_interval_s: float = 0.0, retry_interval_s: float = 5.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.ota_dir = ota_dir
        self.oem_sae_id, self.regional_sae_id = oem_sae_id, regional_sae_id
        self.policy = policy
        self.oem_qkd, self.regional_qkd = oem_qkd, regional_qkd
        self.vehicle_count = vehicle_count
        self.release_interval_s = release_interval_s
        self.retry_interval_s = retry_interval_s
        self.host, self.port = host, port
        self.server: OtaServer | None = None
        self.director: Director | None = None
        self._parts = ExitStack()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "starting"
        self._last_error: str | None = None
        self._campaign: dict[str, Any] | None = None
        self._session: dict[str, Any] | None = None
        self._busy: dict[str, str] = {}
        self._first_done = threading.Event()
        self._assigned = False

    def __repr__(self) -> str:
        return f"OtaCampaign({str(self.ota_dir)!r}, {self.oem_sae_id!r} -> " \
               f"{self.regional_sae_id!r})"

    def start(self) -> None:
        """Start the server (so that :meth:`describe` names its URL), then the campaign
        in the background (:meth:`status` says how far it got)."""
        try:
            self.ota_dir.mkdir(parents=True, exist_ok=True)
            server = OtaServer(self.ota_dir, host=self.host, port=self.port,
                               on_manifest=self._on_manifest).start()
        except Exception as exc:  # a port in use, an unwritable directory: shown
            with self._lock:
                self._state, self._last_error = "down", f"{type(exc).__name__}: {exc}"
            self._first_done.set()
            return
        self._parts.callback(server.close)
        self.server = server
        self._thread = threading.Thread(target=self._run, args=(server,), name="ota-campaign",
                                        daemon=True)
        self._thread.start()

    def _on_manifest(self, vehicle_id: str, body: bytes) -> tuple[int, str]:
        director = self.director
        if director is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, "the director is starting"
        return director.receive(vehicle_id, body)

    def _transfer(self, recorder: DecisionRecorder) -> Any:
        def transfer(campaign_id: str, key: bytearray) -> tuple[bytearray, dict[str, Any]]:
            received, record = transfer_campaign_key(
                campaign_id, key, oem_sae_id=self.oem_sae_id,
                regional_sae_id=self.regional_sae_id, policy=self.policy,
                oem_qkd=self.oem_qkd, regional_qkd=self.regional_qkd, recorder=recorder)
            with self._lock:
                self._session = record.as_dict()
            return received, record.as_dict()
        return transfer

    def _run(self, server: OtaServer) -> None:
        try:
            if not (self.ota_dir / CONFIG_FILE).exists():
                init_ota(self.ota_dir, [f"v-{n:03d}" for n in range(1, self.vehicle_count + 1)])
            ota = OtaDirectory(self.ota_dir)
            audit = AuditLog(self.ota_dir / "audit" / "hybrid.jsonl", _audit_key(self.ota_dir),
                             fsync_interval_s=1.0)
            self._parts.callback(audit.close)
            recorder = DecisionRecorder(audit)
            director = Director(ota)
            with self._lock:
                self.director, self._state = director, "running"
        except Exception as exc:  # a bad directory: shown in the status
            with self._lock:
                self._state, self._last_error = "down", f"{type(exc).__name__}: {exc}"
            self._first_done.set()
            return
        transfer = self._transfer(recorder)
        while not self._stop.is_set():
            try:
                self._one_campaign(ota, server, transfer)
                ok = True
            except Exception as exc:  # a refused hybrid session, a KME gone: shown, retried
                ok = False
                with self._lock:
                    self._last_error = f"{type(exc).__name__}: {exc}"
            self._first_done.set()
            if ok and self.release_interval_s <= 0:
                break
            if self._stop.wait(self.release_interval_s if ok else self.retry_interval_s):
                break
        with self._lock:
            if self._state == "running":
                self._state = "idle"

    def _one_campaign(self, ota: OtaDirectory, server: OtaServer, transfer: Any) -> None:
        """Release (unless the last release is still to be assigned), assign, and let
        each vehicle update."""
        assert self.director is not None
        record = self._campaign
        if record is None or self._assigned:
            rows = self.director.status()
            version = max([1, *(r["installed_version"] for r in rows),
                           *(v for r in rows for v in r["assigned"].values())]) + 1
            record = release(ota, make_firmware(PRIMARY_HARDWARE, version, IMAGE_SIZE_BYTES),
                             f"oem/telematics-{version}.bin", version=version,
                             hardware_id=PRIMARY_HARDWARE)
            with self._lock:
                self._campaign, self._assigned = record, False
        vehicles = sorted(ota.vehicles)
        assign(ota, record["campaign_id"], vehicles, transfer)
        with self._lock:
            self._assigned, self._last_error = True, None
        for vehicle_id in vehicles:
            if self._stop.is_set():
                return
            with self._lock:
                self._busy[vehicle_id] = "updating"
            try:
                PrimaryEcu.of(ota, vehicle_id, server.url,
                              limits=Limits(time_limit_s=10.0)).update()
            finally:
                with self._lock:
                    self._busy.pop(vehicle_id, None)

    def describe(self) -> dict[str, Any]:
        """What ``corridor-up.json`` says about the campaign."""
        server = self.server
        return {"ota_dir": str(self.ota_dir), "oem_sae_id": self.oem_sae_id,
                "regional_sae_id": self.regional_sae_id, "hybrid_policy": self.policy,
                "server": server.url if server is not None else None,
                "ca_file": str(self.ota_dir / "tls" / "ca.pem")}

    def status(self) -> dict[str, Any]:
        """Plain data: state, the server, the campaign, the key's session inputs, and a
        row per vehicle: ``vehicle_id``, ``state``, ``installed_version``,
        ``last_error``."""
        with self._lock:
            server, director = self.server, self.director
            busy = dict(self._busy)
            out: dict[str, Any] = {
                "state": self._state, "last_error": self._last_error,
                "campaign_id": (self._campaign or {}).get("campaign_id"),
                "version": (self._campaign or {}).get("version"),
                "session_inputs": list((self._session or {}).get("inputs") or []),
                "server": server.status() if server is not None else None}
        rows = []
        if director is not None:
            for row in director.status():
                rows.append({"vehicle_id": row["vehicle_id"],
                             "state": busy.get(row["vehicle_id"], row["state"]),
                             "installed_version": row["installed_version"],
                             "last_error": row["last_error"]})
        out["vehicles"] = rows
        return out

    def wait_first(self, timeout_s: float = 60.0) -> bool:
        """Whether the first campaign ended (each vehicle tried) within ``timeout_s``."""
        return self._first_done.wait(timeout_s)

    def close(self) -> None:
        """Stop after the vehicle in progress; close the server and the audit log."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self._parts.close()
        with self._lock:
            self.server = None
            self._state = "stopped"


__all__ = ["OtaCampaign"]
