"""The ``KeySource`` seam (ARCHITECTURE.md) and what every key source shares.

A key source is anything that produces key blocks for a pair of KMEs, Alice's copy for
one and Bob's for the other, block after block, with public figures (QBER, acquisition
time) and, for a block that did not make it, the abort reason.

This module owns :class:`SourceBlock` (one block as a source delivers it), the
:class:`KeySource` protocol, the side names, and the small helpers the sources share:
argument checks, the distillation settings of a link's source, and the public figures
(QBER, acquisition time, counters) of a distilled block.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from corridor.distill.block import KeyBlock
from corridor.distill.pipeline import DistillConfig
from corridor.errors import ParameterError
from corridor.link.params import LinkParameters

SIDE_ALICE = "alice"
SIDE_BOB = "bob"
SIDES = (SIDE_ALICE, SIDE_BOB)
REASON_PARTIES_DISAGREE = "parties_disagree"
#: How long the sources' background threads wait on a queue before checking for stop.
POLL_S = 0.1


@dataclass(frozen=True)
class SourceBlock:
    """One block of a link as a source delivers it: both sides' key bytes, or why not.

    ``alice_key`` and ``bob_key`` are secret and never shown by ``repr``; they are
    empty for an aborted block, and a side the source was not opened for is empty too.
    """

    link_id: str
    block_id: int
    alice_key: bytes = field(repr=False)
    bob_key: bytes = field(repr=False)
    aborted_reason: str | None = None
    qber: float | None = None
    duration_s: float | None = None
    meta: Mapping[str, float] = field(default_factory=dict)

    @property
    def secret_bits(self) -> int:
        """Key bits of the block (0 if it aborted)."""
        if self.aborted_reason is not None:
            return 0
        return 8 * max(len(self.alice_key), len(self.bob_key))

    def key_for(self, side: str) -> bytes:
        """The key bytes of ``side`` (``alice`` or ``bob``)."""
        if side == SIDE_ALICE:
            return self.alice_key
        if side == SIDE_BOB:
            return self.bob_key
        raise ParameterError("side", side, f"must be one of {list(SIDES)}")


class KeySource(Protocol):
    """Anything that produces key blocks for the two KMEs of one link."""

    link_id: str

    def start(self, first_block_id: int) -> None:
        """Begin producing; the first block gets ``first_block_id``, the next ones count up."""
        ...

    def next_block(self, timeout_s: float) -> SourceBlock | None:
        """The next block, or None if none was ready within ``timeout_s``."""
        ...

    @property
    def finished(self) -> bool:
        """True once the source will produce no further block (end of file, stopped)."""
        ...

    def close(self) -> None:
        """Stop producing and release threads and files."""
        ...


def check_positive(name: str, value: Any, *, integer: bool = False,
                   allow_zero: bool = False) -> Any:
    """``value`` if it is a finite number (an integer with ``integer``) above 0 (at least
    0 with ``allow_zero``); else ParameterError naming ``name``."""
    ok_type = (isinstance(value, int) if integer else isinstance(value, int | float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or \
            (value < 0 if allow_zero else value <= 0):
        kind = "an integer" if integer else "a number"
        raise ParameterError(name, value, f"must be {kind} {'>= 0' if allow_zero else '> 0'}")
    return value


def block_qber(block: KeyBlock) -> float | None:
    """The block's QBER: the corrected-error rate if reconciliation ran, else the test one."""
    for name in ("qber_corrected", "test_qber"):
        value = block.meta.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
    return None


def abort_reason(run_abort: str) -> str:
    """The reason code of a PartyOutcome.run_abort text (``reason: detail``)."""
    return run_abort.split(":", 1)[0].strip() or "session_abort"


def link_config(params: LinkParameters, link_id: str,
                config: DistillConfig | None) -> DistillConfig:
    """The distillation settings of a link's source: ``config``, or the defaults for
    ``params``; either way they must name the source's link."""
    resolved = config if config is not None else DistillConfig.for_link(
        params, link_id=link_id, channel_timeout_s=30.0)
    if resolved.link_id != link_id:
        raise ParameterError("config.link_id", resolved.link_id,
                             f"must be the source's link_id {link_id!r}")
    return resolved


def public_figures(block: KeyBlock, pulse_duration_s: float
                  ) -> tuple[float | None, dict[str, float]]:
    """A distilled block's acquisition time and public counters."""
    pulses = block.meta.get("pulses")
    duration_s = pulses * pulse_duration_s if isinstance(pulses, int) and pulses > 0 else None
    meta = {name: float(block.meta[name]) for name in
            ("pulses", "sifted_bits", "disclosed_bits", "finite_key_bits")
            if isinstance(block.meta.get(name), int | float)}
    return duration_s, meta
