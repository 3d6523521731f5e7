"""The fleet's long-term keys: who signs, who decapsulates, and where the files live.

This module owns the identities and their files (``corridor fleet init`` writes them):

- a **sender** (a person or service at the back end: ``alice``) has a hybrid signing key
  (:class:`~corridor.mobility.fleet.signing.SigningKey`);
- a **vehicle** has a signing key (for its acknowledgements) and an ML-KEM-768 key
  (:class:`~corridor.mobility.fleet.sealing.VehicleKemKey`) that the depot encapsulates to;
- :class:`FleetDirectory` holds every public key (``public.json``) and is what depots,
  vehicles and the back end verify against.

Fleet directory layout::

    <dir>/policy.toml            role policy (corridor.mobility.fleet.policy)
    <dir>/public.json            public keys of every sender and vehicle
    <dir>/private/<id>.json      one identity's seeds (mode 0600)
    <dir>/audit-key.hex          the key of the fleet's audit logs (mode 0600)

Private files hold seeds in hex; nothing here logs or prints them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mlkem

from corridor.errors import ParameterError
from corridor.mobility.fleet.sealing import VehicleKemKey
from corridor.mobility.fleet.signing import SigningKey, VerifyKey
from corridor.mobility.fleet.wire import check_fleet_id

PUBLIC_FILE = "public.json"
POLICY_FILE = "policy.toml"
AUDIT_KEY_FILE = "audit-key.hex"
PRIVATE_DIR = "private"


@dataclass(frozen=True)
class VehiclePublic:
    """What others know of a vehicle: its KEM public key and its verify key."""

    kem_public: bytes = field(repr=False)
    verify_key: VerifyKey = field(repr=False)

    def __post_init__(self) -> None:
        # A bad key is found when public.json is read, not at the first command.
        mlkem.MLKEM768PublicKey.from_public_bytes(self.kem_public)


@dataclass
class FleetDirectory:
    """Public keys of every sender and vehicle."""

    senders: dict[str, VerifyKey] = field(default_factory=dict)
    vehicles: dict[str, VehiclePublic] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"senders": {s: k.as_dict() for s, k in sorted(self.senders.items())},
                "vehicles": {v: {"mlkem768": p.kem_public.hex(), **p.verify_key.as_dict()}
                             for v, p in sorted(self.vehicles.items())}}

    @classmethod
    def from_dict(cls, data: Any, source: str = PUBLIC_FILE) -> FleetDirectory:
        try:
            senders = {check_fleet_id(f"{source}: senders", s):
                       VerifyKey(bytes.fromhex(k["mldsa44"]), bytes.fromhex(k["ed25519"]))
                       for s, k in data["senders"].items()}
            vehicles = {check_fleet_id(f"{source}: vehicles", v): VehiclePublic(
                bytes.fromhex(k["mlkem768"]),
                VerifyKey(bytes.fromhex(k["mldsa44"]), bytes.fromhex(k["ed25519"])))
                for v, k in data["vehicles"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ParameterError):
                raise
            raise ParameterError(source, type(exc).__name__,
                                 "senders and vehicles with hex mldsa44, ed25519 (and "
                                 "mlkem768 for vehicles) public keys") from None
        return cls(senders, vehicles)


class Sender:
    """A back-end identity that signs commands."""

    def __init__(self, sender_id: str, signing_key: SigningKey) -> None:
        self.sender_id = check_fleet_id("sender_id", sender_id)
        self.signing_key = signing_key

    def __repr__(self) -> str:
        return f"Sender({self.sender_id!r})"


class VehicleIdentity:
    """A vehicle's private keys: signing (acknowledgements) and ML-KEM-768 (commands)."""

    def __init__(self, vehicle_id: str, signing_key: SigningKey, kem_key: VehicleKemKey) -> None:
        self.vehicle_id = check_fleet_id("vehicle_id", vehicle_id)
        self.signing_key = signing_key
        self.kem_key = kem_key

    def public(self) -> VehiclePublic:
        return VehiclePublic(self.kem_key.public_bytes, self.signing_key.verify_key)

    def __repr__(self) -> str:
        return f"VehicleIdentity({self.vehicle_id!r})"


def _write_private(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)


def init_fleet_dir(directory: Path, *, senders: list[str], vehicles: list[str],
                   policy_text: str) -> FleetDirectory:
    """Create identities for ``senders`` and ``vehicles``, ``public.json``, the policy and
    the audit key under ``directory`` (refuses to overwrite an existing directory)."""
    if (directory / PUBLIC_FILE).exists():
        raise ParameterError("--dir", str(directory), "a directory without a fleet in it "
                             "(public.json exists)")
    public = FleetDirectory()
    for sender in senders:
        check_fleet_id("--sender", sender)
        key = SigningKey.generate()
        mldsa_seed, ed_seed = key.seeds()
        _write_private(directory / PRIVATE_DIR / f"{sender}.json",
                       {"kind": "sender", "id": sender, "mldsa44_seed": mldsa_seed.hex(),
                        "ed25519_seed": ed_seed.hex()})
        public.senders[sender] = key.verify_key
    for vehicle in vehicles:
        check_fleet_id("--vehicle", vehicle)
        identity = VehicleIdentity(vehicle, SigningKey.generate(), VehicleKemKey.generate())
        mldsa_seed, ed_seed = identity.signing_key.seeds()
        _write_private(directory / PRIVATE_DIR / f"{vehicle}.json",
                       {"kind": "vehicle", "id": vehicle, "mldsa44_seed": mldsa_seed.hex(),
                        "ed25519_seed": ed_seed.hex(),
                        "mlkem768_seed": identity.kem_key.seed().hex()})
        public.vehicles[vehicle] = identity.public()
    (directory / PUBLIC_FILE).write_text(json.dumps(public.as_dict(), indent=1) + "\n")
    (directory / POLICY_FILE).write_text(policy_text)
    fd = os.open(directory / AUDIT_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(os.urandom(32).hex() + "\n")
    return public


def load_directory(directory: Path) -> FleetDirectory:
    path = directory / PUBLIC_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ParameterError("--dir", str(directory), "a fleet directory with a readable "
                             "public.json (corridor fleet init)") from None
    return FleetDirectory.from_dict(data, str(path))


def _private(directory: Path, identity: str, kind: str) -> dict[str, str]:
    check_fleet_id(f"--{kind}", identity)
    path = directory / PRIVATE_DIR / f"{identity}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ParameterError(f"--{kind}", identity, f"a {kind} with a private key file in "
                             f"{directory / PRIVATE_DIR}") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise ParameterError(f"--{kind}", identity, f"the ID of a {kind}")
    return data


def _signing(data: dict[str, str]) -> SigningKey:
    return SigningKey(bytes.fromhex(data["mldsa44_seed"]), bytes.fromhex(data["ed25519_seed"]))


def load_sender(directory: Path, sender_id: str) -> Sender:
    return Sender(sender_id, _signing(_private(directory, sender_id, "sender")))


def load_vehicle(directory: Path, vehicle_id: str) -> VehicleIdentity:
    data = _private(directory, vehicle_id, "vehicle")
    return VehicleIdentity(vehicle_id, _signing(data),
                           VehicleKemKey(bytes.fromhex(data["mlkem768_seed"])))


def load_audit_key(directory: Path) -> bytes:
    """The 32-byte key of the fleet's audit logs."""
    try:
        key = bytes.fromhex((directory / AUDIT_KEY_FILE).read_text().strip())
    except (OSError, ValueError):
        raise ParameterError("--dir", str(directory), f"a fleet directory with a readable "
                             f"{AUDIT_KEY_FILE}") from None
    if len(key) != 32:
        raise ParameterError("--dir", str(directory), f"{AUDIT_KEY_FILE} with 64 hex digits")
    return key


__all__ = ["AUDIT_KEY_FILE", "POLICY_FILE", "PUBLIC_FILE", "FleetDirectory", "Sender",
           "VehicleIdentity", "VehiclePublic", "init_fleet_dir", "load_audit_key",
           "load_directory", "load_sender", "load_vehicle"]
