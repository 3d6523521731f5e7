"""The OTA back end on disk: keys, the image repository, the director and the fleet list.

This module owns the OTA directory (``corridor ota init`` creates it) and the two
back-end jobs that change it:

- :func:`release` (OEM): a new campaign key, the firmware encrypted under it
  (:mod:`.images`), signed into the image repository (top-level targets, or the
  supplier's delegated role for paths under ``<supplier>/``), published;
- :func:`assign` (regional site, the director): the campaign key brought over the hybrid
  session (:mod:`.regional`) once per campaign, wrapped to each vehicle's ML-KEM-768 key,
  and signed into that vehicle's director repository with the ECU it is for.

Layout::

    <dir>/ota.json                      scheme, suppliers, vehicles and their ECUs
    <dir>/vehicles.json                 each vehicle's ML-KEM-768 and manifest public keys
    <dir>/keys/oem/<role>.json          image repository keys (root, targets: offline)
    <dir>/keys/regional/<role>.json     director keys (online at the regional site)
    <dir>/keys/vehicles/<id>.json       a vehicle's private keys (they live in the vehicle)
    <dir>/image/{metadata,targets}/     the image repository
    <dir>/director/<vehicle>/metadata/  each vehicle's director repository
    <dir>/oem/campaigns/<id>.json       a release and its campaign key (mode 0600)
    <dir>/regional/campaigns/<id>.json  the key as the regional site received it (0600)
    <dir>/regional/reports/<id>.json    each vehicle's last verified manifest
    <dir>/vehicle-state/<id>/           the simulated vehicle's own storage

In a real deployment the OEM keys sit in an HSM and never share a disk with the
director's (docs/ota.md); here one directory holds every party so that one machine
runs the whole chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import TargetFile, Targets

from corridor.errors import ParameterError
from corridor.mobility.fleet.sealing import VehicleKemKey, wipe
from corridor.mobility.fleet.wire import check_fleet_id
from corridor.mobility.ota.images import encrypt_image, new_campaign_key, wrap_for_vehicle
from corridor.mobility.ota.keys import HYBRID, SCHEMES, load_signer, new_signer, write_signer
from corridor.mobility.ota.repository import TOP_ROLES, TufRepository

CONFIG_FILE = "ota.json"
VEHICLES_FILE = "vehicles.json"
PRIMARY_HARDWARE = "telematics-hw"
SECONDARY_HARDWARE = "brakes-hw"
DEFAULT_SUPPLIER = "brakes-co"

KeyTransfer = Callable[[str, bytearray], tuple[bytearray, dict[str, Any]]]
"""``(campaign ID, key at the OEM) -> (key at the regional site, session record)``."""


def _write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=1)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")  # ECU order: the primary first
    tmp.replace(path)


@dataclass(frozen=True)
class VehicleKeys:
    """A vehicle's private keys: its manifest signer and its ML-KEM-768 key."""

    vehicle_id: str
    signer: Signer
    kem_key: VehicleKemKey

    def __repr__(self) -> str:
        return f"VehicleKeys({self.vehicle_id!r}, keys not shown)"


class OtaDirectory:
    """The OTA directory (module docstring): paths, the fleet list, the keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.config: dict[str, Any] = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            raise ParameterError("--dir", str(path), "an OTA directory (corridor ota init)") \
                from None

    def __repr__(self) -> str:
        return f"OtaDirectory({str(self.path)!r})"

    # -- the fleet -----------------------------------------------------------------

    @property
    def vehicles(self) -> dict[str, dict[str, str]]:
        """Each vehicle's ECUs: ``{vehicle: {ecu_id: hardware_id}}``; the first ECU is
        the primary."""
        return {v: dict(e) for v, e in self.config["vehicles"].items()}

    def check_vehicle(self, vehicle_id: str, field: str = "--vehicle") -> str:
        if vehicle_id not in self.config["vehicles"]:
            raise ParameterError(field, vehicle_id, f"a vehicle of {self.path / CONFIG_FILE}")
        return vehicle_id

    def vehicle_public(self, vehicle_id: str) -> tuple[bytes, Key]:
        """``(ML-KEM-768 public key, manifest verification key)``."""
        data = json.loads((self.path / VEHICLES_FILE).read_text())[vehicle_id]
        return bytes.fromhex(data["mlkem768"]), Key.from_dict(data["keyid"], dict(data["key"]))

    def vehicle_keys(self, vehicle_id: str) -> VehicleKeys:
        path = self.path / "keys" / "vehicles" / f"{check_fleet_id('vehicle_id', vehicle_id)}"
        data = json.loads(path.with_suffix(".kem.json").read_text())
        return VehicleKeys(vehicle_id, load_signer(path.with_suffix(".json")),
                           VehicleKemKey(bytes.fromhex(data["mlkem768_seed"])))

    def vehicle_state(self, vehicle_id: str) -> Path:
        return self.path / "vehicle-state" / vehicle_id

    # -- repositories --------------------------------------------------------------

    def _signers(self, party: str) -> dict[str, list[Signer]]:
        out: dict[str, list[Signer]] = {}
        for path in sorted((self.path / "keys" / party).glob("*.json")):
            out.setdefault(path.stem, []).append(load_signer(path))
        return out

    def image_repo(self) -> TufRepository:
        return TufRepository(self.path / "image", self._signers("oem"))

    def director_repo(self, vehicle_id: str, signers: Mapping[str, Sequence[Signer]] | None
                      = None) -> TufRepository:
        return TufRepository(self.path / "director" / self.check_vehicle(vehicle_id),
                             signers if signers is not None else self._signers("regional"))

    def regional_signers(self) -> dict[str, list[Signer]]:
        return self._signers("regional")

    # -- campaigns -----------------------------------------------------------------

    def campaign(self, campaign_id: str) -> dict[str, Any]:
        """A release's public record (no key)."""
        try:
            data = json.loads((self.path / "oem" / "campaigns" / f"{campaign_id}.json")
                              .read_text())
        except (OSError, ValueError):
            raise ParameterError("campaign", campaign_id, "a campaign of corridor ota release "
                                 f"({', '.join(self.campaigns()) or 'none yet'})") from None
        return {k: v for k, v in data.items() if k != "key"}

    def campaigns(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "oem" / "campaigns").glob("*.json"))

    def _campaign_key(self, party: str, campaign_id: str) -> bytearray | None:
        path = self.path / party / "campaigns" / f"{campaign_id}.json"
        if not path.exists():
            return None
        return bytearray(bytes.fromhex(json.loads(path.read_text())["key"]))


def init_ota(path: Path, vehicle_ids: Sequence[str], *, scheme: str = HYBRID,
             suppliers: Sequence[str] = (DEFAULT_SUPPLIER,), secondaries: bool = True,
             root_threshold: int = 1) -> OtaDirectory:
    """Create the OTA directory: keys of every role of both repositories (``scheme``
    each; ``root_threshold`` root keys per repository), both repositories (each vehicle
    its own director repository), each supplier's delegation, the vehicles' keys, and
    each vehicle's factory-installed roots."""
    if scheme not in SCHEMES:
        raise ParameterError("--scheme", scheme, f"one of {list(SCHEMES)}")
    if (path / CONFIG_FILE).exists():
        raise ParameterError("--dir", str(path), "a directory without an OTA back end in it "
                             f"({CONFIG_FILE} exists)")
    for vid in vehicle_ids:
        check_fleet_id("--vehicle", vid)
    for supplier in suppliers:
        check_fleet_id("--supplier", supplier)
    keys = path / "keys"
    signers: dict[str, dict[str, list[Signer]]] = {}
    for party in ("oem", "regional"):
        signers[party] = {}
        for role in TOP_ROLES:
            count = root_threshold if role == "root" else 1
            role_signers = [new_signer(scheme) for _ in range(count)]
            for n, signer in enumerate(role_signers):
                write_signer(keys / party / (f"{role}.json" if n == 0 else f"{role}.{n}.json"),
                             signer)
            signers[party][role] = role_signers
    thresholds = {"root": root_threshold}
    image = TufRepository.create(path / "image", signers["oem"], thresholds=thresholds)
    for supplier in suppliers:
        signer = new_signer(scheme)
        write_signer(keys / "oem" / f"supplier-{supplier}.json", signer)
        image.signers[f"supplier-{supplier}"] = [signer]
        image.delegate(f"supplier-{supplier}", [signer.public_key], [f"{supplier}/*"])
    image.publish()
    vehicles: dict[str, dict[str, str]] = {}
    public: dict[str, Any] = {}
    for vid in vehicle_ids:
        ecus = {f"{vid}-telematics": PRIMARY_HARDWARE}
        if secondaries:
            ecus[f"{vid}-brakes"] = SECONDARY_HARDWARE
        vehicles[vid] = ecus
        manifest_signer = new_signer(HYBRID)
        kem = VehicleKemKey.generate()
        write_signer(keys / "vehicles" / f"{vid}.json", manifest_signer)
        _write_private_json(keys / "vehicles" / f"{vid}.kem.json",
                            {"mlkem768_seed": kem.seed().hex()})
        public[vid] = {"mlkem768": kem.public_bytes.hex(),
                       "keyid": manifest_signer.public_key.keyid,
                       "key": manifest_signer.public_key.to_dict(), "ecus": ecus}
        director = TufRepository.create(path / "director" / vid, signers["regional"],
                                        thresholds=thresholds)
        state = path / "vehicle-state" / vid
        state.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image.metadata_dir / "1.root.json", state / "image-root.json")
        shutil.copyfile(director.metadata_dir / "1.root.json", state / "director-root.json")
    _write_json(path / VEHICLES_FILE, public)
    _write_json(path / CONFIG_FILE, {"scheme": scheme, "suppliers": list(suppliers),
                                     "vehicles": vehicles})
    return OtaDirectory(path)


def release(ota: OtaDirectory, firmware: bytes, target_path: str, *, version: int,
            hardware_id: str, campaign_id: str | None = None) -> dict[str, Any]:
    """Encrypt ``firmware`` under a new campaign key and sign it into the image
    repository (a path under ``<supplier>/`` goes to that supplier's role); the
    campaign's public record."""
    if version < 1:
        raise ParameterError("--version", version, "an integer >= 1")
    hardware = {h for ecus in ota.vehicles.values() for h in ecus.values()}
    if hardware_id not in hardware:
        raise ParameterError("--hardware-id", hardware_id, f"one of {sorted(hardware)}")
    campaign_id = campaign_id or f"c-{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}-{os.urandom(2).hex()}"
    check_fleet_id("campaign_id", campaign_id)
    if campaign_id in ota.campaigns():
        raise ParameterError("campaign", campaign_id, "a campaign ID not used yet")
    supplier = target_path.split("/", 1)[0] if "/" in target_path else None
    role = (f"supplier-{supplier}" if supplier in ota.config["suppliers"] else Targets.type)
    repo = ota.image_repo()
    key = new_campaign_key()
    try:
        blob = encrypt_image(key, firmware, target_path, campaign_id)
        custom = {"hardware_id": hardware_id, "version": version, "campaign_id": campaign_id,
                  "plaintext_sha256": hashlib.sha256(firmware).hexdigest(),
                  "plaintext_length": len(firmware)}
        repo.add_target(target_path, blob, role=role, custom=custom)
        record = {"campaign_id": campaign_id, "target_path": target_path, "role": role,
                  **custom, "encrypted_length": len(blob)}
        _write_private_json(ota.path / "oem" / "campaigns" / f"{campaign_id}.json",
                            {**record, "key": bytes(key).hex()})
    finally:
        wipe(key)
    repo.publish()
    return record


def assign(ota: OtaDirectory, campaign_id: str, vehicle_ids: Sequence[str],
           transfer: KeyTransfer) -> dict[str, Any]:
    """Put ``campaign_id`` into each vehicle's bundle (for its ECUs with the campaign's
    hardware), the campaign key wrapped to it; the key reaches the regional site by
    ``transfer`` the first time. Returns ``{"session": record or None, "vehicles":
    {vehicle: [ECU IDs]}}``."""
    campaign = ota.campaign(campaign_id)
    session: dict[str, Any] | None = None
    key = ota._campaign_key("regional", campaign_id)
    if key is None:
        oem_key = ota._campaign_key("oem", campaign_id)
        assert oem_key is not None
        try:
            key, session = transfer(campaign_id, oem_key)
        finally:
            wipe(oem_key)
        _write_private_json(ota.path / "regional" / "campaigns" / f"{campaign_id}.json",
                            {"key": bytes(key).hex(), "session": session})
    image = ota.image_repo()
    role = campaign["role"]
    image_target = image.open(role).signed.targets[campaign["target_path"]]
    signers = ota.regional_signers()
    assigned: dict[str, list[str]] = {}
    try:
        for vid in vehicle_ids:
            ota.check_vehicle(vid)
            ecus = [e for e, hw in ota.vehicles[vid].items() if hw == campaign["hardware_id"]]
            if not ecus:
                continue
            kem_public, _ = ota.vehicle_public(vid)
            director = ota.director_repo(vid, signers)
            bundle = dict(director.open(Targets.type).signed.targets)
            for ecu in ecus:
                for path, entry in list(bundle.items()):
                    if entry.custom.get("ecu_id") == ecu:
                        del bundle[path]
                bundle[campaign["target_path"]] = TargetFile(
                    image_target.length, dict(image_target.hashes), campaign["target_path"],
                    {"custom": {"ecu_id": ecu, "hardware_id": campaign["hardware_id"],
                                "version": campaign["version"], "campaign_id": campaign_id,
                                "wrapped_key": wrap_for_vehicle(key, kem_public, vid,
                                                                campaign_id)}})
            director.set_targets(bundle)
            director.publish()
            assigned[vid] = ecus
    finally:
        wipe(key)
    return {"session": session, "vehicles": assigned}


def rotate_keys(ota: OtaDirectory, roles: Sequence[str], *, party: str = "oem") -> int:
    """New keys for ``roles`` of the image repository (``party`` ``oem``) or of every
    vehicle's director repository (``regional``), by a new root version that the old
    and the new root keys sign (TUF's rotation rule); the old key files move to
    ``keys/<party>/retired/``. The new root version."""
    if party not in ("oem", "regional"):
        raise ParameterError("--party", party, "oem or regional")
    for role in roles:
        if role not in TOP_ROLES:
            raise ParameterError("--role", role, f"one of {list(TOP_ROLES)}")
    scheme = ota.config["scheme"]
    fresh = {role: [new_signer(scheme)] for role in roles}
    repos = ([ota.image_repo()] if party == "oem" else
             [ota.director_repo(v) for v in sorted(ota.config["vehicles"])])
    version = 0
    for repo in repos:
        version = repo.rotate_root(fresh)
    keys = ota.path / "keys" / party
    for role in roles:
        for old in keys.glob(f"{role}.*json"):
            (keys / "retired").mkdir(exist_ok=True)
            old.replace(keys / "retired" / f"{old.stem}.v{version - 1}.json")
        write_signer(keys / f"{role}.json", fresh[role][0])
    return version


__all__ = ["CONFIG_FILE", "DEFAULT_SUPPLIER", "PRIMARY_HARDWARE", "SECONDARY_HARDWARE",
           "VEHICLES_FILE", "KeyTransfer", "OtaDirectory", "VehicleKeys", "assign", "init_ota",
           "release", "rotate_keys"]
