"""A simulated ECU's flash: two slots, an active one, and rollback when a new image fails.

This module owns :class:`SlotStore`: ``<dir>/slot-a.bin``, ``slot-b.bin`` and
``slots.json`` (which slot is active, the target and version in each). An install writes
the inactive slot, switches to it and runs the boot check; if the image does not boot,
the previous slot becomes active again (and stays so: the refused image is never run).
The simulated boot check: a firmware image starts with :data:`FIRMWARE_MAGIC` and names
the ECU's hardware (:func:`make_firmware` builds one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from corridor.mobility.ota.errors import INSTALL_FAILED, OtaRefusal

FIRMWARE_MAGIC = b"CORRIDOR-FW1\n"


def make_firmware(hardware_id: str, version: int, size_bytes: int = 4096,
                  seed: bytes = b"") -> bytes:
    """A bootable simulated image of ``size_bytes`` for ``hardware_id``."""
    header = FIRMWARE_MAGIC + f"{hardware_id} {version}\n".encode()
    body = (seed or os.urandom(16)) * (max(size_bytes - len(header), 0) // 16 + 1)
    return (header + body)[:max(size_bytes, len(header))]


def boots(firmware: bytes, hardware_id: str) -> bool:
    """The simulated boot check."""
    if not firmware.startswith(FIRMWARE_MAGIC):
        return False
    line = firmware[len(FIRMWARE_MAGIC):].split(b"\n", 1)[0].decode(errors="replace")
    return line.split(" ", 1)[0] == hardware_id


class SlotStore:
    """One ECU's two slots under ``directory``."""

    def __init__(self, directory: Path, hardware_id: str) -> None:
        self.directory = directory
        self.hardware_id = hardware_id
        directory.mkdir(parents=True, exist_ok=True)
        self._state_file = directory / "slots.json"

    def __repr__(self) -> str:
        return f"SlotStore({str(self.directory)!r})"

    def state(self) -> dict[str, Any]:
        if not self._state_file.exists():
            return {"active": "a", "a": {"target": None, "version": 0}, "b": None}
        data: dict[str, Any] = json.loads(self._state_file.read_text())
        return data

    def installed(self) -> dict[str, Any]:
        """``{"target", "version"}`` of the active slot (version 0: factory image)."""
        state = self.state()
        return dict(state[state["active"]])

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self._state_file.with_name(".slots.json.tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._state_file)

    def install(self, firmware: bytes, target: str, version: int) -> None:
        """Write the inactive slot, switch, boot-check; on failure switch back and raise
        ``install_failed``."""
        state = self.state()
        previous = state["active"]
        new = "b" if previous == "a" else "a"
        (self.directory / f"slot-{new}.bin").write_bytes(firmware)
        state[new] = {"target": target, "version": version}
        state["active"] = new
        self._save(state)
        if not boots(firmware, self.hardware_id):
            state["active"] = previous
            self._save(state)
            raise OtaRefusal(INSTALL_FAILED, f"{target} v{version} did not boot on "
                             f"{self.hardware_id}: back on "
                             f"{state[previous]['target'] or 'the factory image'} "
                             f"v{state[previous]['version']}")

    def rollback(self) -> None:
        """Back to the other slot (a bundle whose other ECU failed to install)."""
        state = self.state()
        other = "b" if state["active"] == "a" else "a"
        if state.get(other) is not None:
            state["active"] = other
            self._save(state)


__all__ = ["FIRMWARE_MAGIC", "SlotStore", "boots", "make_firmware"]
