"""Detection records: what a block of pulses leaves behind (the link -> distill seam).

Only detected pulses appear (Bob announces which gates clicked). Alice's side and
Bob's side are kept in separate objects so that the distillation layer can hand each
party only what it would really hold: Alice knows what she sent, Bob what he saw.

Coding: intensity class 0 = signal, 1 = decoy, 2 = vacuum; basis 0 = Z (key basis),
1 = X; bits 0/1. All arrays are aligned and sorted by pulse index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIGNAL, DECOY, VACUUM = 0, 1, 2
INTENSITY_CLASS_NAMES = ("signal", "decoy", "vacuum")
BASIS_Z, BASIS_X = 0, 1


@dataclass(frozen=True)
class AliceRecords:
    """Alice's settings for the pulses that Bob detected.

    Attributes:
        index: pulse index within the block (int64, ascending).
        intensity_class: 0 signal, 1 decoy, 2 vacuum (uint8).
        basis: 0 Z, 1 X (uint8).
        bit: the encoded bit (uint8).
        pulses_per_class: how many pulses of each class Alice sent in the whole block.
    """

    index: np.ndarray
    intensity_class: np.ndarray
    basis: np.ndarray
    bit: np.ndarray
    pulses_per_class: tuple[int, int, int]

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __repr__(self) -> str:  # never print the bits themselves
        return f"AliceRecords(detections={len(self)}, pulses_per_class={self.pulses_per_class})"


@dataclass(frozen=True)
class BobRecords:
    """Bob's measurement results for the gates that clicked.

    Attributes:
        index: pulse index within the block (int64, ascending).
        basis: 0 Z, 1 X (uint8), Bob's measurement basis.
        bit: his result after squashing (a double click becomes a uniformly random bit).
        double_click: True where both detectors clicked.
    """

    index: np.ndarray
    basis: np.ndarray
    bit: np.ndarray
    double_click: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __repr__(self) -> str:
        return f"BobRecords(detections={len(self)})"


@dataclass(frozen=True)
class DetectionRecords:
    """One block of pulses: Alice's and Bob's records and the block's bookkeeping.

    Attributes:
        block_id: sequence number of the block on its link.
        pulses: number of pulses sent in the block.
        alice: Alice's side.
        bob: Bob's side.
        metadata: public facts about how the block was made (link parameters, attack).
    """

    block_id: int
    pulses: int
    alice: AliceRecords
    bob: BobRecords
    metadata: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.bob)

    def __repr__(self) -> str:
        return (f"DetectionRecords(block_id={self.block_id}, pulses={self.pulses}, "
                f"detections={len(self)})")
