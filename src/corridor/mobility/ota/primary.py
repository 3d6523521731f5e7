"""The primary ECU: full Uptane verification of both repositories, then the whole bundle.

This module owns :class:`PrimaryEcu` and the mapping from ``tuf.ngclient`` errors to
the refusal reasons of :mod:`.errors`. One :meth:`PrimaryEcu.update`:

1. refreshes the vehicle's **director** repository and the **image** repository with
   two ``tuf.ngclient.Updater`` s (root rotation, timestamp, snapshot, targets and the
   supplier delegations, every role's threshold of hybrid signatures, versions, expiry,
   size limits), each from the roots provisioned at the factory;
2. checks every image of the director's bundle: the ECU is this vehicle's and of that
   hardware (``wrong_ecu``), the image repository signs the same path
   (``not_in_image_repo``) with the same length, hashes, version and campaign
   (``image_mismatch``), not older than what the ECU runs (``rollback``);
3. downloads every image (time limit: ``slow_retrieval``; size: ``endless_data``;
   hashes: ``arbitrary_software``; one missing: ``partial_bundle``), unwraps each
   campaign key with the vehicle's ML-KEM-768 key and decrypts (``decrypt_failed``);
4. hands each secondary its image (:mod:`.secondary`, partial verification), and only
   when every ECU's image verified installs them all; an image that does not boot rolls
   back every ECU of the bundle (``install_failed``);
5. signs a manifest (:mod:`.manifest`) and posts it to the director.

Nothing of a refused bundle is installed. The vehicle's storage (trusted metadata,
slots) is ``state_dir``.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from tuf.api import exceptions
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from corridor.mobility.fleet.sealing import wipe
from corridor.mobility.ota.backend import OtaDirectory, VehicleKeys
from corridor.mobility.ota.errors import (
    ARBITRARY_SOFTWARE,
    BAD_SIGNATURE,
    ENDLESS_DATA,
    FREEZE,
    IMAGE_MISMATCH,
    MIX_AND_MATCH,
    NOT_IN_IMAGE_REPO,
    PARTIAL_BUNDLE,
    REPOSITORY_ERROR,
    ROLLBACK,
    SLOW_RETRIEVAL,
    WRONG_ECU,
    OtaRefusal,
)
from corridor.mobility.ota.fetcher import BoundedFetcher, Progress
from corridor.mobility.ota.images import decrypt_image, unwrap_for_vehicle
from corridor.mobility.ota.manifest import sign_manifest
from corridor.mobility.ota.secondary import SecondaryEcu
from corridor.mobility.ota.slots import SlotStore

INSTALLED, UP_TO_DATE, REFUSED = "installed", "up_to_date", "refused"


@dataclass(frozen=True)
class Limits:
    """What a download may cost: time per file, and metadata sizes (images: their
    signed length)."""

    time_limit_s: float = 30.0
    root_max_bytes: int = 512_000
    timestamp_max_bytes: int = 32_768
    snapshot_max_bytes: int = 1_000_000
    targets_max_bytes: int = 1_000_000

    def config(self) -> UpdaterConfig:
        return UpdaterConfig(root_max_length=self.root_max_bytes,
                             timestamp_max_length=self.timestamp_max_bytes,
                             snapshot_max_length=self.snapshot_max_bytes,
                             targets_max_length=self.targets_max_bytes,
                             prefix_targets_with_hash=False)


@dataclass
class UpdateResult:
    """How one update ended."""

    result: str
    reason: str | None = None
    detail: str | None = None
    installed: dict[str, dict[str, Any]] = field(default_factory=dict)
    received_bytes: int = 0
    manifest_posted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result, "reason": self.reason, "detail": self.detail,
                "installed": self.installed, "received_bytes": self.received_bytes,
                "manifest_posted": self.manifest_posted}


def refusal_of(exc: Exception, what: str, *, image: bool = False) -> OtaRefusal:
    """The named refusal of an ``ngclient`` error met while fetching ``what``."""
    message = f"{what}: {exc}"
    if isinstance(exc, OtaRefusal):
        return exc
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return OtaRefusal(FREEZE, message)
    if isinstance(exc, exceptions.BadVersionNumberError):
        # ngclient raises the same class for a version that went down (rollback) and for
        # a file whose version is not the one its parent names (mix and match).
        text = str(exc)
        if "must be >=" in text or (text.startswith("Expected") and ".json version" in text):
            return OtaRefusal(ROLLBACK, message)
        return OtaRefusal(MIX_AND_MATCH, message)
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return OtaRefusal(BAD_SIGNATURE, message)
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return OtaRefusal(ARBITRARY_SOFTWARE, message)
    if isinstance(exc, exceptions.SlowRetrievalError):
        return OtaRefusal(SLOW_RETRIEVAL, message)
    if isinstance(exc, exceptions.DownloadLengthMismatchError):
        return OtaRefusal(ENDLESS_DATA, message)
    if image and isinstance(exc, exceptions.DownloadError):
        return OtaRefusal(PARTIAL_BUNDLE, message)
    return OtaRefusal(REPOSITORY_ERROR, f"{what}: {type(exc).__name__}: {exc}")


class PrimaryEcu:
    """A vehicle's primary ECU (module docstring).

    Args:
        vehicle_id, ecus: the vehicle and its ECUs (``{ecu_id: hardware_id}``, the first
            one this primary, the others its secondaries).
        keys: the vehicle's private keys.
        state_dir: the vehicle's storage; holds ``image-root.json`` and
            ``director-root.json`` from the factory.
        url: the OTA server; ``ca_file``: its CA.
        limits: download limits; ``on_progress``: per chunk (progress bar).
    """

    def __init__(self, vehicle_id: str, ecus: dict[str, str], keys: VehicleKeys,
                 state_dir: Path, url: str, ca_file: Path | None, *,
                 limits: Limits | None = None, on_progress: Progress | None = None) -> None:
        self.vehicle_id = vehicle_id
        self.ecus = dict(ecus)
        self.primary_ecu = next(iter(ecus))
        self.keys = keys
        self.state_dir = state_dir
        self.url = url.rstrip("/")
        self.ca_file = ca_file
        self.limits = limits or Limits()
        self.on_progress = on_progress
        self.slots = SlotStore(state_dir / "ecus" / self.primary_ecu / "slots",
                               ecus[self.primary_ecu])
        director_root = (state_dir / "director-root.json").read_bytes()
        self.secondaries = {ecu: SecondaryEcu(ecu, hw, director_root,
                                              state_dir / "ecus" / ecu)
                            for ecu, hw in list(ecus.items())[1:]}

    @classmethod
    def of(cls, ota: OtaDirectory, vehicle_id: str, url: str, **options: Any) -> PrimaryEcu:
        """The simulated vehicle ``vehicle_id`` of ``ota`` (its state in ``ota``)."""
        from corridor.mobility.ota.server import ensure_tls

        ota.check_vehicle(vehicle_id)
        return cls(vehicle_id, ota.vehicles[vehicle_id], ota.vehicle_keys(vehicle_id),
                   ota.vehicle_state(vehicle_id), url, ensure_tls(ota.path)[0], **options)

    def __repr__(self) -> str:
        return f"PrimaryEcu({self.vehicle_id!r}, {self.url!r})"

    def installed(self) -> dict[str, dict[str, Any]]:
        out = {self.primary_ecu: {"hardware_id": self.ecus[self.primary_ecu],
                                  **self.slots.installed()}}
        out.update({ecu: s.installed() for ecu, s in self.secondaries.items()})
        return out

    def _updater(self, name: str, metadata_url: str, fetcher: BoundedFetcher) -> Updater:
        metadata_dir = self.state_dir / f"{name}-metadata"
        if not (metadata_dir / "root.json").exists():
            metadata_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.state_dir / f"{name}-root.json", metadata_dir / "root.json")
        downloads = self.state_dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        return Updater(str(metadata_dir), metadata_url, str(downloads),
                       f"{self.url}/image/targets/", fetcher, self.limits.config(),
                       bootstrap=None)

    def update(self, *, post_manifest: bool = True) -> UpdateResult:
        """One update (module docstring); never raises for a refused bundle: the result
        says why."""
        fetcher = BoundedFetcher(self.ca_file, time_limit_s=self.limits.time_limit_s,
                                 on_progress=self.on_progress)
        bundle_version = 0
        try:
            result, bundle_version = self._update(fetcher)
        except OtaRefusal as exc:
            result = UpdateResult(REFUSED, exc.reason, exc.detail)
        result.received_bytes = fetcher.received_bytes
        result.installed = self.installed()
        if post_manifest:
            result.manifest_posted = self.post_manifest(result, bundle_version, fetcher)
        fetcher.close()
        return result

    def _refresh(self, name: str, updater: Updater) -> None:
        try:
            updater.refresh()
        except Exception as exc:
            raise refusal_of(exc, f"{name} repository") from None

    def _update(self, fetcher: BoundedFetcher) -> tuple[UpdateResult, int]:
        director = self._updater("director", f"{self.url}/director/{self.vehicle_id}/metadata/",
                                 fetcher)
        self._refresh("director", director)
        targets_file = self.state_dir / "director-metadata" / "targets.json"
        director_bytes = targets_file.read_bytes()
        bundle: Metadata[Targets] = Metadata[Targets].from_bytes(director_bytes)
        version = int(bundle.signed.version)
        image = self._updater("image", f"{self.url}/image/metadata/", fetcher)
        self._refresh("image", image)
        work = self._check_bundle(bundle.signed.targets, image)
        if not work:
            return UpdateResult(UP_TO_DATE), version
        blobs: dict[str, bytes] = {}
        for path, info, _ in work:
            blobs[path] = self._download(image, info, path)
        return self._install(work, blobs, director_bytes, version), version

    def _check_bundle(self, bundle: dict[str, TargetFile], image: Updater
                      ) -> list[tuple[str, TargetFile, dict[str, Any]]]:
        """The images to install: ``(path, image repo entry, director custom)``."""
        installed = self.installed()
        work = []
        for path, entry in sorted(bundle.items()):
            custom: dict[str, Any] = entry.custom
            ecu = custom.get("ecu_id")
            if ecu not in self.ecus or custom.get("hardware_id") != self.ecus[ecu]:
                raise OtaRefusal(WRONG_ECU, f"{path}: for ECU {ecu} "
                                 f"({custom.get('hardware_id')}), not one of {self.vehicle_id}")
            try:
                info = image.get_targetinfo(path)
            except Exception as exc:
                raise refusal_of(exc, f"image repository delegations for {path}") from None
            if info is None:
                raise OtaRefusal(NOT_IN_IMAGE_REPO, f"{path}: the director names it, the "
                                 "image repository does not sign it")
            theirs: dict[str, Any] = info.custom
            if (info.length != entry.length or info.hashes != entry.hashes
                    or theirs.get("version") != custom.get("version")
                    or theirs.get("campaign_id") != custom.get("campaign_id")
                    or theirs.get("hardware_id") != custom.get("hardware_id")):
                raise OtaRefusal(IMAGE_MISMATCH, f"{path}: director and image repository "
                                 "sign different images")
            running = installed[ecu]
            if int(custom["version"]) < int(running["version"]):
                raise OtaRefusal(ROLLBACK, f"{path}: v{custom['version']} for {ecu}, which "
                                 f"runs v{running['version']}")
            if running["target"] == path and int(custom["version"]) == int(running["version"]):
                continue
            work.append((path, info, custom))
        return work

    def _download(self, image: Updater, info: TargetFile, path: str) -> bytes:
        try:
            file = image.download_target(info)
        except Exception as exc:
            raise refusal_of(exc, f"image {path}", image=True) from None
        data = Path(file).read_bytes()
        Path(file).unlink()
        return data

    def _install(self, work: list[tuple[str, TargetFile, dict[str, Any]]],
                 blobs: dict[str, bytes], director_bytes: bytes, bundle_version: int
                 ) -> UpdateResult:
        ready: list[Callable[[], None]] = []
        for path, info, custom in work:
            key = unwrap_for_vehicle(self.keys.kem_key, custom.get("wrapped_key"),
                                     self.vehicle_id, custom["campaign_id"])
            try:
                ecu = custom["ecu_id"]
                if ecu == self.primary_ecu:
                    firmware = decrypt_image(key, blobs[path], path, custom["campaign_id"],
                                             info.custom.get("plaintext_sha256"))
                    ready.append(functools.partial(self.slots.install, firmware, path,
                                                   int(custom["version"])))
                else:
                    secondary = self.secondaries[ecu]
                    args = secondary.verify(director_bytes, blobs[path], key)
                    ready.append(functools.partial(secondary.install, *args))
            finally:
                wipe(key)
        done: list[str] = []
        try:
            for (_, _, custom), install in zip(work, ready, strict=True):
                install()
                done.append(custom["ecu_id"])
        except OtaRefusal:
            for ecu in done:  # the bundle goes back as a whole
                if ecu == self.primary_ecu:
                    self.slots.rollback()
                else:
                    self.secondaries[ecu].slots.rollback()
            raise
        return UpdateResult(INSTALLED)

    def post_manifest(self, result: UpdateResult, bundle_version: int,
                      fetcher: BoundedFetcher) -> bool:
        """Sign and post the manifest; whether the director accepted it."""
        body = sign_manifest(self.keys.signer, self.vehicle_id, self.installed(),
                             result=result.result, director_targets_version=bundle_version,
                             reason=result.reason, detail=result.detail)
        with contextlib.suppress(urllib3.exceptions.HTTPError):
            response = fetcher._pool.request(
                "POST", f"{self.url}/director/{self.vehicle_id}/manifest", body=body,
                headers={"Content-Type": "application/json"})
            return bool(response.status == 200)
        return False


__all__ = ["INSTALLED", "REFUSED", "UP_TO_DATE", "Limits", "PrimaryEcu", "UpdateResult",
           "refusal_of"]
