"""OTA figures (issue 12): metadata sizes per role and scheme, verification time on the
vehicle, and a campaign to a fleet of simulated vehicles.

Everything runs in this one process on 127.0.0.1: the OTA server (both repositories and
the director, HTTPS) and the vehicles, each a primary ECU (telematics) with a brakes
secondary, each with its own trusted metadata and slots. Measured:

- ``sizes``: bytes of each role's metadata file (python-tuf's JSON serializer, indent 1)
  of the image repository (with a supplier delegation and one release) and of a
  vehicle's director repository (a one-image bundle), with every role's key Ed25519
  alone, ML-DSA-65 alone, and hybrid (one key whose signature is both);
- ``verify_ms``: on the vehicle, the signature checks of every role of both repositories
  (the stock ``verify_delegate`` of python-tuf, hybrid keys), median of ``--ops``; and a
  vehicle's whole first update (both repositories refreshed over HTTPS, bundle checked,
  64 KiB image downloaded, decrypted, installed, manifest signed and posted), median
  over the first ``--ops`` vehicles of the campaign;
- ``campaign``: ``--vehicles`` vehicles (a new OTA directory: keys, one director
  repository each), one release, the campaign key OEM -> regional over a hybrid session
  (``pqc-required``: no corridor here, X-Wing alone), wrapped to and assigned to every
  vehicle, then every vehicle updating with ``--workers`` at a time: wall time, bytes
  and requests served, vehicles installed.

Prints one JSON object.

    .venv/bin/python benchmarks/bench_ota.py [--vehicles 1000] [--workers 8] [--ops 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root, Targets

from corridor.mobility.ota.backend import assign, init_ota, release
from corridor.mobility.ota.director import Director
from corridor.mobility.ota.keys import SCHEMES
from corridor.mobility.ota.primary import Limits, PrimaryEcu
from corridor.mobility.ota.regional import transfer_campaign_key
from corridor.mobility.ota.server import OtaServer
from corridor.mobility.ota.slots import make_firmware

IMAGE_BYTES = 64 * 1024


def _transfer(campaign_id: str, key: bytearray) -> tuple[bytearray, dict[str, Any]]:
    received, record = transfer_campaign_key(
        campaign_id, key, oem_sae_id="oem", regional_sae_id="regional",
        policy="pqc-required", oem_qkd=None, regional_qkd=None)
    return received, record.as_dict()


def _world(path: Path, vehicles: int, scheme: str) -> Any:
    ota = init_ota(path, [f"v-{n:04d}" for n in range(1, vehicles + 1)], scheme=scheme)
    record = release(ota, make_firmware("telematics-hw", 2, IMAGE_BYTES),
                     "oem/telematics-2.bin", version=2, hardware_id="telematics-hw")
    brakes = release(ota, make_firmware("brakes-hw", 2, IMAGE_BYTES),
                     "brakes-co/brakes-2.bin", version=2, hardware_id="brakes-hw")
    return ota, record["campaign_id"], brakes["campaign_id"]


def sizes(scratch: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scheme in SCHEMES:
        ota, campaign, brakes = _world(scratch / f"sizes-{scheme}", 1, scheme)
        assign(ota, campaign, ["v-0001"], _transfer)
        assign(ota, brakes, ["v-0001"], _transfer)
        out[scheme] = {"image": ota.image_repo().role_sizes_bytes(),
                       "director": ota.director_repo("v-0001").role_sizes_bytes()}
    return out


def verify_roles_ms(metadata_dir: Path, ops: int) -> float:
    """Median ms to verify every role's signatures of one repository as the vehicle has it."""
    root = Metadata[Root].from_file(str(metadata_dir / "root.json"))
    files = {role: Metadata.from_file(str(metadata_dir / f"{role}.json"))
             for role in ("targets", "snapshot", "timestamp")}
    targets = files["targets"].signed
    assert isinstance(targets, Targets)
    delegated = {name: Metadata.from_file(str(metadata_dir / f"{name}.json"))
                 for name in (targets.delegations.roles or {} if targets.delegations else {})
                 if (metadata_dir / f"{name}.json").exists()}
    times = []
    for _ in range(ops):
        started = time.perf_counter()
        root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
        for role, md in files.items():
            root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
        for name, md in delegated.items():
            targets.verify_delegate(name, md.signed_bytes, md.signatures)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def campaign(scratch: Path, vehicles: int, workers: int, ops: int) -> dict[str, Any]:
    started = time.perf_counter()
    ota, campaign_id, brakes = _world(scratch / "campaign", vehicles, "hybrid")
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    fleet = sorted(ota.vehicles)
    assign(ota, campaign_id, fleet, _transfer)
    assign(ota, brakes, fleet, _transfer)
    assign_s = time.perf_counter() - started
    director = Director(ota)
    per_vehicle_s: list[float] = []
    with OtaServer(ota.path, on_manifest=director.receive) as server:
        def one(vehicle_id: str) -> str:
            t0 = time.perf_counter()
            result = PrimaryEcu.of(ota, vehicle_id, server.url,
                                   limits=Limits(time_limit_s=120)).update()
            per_vehicle_s.append(time.perf_counter() - t0)
            return result.result
        # The first vehicles alone: one update's time without other vehicles' load.
        alone = [one(v) for v in fleet[:ops]]
        alone_s = list(per_vehicle_s)
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = alone + list(pool.map(one, fleet[ops:]))
        wall_s = time.perf_counter() - started
        served = server.status()
    state = ota.vehicle_state(fleet[0])
    return {"vehicles": vehicles, "workers": workers, "image_bytes": IMAGE_BYTES,
            "setup_s": round(setup_s, 1), "assign_s": round(assign_s, 1),
            "update_wall_s": round(wall_s, 1),
            "updates_per_s": round((vehicles - ops) / wall_s, 1) if vehicles > ops else None,
            "installed": results.count("installed"),
            "refused": len(results) - results.count("installed"),
            "bytes_served": served["bytes_served"], "requests": served["requests"],
            "bytes_per_vehicle": served["bytes_served"] // vehicles,
            "first_update_ms_median": round(statistics.median(alone_s) * 1000, 1),
            "verify_ms": {"image_repo_all_roles": verify_roles_ms(state / "image-metadata",
                                                                  ops),
                          "director_all_roles": verify_roles_ms(state / "director-metadata",
                                                                ops)},
            "director_states": {s: sum(1 for r in director.status() if r["state"] == s)
                                for s in ("installed", "refused", "assigned")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--ops", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corridor-bench-ota-") as scratch:
        out = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "sizes": sizes(Path(scratch)),
               "campaign": campaign(Path(scratch), args.vehicles, args.workers,
                                    min(args.ops, args.vehicles))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
