"""A secondary ECU: partial verification of what the primary hands it, then its slot.

This module owns :class:`SecondaryEcu`. Uptane's partial verification: the secondary
trusts the director's root it was provisioned with, and checks only the director's
targets metadata (the bundle) that the primary passes on: a threshold of the director
targets keys signs it (each hybrid: Ed25519 and ML-DSA-65), it has not expired, its
version is not below the last one the secondary accepted, and the image it is handed
has the length and hashes that the bundle names for *this* ECU; an image that does not
is ``mixed_bundle`` (an image of another bundle, or of another ECU). It then decrypts
with the campaign key the primary unwrapped (on the in-vehicle network: a real
deployment would wrap it to the secondary's own key, docs/ota.md) and installs into its
own two slots.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets

from corridor.mobility.ota.errors import (
    BAD_SIGNATURE,
    FREEZE,
    MIXED_BUNDLE,
    REPOSITORY_ERROR,
    ROLLBACK,
    OtaRefusal,
)
from corridor.mobility.ota.images import decrypt_image
from corridor.mobility.ota.slots import SlotStore


class SecondaryEcu:
    """One secondary: its ID, hardware, provisioned director root, slots (in
    ``state_dir``)."""

    def __init__(self, ecu_id: str, hardware_id: str, director_root: bytes,
                 state_dir: Path) -> None:
        self.ecu_id = ecu_id
        self.hardware_id = hardware_id
        self.root: Metadata[Root] = Metadata[Root].from_bytes(director_root)
        self.slots = SlotStore(state_dir / "slots", hardware_id)
        self._seen_file = state_dir / "director-targets-version.json"

    def __repr__(self) -> str:
        return f"SecondaryEcu({self.ecu_id!r}, {self.hardware_id!r})"

    def _last_version(self) -> int:
        if not self._seen_file.exists():
            return 0
        return int(json.loads(self._seen_file.read_text())["version"])

    def verify(self, director_targets: bytes, image: bytes, campaign_key: bytes | bytearray
               ) -> tuple[bytes, str, int, int]:
        """Partial verification (module docstring); ``(firmware, target, version, bundle
        version)`` ready for :meth:`install`."""
        try:
            md = Metadata[Targets].from_bytes(director_targets)
        except Exception:
            raise OtaRefusal(REPOSITORY_ERROR, f"{self.ecu_id}: director targets do not "
                             "parse") from None
        try:
            self.root.signed.verify_delegate(Targets.type, md.signed_bytes, md.signatures)
        except UnsignedMetadataError:
            raise OtaRefusal(BAD_SIGNATURE, f"{self.ecu_id}: director targets v"
                             f"{md.signed.version} lack a threshold of director targets "
                             "signatures") from None
        if md.signed.is_expired(dt.datetime.now(dt.UTC)):
            raise OtaRefusal(FREEZE, f"{self.ecu_id}: director targets v{md.signed.version} "
                             "expired")
        if md.signed.version < self._last_version():
            raise OtaRefusal(ROLLBACK, f"{self.ecu_id}: director targets v{md.signed.version}"
                             f" older than v{self._last_version()} already accepted")
        mine = [(p, t) for p, t in md.signed.targets.items()
                if t.custom.get("ecu_id") == self.ecu_id]
        if len(mine) != 1:
            raise OtaRefusal(MIXED_BUNDLE, f"{self.ecu_id}: the bundle names {len(mine)} "
                             "images for this ECU")
        path, entry = mine[0]
        digests = {"sha256": hashlib.sha256(image).hexdigest(),
                   "sha512": hashlib.sha512(image).hexdigest()}
        if len(image) != entry.length or any(digests.get(alg) != value
                                             for alg, value in entry.hashes.items()):
            raise OtaRefusal(MIXED_BUNDLE, f"{self.ecu_id}: the image handed over is not "
                             f"{path}, which bundle v{md.signed.version} names for it")
        custom: dict[str, Any] = entry.custom
        firmware = decrypt_image(campaign_key, image, path, custom["campaign_id"])
        return firmware, path, int(custom["version"]), int(md.signed.version)

    def install(self, firmware: bytes, target: str, version: int, bundle_version: int) -> None:
        self.slots.install(firmware, target, version)
        self._seen_file.write_text(json.dumps({"version": bundle_version}))

    def installed(self) -> dict[str, Any]:
        return {"hardware_id": self.hardware_id, **self.slots.installed()}


__all__ = ["SecondaryEcu"]
