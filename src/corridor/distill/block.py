"""The key block: key bits plus the history and accounting that travel with them.

ARCHITECTURE.md, "The key's life": a block moves RAW -> SIFTED -> ESTIMATED ->
CORRECTED -> VERIFIED -> AMPLIFIED -> AUTHENTICATED (distill), then STORED ->
RESERVED -> DELIVERED (kms). A block that fails a stage becomes DISCARDED with a
reason and is never passed on. Key bits are never shown by ``repr`` or ``str``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from corridor.errors import ProtocolAbort


class BlockState(IntEnum):
    """Stages of a key block's life, in order."""

    RAW = 0
    SIFTED = 1
    ESTIMATED = 2
    CORRECTED = 3
    VERIFIED = 4
    AMPLIFIED = 5
    AUTHENTICATED = 6
    STORED = 7
    RESERVED = 8
    DELIVERED = 9
    DISCARDED = 99


@dataclass
class KeyBlock:
    """One party's key block moving through distillation.

    Attributes:
        link_id: the link that produced it.
        block_id: sequence number on that link (same on both sides).
        role: "alice" or "bob".
        bits: the current key bits (uint8 array of 0/1); secret, never printed.
        state: the stage reached.
        meta: public accounting (sifted_bits, qber, disclosed_bits, epsilons, ...).
        timings_s: seconds spent in each stage.
        history: (state name, unix time) for every transition.
        discard_reason: why the block was discarded, if it was.
    """

    link_id: str
    block_id: int
    role: str
    bits: np.ndarray
    state: BlockState = BlockState.RAW
    meta: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    history: list[tuple[str, float]] = field(default_factory=list)
    discard_reason: str | None = None

    def advance(self, state: BlockState, bits: np.ndarray | None = None, **meta: Any) -> None:
        """Move to ``state`` (only forward), optionally replacing bits and adding metadata."""
        if self.state is BlockState.DISCARDED:
            raise ProtocolAbort("discarded_block", f"block {self.block_id} was discarded "
                                f"({self.discard_reason}) and cannot advance")
        if state <= self.state:
            raise ValueError(f"block {self.block_id}: cannot go from {self.state.name} "
                             f"to {state.name}")
        if bits is not None:
            self.bits = bits
        self.state = state
        self.meta.update(meta)
        self.history.append((state.name, time.time()))

    def discard(self, reason: str) -> None:
        """Mark the block discarded and zeroize its bits."""
        self.bits[:] = 0
        self.bits = np.zeros(0, dtype=np.uint8)
        self.state = BlockState.DISCARDED
        self.discard_reason = reason
        self.history.append((BlockState.DISCARDED.name, time.time()))

    @property
    def length_bits(self) -> int:
        """Current number of key bits."""
        return int(self.bits.shape[0])

    def key_bytes(self) -> bytes:
        """The key packed into bytes (MSB first); only for AUTHENTICATED blocks."""
        if self.state is not BlockState.AUTHENTICATED:
            raise ProtocolAbort("not_authenticated",
                                f"block {self.block_id} is {self.state.name}, not AUTHENTICATED")
        usable = self.length_bits - self.length_bits % 8
        return np.packbits(self.bits[:usable]).tobytes()

    def __repr__(self) -> str:
        return (f"KeyBlock(link_id={self.link_id!r}, block_id={self.block_id}, role={self.role!r}, "
                f"state={self.state.name}, length_bits={self.length_bits})")

    __str__ = __repr__
