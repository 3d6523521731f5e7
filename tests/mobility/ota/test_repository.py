"""Root rotation by the TUF rules, followed by a vehicle; a root the old keys did not
sign is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from corridor.mobility.ota.backend import init_ota, rotate_keys
from corridor.mobility.ota.keys import new_signer
from tests.mobility.ota.harness import World


def test_vehicle_follows_root_rotation_and_refuses_unsigned_root(world: World) -> None:
    assert world.vehicle().update().result == "installed"
    assert rotate_keys(world.ota, ["root", "timestamp"]) == 2
    repo = world.ota.image_repo()
    root = Metadata[Root].from_file(str(repo.metadata_dir / "2.root.json"))
    assert len(root.signatures) == 2  # the old root key and the new one
    world.release("telematics-hw", 3, assign_to=("v-001",))
    # The new keys are the ones the repository signs with from now on.
    result = world.vehicle().update()
    assert result.result == "installed", result.detail
    trusted = Metadata[Root].from_file(
        str(world.ota.vehicle_state("v-001") / "image-metadata" / "root.json"))
    assert trusted.signed.version == 2
    # Root 3 signed by a fresh key alone (not by root 2's key) is refused.
    intruder = new_signer()
    repo.signers["root"] = [intruder]
    md = repo.open("root")
    md.signed.version = 3
    md.signed.keys.clear()
    for role in md.signed.roles.values():
        role.keyids.clear()
    for role in ("root", "targets", "snapshot", "timestamp"):
        md.signed.add_key(intruder.public_key, role)
    md.signatures.clear()
    md.sign(intruder)
    md.to_file(str(repo.metadata_dir / "3.root.json"))
    result = world.vehicle().update()
    assert (result.result, result.reason) == ("refused", "bad_signature"), result.detail


def test_root_threshold_counts_key_holders_each_with_both_signatures(tmp_path: Path) -> None:
    ota = init_ota(tmp_path / "ota", ["v-001"], root_threshold=2)
    md = Metadata[Root].from_file(str(ota.path / "image" / "metadata" / "1.root.json"))
    assert md.signed.roles["root"].threshold == 2 and len(md.signatures) == 2
    md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
    md.signatures.pop(next(iter(md.signatures)))  # one holder's signature alone
    with pytest.raises(UnsignedMetadataError):
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
