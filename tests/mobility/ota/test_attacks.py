"""The Uptane attacks, each refused with its named reason, and nothing of the refused
bundle installed (docs/ota.md, "Threat model")."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from pathlib import Path

from tuf.api.metadata import Metadata, TargetFile, Targets

from corridor.mobility.ota.backend import assign
from corridor.mobility.ota.errors import OtaRefusal
from corridor.mobility.ota.images import decrypt_image, unwrap_for_vehicle
from corridor.mobility.ota.keys import load_signer, new_signer
from corridor.mobility.ota.primary import UpdateResult
from corridor.mobility.ota.repository import TOP_ROLES, TufRepository
from corridor.mobility.ota.server import OtaRequestHandler
from corridor.mobility.ota.slots import make_firmware
from tests.mobility.ota.harness import BRAKES, TELEMATICS, World, make_world, serving


def _refused(result: UpdateResult, reason: str) -> None:
    assert (result.result, result.reason) == ("refused", reason), result.detail


def _nothing_installed(result: UpdateResult) -> None:
    assert all(ecu["version"] == 0 for ecu in result.installed.values()), result.installed


def test_rollback_of_metadata_is_refused(world: World) -> None:
    stale = world.file("image/metadata/timestamp.json").read_bytes()
    world.release("telematics-hw", 3, assign_to=())
    assert world.vehicle().update().result == "installed"
    world.file("image/metadata/timestamp.json").write_bytes(stale)  # a replayed old one
    _refused(world.vehicle().update(), "rollback")


def test_rollback_to_an_older_image_is_refused(world: World) -> None:
    world.release("telematics-hw", 3, assign_to=("v-002",))
    assert world.vehicle("v-002").update().installed["v-002-telematics"]["version"] == 3
    old = world.campaigns[TELEMATICS.format(2)]
    assign(world.ota, old, ["v-002"], world.transfer)  # a director told to downgrade
    result = world.vehicle("v-002").update()
    _refused(result, "rollback")
    assert result.installed["v-002-telematics"]["version"] == 3


def test_indefinite_freeze_stale_timestamp_is_refused(world: World) -> None:
    world.ota.image_repo().publish(
        timestamp_expires=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    result = world.vehicle().update()
    _refused(result, "freeze")
    _nothing_installed(result)


def test_arbitrary_software_is_refused(world: World) -> None:
    image = world.file(f"image/targets/{TELEMATICS.format(2)}")
    image.write_bytes(bytes(len(image.read_bytes())))  # same length, other bytes
    result = world.vehicle().update()
    _refused(result, "arbitrary_software")
    _nothing_installed(result)


def test_mix_and_match_is_refused(world: World) -> None:
    old_targets = world.file("image/metadata/targets.json").read_bytes()
    world.release("telematics-hw", 3, assign_to=())
    world.file("image/metadata/targets.json").write_bytes(old_targets)
    result = world.vehicle().update()
    _refused(result, "mix_and_match")
    _nothing_installed(result)


def test_mixed_bundle_on_a_secondary_is_refused(world: World) -> None:
    assert world.vehicle().update().result == "installed"
    bundle_v2 = (world.ota.vehicle_state("v-001") / "director-metadata" / "targets.json"
                 ).read_bytes()
    world.release("brakes-hw", 3, assign_to=("v-001",))
    # The primary's bus hands the brakes ECU the v3 image with the v2 bundle.
    vehicle = world.vehicle()
    image_v3 = world.file(f"image/targets/{BRAKES.format(3)}").read_bytes()
    director = Metadata[Targets].from_file(
        str(world.path / "director" / "v-001" / "metadata" / "targets.json"))
    entry = director.signed.targets[BRAKES.format(3)]
    keys = world.ota.vehicle_keys("v-001")
    key = unwrap_for_vehicle(keys.kem_key, entry.custom["wrapped_key"], "v-001",
                             entry.custom["campaign_id"])
    try:
        vehicle.secondaries["v-001-brakes"].verify(bundle_v2, image_v3, key)
    except OtaRefusal as exc:
        assert exc.reason == "mixed_bundle"
    else:
        raise AssertionError("the secondary took an image its bundle does not name")
    assert vehicle.secondaries["v-001-brakes"].installed()["version"] == 2


def test_compromised_director_key_alone_is_refused(world: World) -> None:
    # The attacker holds every director key (online at the regional site), not the OEM's.
    evil = b"evil firmware" * 100
    evil_path = "oem/telematics-9.bin"
    world.file(f"image/targets/{evil_path}").write_bytes(evil)
    director = world.ota.director_repo("v-001")
    entry = TargetFile.from_data(evil_path, evil, ["sha256", "sha512"])
    director.set_targets({evil_path: TargetFile(entry.length, entry.hashes, evil_path, {
        "custom": {"ecu_id": "v-001-telematics", "hardware_id": "telematics-hw",
                   "version": 9, "campaign_id": "c-evil"}})})
    director.publish()
    result = world.vehicle().update()
    _refused(result, "not_in_image_repo")
    _nothing_installed(result)


def test_compromised_supplier_delegation_is_refused(world: World) -> None:
    # The supplier's key signs a different image under its own path; the director (and
    # the OEM) still name the genuine one.
    supplier = load_signer(world.path / "keys" / "oem" / "supplier-brakes-co.json")
    repo = TufRepository(world.path / "image", {"supplier-brakes-co": [supplier]})
    evil = b"evil brakes" * 100
    repo.add_target(BRAKES.format(2), evil, role="supplier-brakes-co")
    # Snapshot and timestamp are online keys: assume the attacker gets them signed too.
    world.ota.image_repo().publish()
    result = world.vehicle().update()
    _refused(result, "image_mismatch")
    _nothing_installed(result)


def test_partial_bundle_installs_nothing(world: World) -> None:
    world.file(f"image/targets/{BRAKES.format(2)}").unlink()  # withheld by the mirror
    result = world.vehicle().update()
    _refused(result, "partial_bundle")
    _nothing_installed(result)


def test_signature_of_another_key_is_refused(world: World) -> None:
    stranger = TufRepository.create(world.path.parent / "stranger",
                                    {role: [new_signer()] for role in TOP_ROLES})
    (world.path / "director" / "v-001" / "metadata" / "timestamp.json").write_bytes(
        (stranger.metadata_dir / "timestamp.json").read_bytes())
    result = world.vehicle().update()
    _refused(result, "bad_signature")
    _nothing_installed(result)


def test_classical_half_alone_is_refused(world: World) -> None:
    path = world.path / "image" / "metadata" / "timestamp.json"
    md = Metadata.from_file(str(path))
    for keyid, signature in list(md.signatures.items()):
        md.signatures[keyid] = type(signature)(keyid, signature.signature[:128])  # Ed25519
    md.to_file(str(path))
    _refused(world.vehicle().update(), "bad_signature")


class Trickle(OtaRequestHandler):
    """A mirror that sends the timestamp one byte every 50 ms."""

    def send_file(self, path: Path) -> None:
        if path.name != "timestamp.json":
            super().send_file(path)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for n in range(len(data)):
                self.wfile.write(data[n:n + 1])
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass


class Endless(OtaRequestHandler):
    """A mirror whose timestamp never ends."""

    def send_file(self, path: Path) -> None:
        if path.name != "timestamp.json":
            super().send_file(path)
            return
        self.send_response(200)
        self.end_headers()
        self.close_connection = True
        try:
            while True:
                self.wfile.write(b" " * 65536)
        except OSError:
            pass


def test_slow_retrieval_is_refused(tmp_path: Path) -> None:
    with serving(make_world(tmp_path), Trickle) as world:
        started = time.monotonic()
        result = world.vehicle(time_limit_s=1.0).update(post_manifest=False)
        _refused(result, "slow_retrieval")
        assert time.monotonic() - started < 10
        _nothing_installed(result)


def test_endless_data_is_refused(tmp_path: Path) -> None:
    with serving(make_world(tmp_path), Endless) as world:
        result = world.vehicle(timestamp_max_bytes=32_768).update(post_manifest=False)
        _refused(result, "endless_data")
        _nothing_installed(result)


def test_eavesdropper_cannot_read_the_image(world: World) -> None:
    firmware = make_firmware("telematics-hw", 4, seed=b"0123456789abcdef")
    world.release("telematics-hw", 4, firmware=firmware, assign_to=("v-001",))
    served = world.file(f"image/targets/{TELEMATICS.format(4)}").read_bytes()
    assert firmware[64:128] not in served and hashlib.sha256(firmware).digest() not in served
    director = Metadata[Targets].from_file(
        str(world.path / "director" / "v-001" / "metadata" / "targets.json"))
    entry = director.signed.targets[TELEMATICS.format(4)]
    campaign = entry.custom["campaign_id"]
    # Another vehicle's ML-KEM key does not unwrap v-001's campaign key ...
    other = world.ota.vehicle_keys("v-002")
    try:
        unwrap_for_vehicle(other.kem_key, entry.custom["wrapped_key"], "v-001", campaign)
    except OtaRefusal as exc:
        assert exc.reason == "key_unwrap_failed"
    else:
        raise AssertionError("another vehicle unwrapped the campaign key")
    # ... and without the key the image does not decrypt.
    try:
        decrypt_image(bytes(32), served, TELEMATICS.format(4), campaign)
    except OtaRefusal as exc:
        assert exc.reason == "decrypt_failed"
    else:
        raise AssertionError("the image decrypted without its key")
    # v-001 itself installs it.
    assert world.vehicle().update().installed["v-001-telematics"]["version"] == 4
