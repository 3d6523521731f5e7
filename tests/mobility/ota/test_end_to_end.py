"""A release reaches a vehicle that verifies hybrid signatures on every role of both
repositories and installs the whole bundle; the director sees its signed manifest."""

from __future__ import annotations

import json

import pytest
from securesystemslib.exceptions import UnverifiedSignatureError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from corridor.mobility.ota.keys import KEY_TYPE_HYBRID, HybridKey, new_signer
from corridor.mobility.ota.manifest import sign_manifest
from tests.mobility.ota.harness import BRAKES, TELEMATICS, World


def _every_role_hybrid_signed(metadata_dir, delegated: list[str]) -> None:
    root = Metadata[Root].from_file(str(metadata_dir / "root.json"))
    assert {k.keytype for k in root.signed.keys.values()} == {KEY_TYPE_HYBRID}
    root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)
    for role in (Targets.type, Snapshot.type, Timestamp.type):
        md = Metadata.from_file(str(metadata_dir / f"{role}.json"))
        root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
        # A signature is the pair: the Ed25519 half alone does not verify.
        keyid, signature = next(iter(md.signatures.items()))
        key = root.signed.keys[keyid]
        assert isinstance(key, HybridKey)
        half = type(signature)(keyid, signature.signature[:128])
        try:
            key.verify_signature(half, md.signed_bytes)
        except UnverifiedSignatureError:
            pass
        else:
            raise AssertionError("an Ed25519 signature alone verified a hybrid key")
    targets = Metadata[Targets].from_file(str(metadata_dir / "targets.json"))
    for role in delegated:
        md = Metadata.from_file(str(metadata_dir / f"{role}.json"))
        targets.signed.verify_delegate(role, md.signed_bytes, md.signatures)


def test_release_reaches_vehicle_verified_and_installed(world: World) -> None:
    result = world.vehicle("v-001").update()
    assert (result.result, result.reason) == ("installed", None), result.detail
    assert result.installed["v-001-telematics"]["target"] == TELEMATICS.format(2)
    assert result.installed["v-001-telematics"]["version"] == 2
    assert result.installed["v-001-brakes"]["target"] == BRAKES.format(2)
    assert result.manifest_posted
    state = world.ota.vehicle_state("v-001")
    _every_role_hybrid_signed(state / "director-metadata", [])
    _every_role_hybrid_signed(state / "image-metadata", ["supplier-brakes-co"])
    # The campaign key came over QKD + post-quantum.
    assert world.transfer.records[0].inputs == ("qkd", "pqc")
    status = {s["vehicle_id"]: s for s in world.director.status()}
    assert status["v-001"]["state"] == "installed"
    assert status["v-001"]["installed_version"] == 2
    assert status["v-002"]["state"] == "assigned"
    again = world.vehicle("v-001").update()
    assert again.result == "up_to_date"


def test_next_release_installs_and_keeps_previous_slot(world: World) -> None:
    assert world.vehicle("v-002").update().result == "installed"
    world.release("telematics-hw", 3, assign_to=("v-002",))
    result = world.vehicle("v-002").update()
    assert result.result == "installed"
    slots = json.loads((world.ota.vehicle_state("v-002") / "ecus" / "v-002-telematics"
                        / "slots" / "slots.json").read_text())
    assert {slots["a"]["version"], slots["b"]["version"]} == {2, 3}


def test_image_that_does_not_boot_rolls_back_the_whole_bundle(world: World) -> None:
    assert world.vehicle("v-001").update().result == "installed"
    world.release("telematics-hw", 3, assign_to=("v-001",))
    world.release("brakes-hw", 3, firmware=b"not a firmware image", assign_to=("v-001",))
    result = world.vehicle("v-001").update()
    assert (result.result, result.reason) == ("refused", "install_failed")
    assert result.installed["v-001-telematics"]["version"] == 2
    assert result.installed["v-001-brakes"]["version"] == 2
    status = {s["vehicle_id"]: s for s in world.director.status()}
    assert status["v-001"]["state"] == "refused"
    assert status["v-001"]["last_error"].startswith("install_failed")


def test_director_refuses_manifest_under_another_key(world: World) -> None:
    body = sign_manifest(new_signer(), "v-001", {}, result="installed",
                         director_targets_version=1)
    status, text = world.director.receive("v-001", body)
    assert status == 403 and text.startswith("bad_signature")
    assert world.director.report("v-001") is None


def test_a_first_image_that_does_not_boot_says_it_went_back_to_the_factory_image(
        tmp_path) -> None:
    from corridor.mobility.ota.errors import OtaRefusal
    from corridor.mobility.ota.slots import SlotStore

    store = SlotStore(tmp_path / "slots", "telematics-hw")
    with pytest.raises(OtaRefusal) as refused:
        store.install(b"a PNG, not firmware", "oem/x.bin", 3)
    assert "back on the factory image v0" in str(refused.value)
    assert "None" not in str(refused.value)
    assert store.installed() == {"target": None, "version": 0}
