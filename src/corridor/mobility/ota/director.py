"""The director's view of a campaign: vehicle manifests in, per-vehicle status out.

This module owns :class:`Director`: it checks each manifest a vehicle posts (signature
under the vehicle's registered hybrid key, :mod:`.manifest`; not older than the last one
accepted), keeps the last one in ``<dir>/regional/reports/<vehicle>.json``, and answers
:meth:`Director.status`: for each vehicle, what its bundle assigns, what it last
reported and the campaign state that follows:

- ``idle``: nothing assigned; ``assigned``: a bundle the vehicle has not reported yet;
- ``installed``: every ECU runs what its bundle names;
- ``refused``: the vehicle refused the bundle (``last_error``: the reason and detail);
- ``behind``: the vehicle reported, but runs something else than its bundle.

Assigning bundles is :func:`.backend.assign`'s job.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from typing import Any

from tuf.api.metadata import Targets

from corridor.mobility.ota.backend import OtaDirectory
from corridor.mobility.ota.errors import OtaRefusal
from corridor.mobility.ota.manifest import verify_manifest


class Director:
    """Manifests and campaign status of the vehicles of ``ota``."""

    def __init__(self, ota: OtaDirectory) -> None:
        self.ota = ota
        self.reports_dir = ota.path / "regional" / "reports"
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        self.refused_manifests = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Director({self.ota!r})"

    def report(self, vehicle_id: str) -> dict[str, Any] | None:
        path = self.reports_dir / f"{vehicle_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def receive(self, vehicle_id: str, body: bytes) -> tuple[int, str]:
        """Check and keep one manifest: ``(HTTP status, answer)``."""
        if vehicle_id not in self.ota.config["vehicles"]:
            return HTTPStatus.NOT_FOUND, f"unknown vehicle {vehicle_id}"
        _, key = self.ota.vehicle_public(vehicle_id)
        try:
            signed = verify_manifest(body, vehicle_id, key)
        except OtaRefusal as exc:
            with self._lock:
                self.refused_manifests += 1
            return HTTPStatus.FORBIDDEN, str(exc)
        with self._lock:
            last = self.report(vehicle_id)
            if last is not None and last["reported_at"] >= signed["reported_at"]:
                self.refused_manifests += 1
                return HTTPStatus.CONFLICT, "manifest not newer than the last one accepted"
            tmp = self.reports_dir / f".{vehicle_id}.json.tmp"
            tmp.write_text(json.dumps(signed, indent=1))
            tmp.replace(self.reports_dir / f"{vehicle_id}.json")
        return HTTPStatus.OK, "accepted"

    def bundle(self, vehicle_id: str) -> dict[str, dict[str, Any]]:
        """``{ecu_id: {"target", "version", "campaign_id"}}`` of the vehicle's bundle."""
        targets = self.ota.director_repo(vehicle_id, {}).open(Targets.type).signed.targets
        return {t.custom["ecu_id"]: {"target": path, "version": t.custom["version"],
                                     "campaign_id": t.custom["campaign_id"]}
                for path, t in targets.items()}

    def vehicle_status(self, vehicle_id: str) -> dict[str, Any]:
        bundle = self.bundle(vehicle_id)
        report = self.report(vehicle_id)
        ecus = self.ota.vehicles[vehicle_id]
        primary = next(iter(ecus))
        installed = {e: v.get("version", 0) for e, v in (report or {}).get("ecus", {}).items()}
        if not bundle:
            state = "idle"
        elif report is None:
            state = "assigned"
        elif report["result"] == "refused":
            state = "refused"
        elif all(installed.get(e) == b["version"] for e, b in bundle.items()):
            state = "installed"
        else:
            state = "behind"
        error = (f"{report['reason']}: {report['detail']}"
                 if report is not None and report.get("reason") else None)
        return {"vehicle_id": vehicle_id, "state": state,
                "installed_version": installed.get(primary, 0), "installed": installed,
                "assigned": {e: b["version"] for e, b in bundle.items()},
                "campaigns": sorted({b["campaign_id"] for b in bundle.values()}),
                "last_error": error,
                "reported_at": report["reported_at"] if report is not None else None}

    def status(self) -> list[dict[str, Any]]:
        """:meth:`vehicle_status` of every vehicle, by ID."""
        return [self.vehicle_status(v) for v in sorted(self.ota.config["vehicles"])]


__all__ = ["Director"]
