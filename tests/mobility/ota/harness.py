"""A small OTA world for the tests: an OTA directory with two vehicles, a release for each
ECU assigned to them over a hybrid session fed by an in-memory QKD pool, and the HTTPS
server with the director on it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corridor.mobility.ota.backend import OtaDirectory, assign, init_ota, release
from corridor.mobility.ota.director import Director
from corridor.mobility.ota.primary import Limits, PrimaryEcu
from corridor.mobility.ota.regional import transfer_campaign_key
from corridor.mobility.ota.server import OtaRequestHandler, OtaServer
from corridor.mobility.ota.slots import make_firmware
from tests.hybrid.session_helpers import FakeQkd, SharedPool

VEHICLES = ("v-001", "v-002")
TELEMATICS = "oem/telematics-{}.bin"
BRAKES = "brakes-co/brakes-{}.bin"


class Transfer:
    """The OEM -> regional leg over a hybrid session keyed by a shared fake QKD pool."""

    def __init__(self, policy: str = "both-required") -> None:
        self.pool = SharedPool()
        self.policy = policy
        self.records: list[Any] = []

    def __call__(self, campaign_id: str, key: bytearray) -> tuple[bytearray, dict[str, Any]]:
        received, record = transfer_campaign_key(
            campaign_id, key, oem_sae_id="oem", regional_sae_id="regional",
            policy=self.policy, oem_qkd=FakeQkd(self.pool), regional_qkd=FakeQkd(self.pool))
        self.records.append(record)
        return received, record.as_dict()


@dataclass
class World:
    ota: OtaDirectory
    director: Director
    transfer: Transfer
    campaigns: dict[str, str]
    server: OtaServer | None = None

    @property
    def path(self) -> Path:
        return self.ota.path

    def release(self, hardware: str, version: int, *, firmware: bytes | None = None,
                assign_to: tuple[str, ...] = VEHICLES) -> str:
        path = (TELEMATICS if hardware == "telematics-hw" else BRAKES).format(version)
        record = release(self.ota, firmware or make_firmware(hardware, version), path,
                         version=version, hardware_id=hardware)
        self.campaigns[path] = record["campaign_id"]
        if assign_to:
            assign(self.ota, record["campaign_id"], list(assign_to), self.transfer)
        return path

    def vehicle(self, vehicle_id: str = "v-001", **limits: Any) -> PrimaryEcu:
        assert self.server is not None
        return PrimaryEcu.of(self.ota, vehicle_id, self.server.url, limits=Limits(**limits))

    def file(self, route: str) -> Path:
        return self.path / route


def make_world(root: Path, *, secondaries: bool = True, scheme: str = "hybrid") -> World:
    ota = init_ota(root / "ota", list(VEHICLES), scheme=scheme, secondaries=secondaries)
    world = World(ota, Director(ota), Transfer(), {})
    world.release("telematics-hw", 2)
    if secondaries:
        world.release("brakes-hw", 2, assign_to=("v-001",))
    return world


@contextlib.contextmanager
def serving(world: World, handler: type[OtaRequestHandler] = OtaRequestHandler
            ) -> Iterator[World]:
    with OtaServer(world.path, on_manifest=world.director.receive, handler=handler) as server:
        world.server = server
        yield world
