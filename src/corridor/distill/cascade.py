"""Stage 3 of distillation: Cascade error correction (ESTIMATED -> CORRECTED).

This module owns information reconciliation: Bob corrects his sifted key towards
Alice's by the interactive parity protocol Cascade (Brassard and Salvail, EUROCRYPT
1993), and both count every parity of Alice's key that crossed the channel.

Variants are data. A :class:`CascadeVariant` says how many passes to run, how each
pass chooses its block size (:class:`BlockRule`), and whether BICONF iterations
follow; one engine reads it. ``CASCADE_VARIANTS`` holds the published parameter
sets: "original" (Brassard-Salvail 1993), "yanetal" (Yan et al. 2008, "Cascade
opt. (2)" of Martinez-Mateo et al. 2015), "biconf" ("Cascade mod. (1)" of
Martinez-Mateo, Pacher, Peev, Ciurana, Martin, "Demystifying the information
reconciliation protocol Cascade", QIC 15, 2015) and "option3" ("Cascade opt. (3)").

Many frames at once. The key is cut into frames of equal length and every frame
runs its own Cascade, but all frames share each message: one message from Alice
carries the block parities of every pass of every frame, and each binary-search
level of every search in flight, in every frame, is one message each way. A
frame moves on as soon as its own searches finish, so a slow frame never holds the
others back. Each pass's permutation is drawn once (from ``shuffle_seed`` through
:class:`~corridor.randomness.RandomSource`) and applied to every frame: errors are
independent between frames, so sharing a public permutation costs nothing in
efficiency, and a frame's outcome does not depend on how many frames share the call.

Accounting. Only Alice ever reveals parities of her key: the block parities of
every pass, one parity per binary-search level, and the BICONF parities. Each is one
bit of ``disclosed_bits``, counted by Alice as she sends it and by Bob as he
receives it; the two counts are equal. Bob's messages name blocks to search and,
per level, the half that holds the error: they are functions of the error pattern
(Alice XOR Bob), which standard Cascade accounting treats as public; they are
reported apart as ``direction_bits``. Residual errors are possible (Cascade does not
guarantee success): the verification stage catches them.

Frames. ``n`` bits are cut into ``F = ceil(n / frame_bits)`` frames of equal length
``N = ceil(n / F) <= frame_bits``: the first frames hold ``N`` bits, the others
``N - 1`` bits and one padding bit, a public 0 on both sides that never holds an
error; a parity over a block that contains it is the parity of the block's key bits,
so padding discloses nothing beyond the parities counted.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from corridor.distill import _cascade_kernels as kernels
from corridor.distill.channel import DEFAULT_TIMEOUT_S, ChannelEndpoint
from corridor.errors import ParameterError, ProtocolAbort
from corridor.link.rates import binary_entropy
from corridor.randomness import RandomSource

MESSAGE_INIT = "cascade.init"
MESSAGE_STEP = "cascade.step"
MESSAGE_PARITY = "cascade.parity"

#: Block-size rules use at least this QBER (a zero estimate would ask for infinite blocks).
MIN_QBER_FOR_BLOCK_SIZE = 1e-5
MAX_FRAME_BITS = 1 << 28
#: A pass with at most this many blocks computes block parities from bit masks
#: (a few word operations per block) instead of running parities over the frame.
MASKED_PASS_MAX_BLOCKS = 4
_MAX_PERMUTATION_ROWS = 0xFFFF

_FLAG_DONE = 1
_FLAG_ABORT = 2
_INIT_HEADER = struct.Struct("<QIIIIIB")
_STEP_HEADER = struct.Struct("<BIIIIQ")
_PARITY_HEADER = struct.Struct("<I")


@dataclass(frozen=True)
class BlockRule:
    """How one pass chooses its block size.

    Attributes:
        kind: "qber": ``ceil(value / qber_estimate)``; "previous": ``value`` times the
            previous pass's block size; "frame": ``ceil(value * frame length)``.
        value: the factor of the rule (positive).
    """

    kind: Literal["qber", "previous", "frame"]
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("qber", "previous", "frame"):
            raise ParameterError("block_rule.kind", self.kind,
                                 "must be one of 'qber', 'previous', 'frame'")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value) \
                or self.value <= 0:
            raise ParameterError("block_rule.value", self.value, "must be a positive number")

    def size(self, qber_estimate: float, previous: int | None, frame_length: int) -> int:
        """The block size this rule gives, before clamping to the frame."""
        if self.kind == "qber":
            return math.ceil(self.value / max(qber_estimate, MIN_QBER_FOR_BLOCK_SIZE))
        if self.kind == "previous":
            if previous is None:
                raise ParameterError("block_rules", "previous", "the first pass needs a "
                                     "'qber' or 'frame' rule, not 'previous'")
            return math.ceil(self.value * previous)
        return math.ceil(self.value * frame_length)


@dataclass(frozen=True)
class CascadeVariant:
    """One Cascade variant as data; the engine in this module reads nothing else.

    Attributes:
        name: the key in ``CASCADE_VARIANTS``.
        reference: where the parameter set is published.
        passes: number of normal Cascade passes.
        block_rules: block-size rule of pass 1, 2, ...; the last rule serves every
            later pass. Sizes are clamped to [2, frame length].
        biconf_iterations: BICONF iterations after the passes (0: none). With
            ``biconf_until_error_free`` the number of error-free iterations in a row
            that ends BICONF; otherwise the fixed number of iterations.
        biconf_until_error_free: run BICONF until ``biconf_iterations`` iterations in a
            row find no error (at most ``biconf_max_iterations`` in all).
        biconf_correct_complement: also compare and search the complement of each
            BICONF subset (two parities per iteration instead of one).
        biconf_max_iterations: cap on BICONF iterations per frame.

    A BICONF iteration compares the parity of a random subset of the frame (each bit
    in it with probability 1/2, drawn afresh for every iteration) and, on a mismatch,
    binary-searches it for one error; errors it corrects cascade into the normal
    passes' blocks. BICONF subsets are not searched again after later corrections,
    as in Martinez-Mateo et al. 2015.
    """

    name: str
    reference: str
    passes: int
    block_rules: tuple[BlockRule, ...]
    biconf_iterations: int = 0
    biconf_until_error_free: bool = False
    biconf_correct_complement: bool = False
    biconf_max_iterations: int = 64

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str) or len(self.name.encode()) > 255:
            raise ParameterError("variant.name", self.name, "must be a short non-empty string")
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) \
                or not 1 <= self.passes <= 64:
            raise ParameterError("variant.passes", self.passes, "must be a whole number in "
                                 "[1, 64]")
        if not self.block_rules or not all(isinstance(r, BlockRule) for r in self.block_rules):
            raise ParameterError("variant.block_rules", len(self.block_rules or ()),
                                 "must be a non-empty tuple of BlockRule")
        if self.block_rules[0].kind == "previous":
            raise ParameterError("variant.block_rules[0].kind", "previous",
                                 "the first pass needs a 'qber' or 'frame' rule")
        if not 0 <= self.biconf_iterations <= self.biconf_max_iterations:
            raise ParameterError("variant.biconf_iterations", self.biconf_iterations,
                                 f"must be in [0, biconf_max_iterations = "
                                 f"{self.biconf_max_iterations}]")
        if not 1 <= self.biconf_max_iterations <= 4096:
            raise ParameterError("variant.biconf_max_iterations", self.biconf_max_iterations,
                                 "must be in [1, 4096]")

    def block_sizes(self, qber_estimate: float, frame_length: int) -> tuple[int, ...]:
        """Block size of every pass for this QBER estimate and frame length."""
        sizes: list[int] = []
        previous: int | None = None
        smallest = min(2, frame_length)
        for p in range(self.passes):
            rule = self.block_rules[min(p, len(self.block_rules) - 1)]
            size = min(frame_length, max(smallest, rule.size(qber_estimate, previous,
                                                             frame_length)))
            sizes.append(size)
            previous = size
        return tuple(sizes)

    @property
    def biconf_blocks(self) -> int:
        """Parities Alice discloses per BICONF iteration."""
        return 2 if self.biconf_correct_complement else 1


CASCADE_VARIANTS: dict[str, CascadeVariant] = {v.name: v for v in (
    CascadeVariant(
        name="original",
        reference="Brassard and Salvail, EUROCRYPT 1993: 4 passes, k1 = 0.73/QBER, doubling",
        passes=4,
        block_rules=(BlockRule("qber", 0.73), BlockRule("previous", 2))),
    CascadeVariant(
        name="yanetal",
        reference="Yan et al. 2008 ('Cascade opt. (2)' in Martinez-Mateo et al. 2015): "
                  "10 passes, k1 = 0.80/QBER, k2 = 5 k1, then N/2",
        passes=10,
        block_rules=(BlockRule("qber", 0.80), BlockRule("previous", 5), BlockRule("frame", 0.5))),
    CascadeVariant(
        name="biconf",
        reference="'Cascade mod. (1)' in Martinez-Mateo et al. 2015: 2 passes, "
                  "k1 = 0.92/QBER, k2 = 3 k1, then BICONF until 10 error-free in a row",
        passes=2,
        block_rules=(BlockRule("qber", 0.92), BlockRule("previous", 3)),
        biconf_iterations=10, biconf_until_error_free=True),
    CascadeVariant(
        name="option3",
        reference="'Cascade opt. (3)' in Martinez-Mateo et al. 2015 (without sub-block "
                  "reuse): 16 passes, k1 = 1/QBER, k2 = 2 k1, then N/2",
        passes=16,
        block_rules=(BlockRule("qber", 1.0), BlockRule("previous", 2), BlockRule("frame", 0.5))),
)}


@dataclass
class ReconciliationResult:
    """What reconciliation produced for one party (the bits are never printed).

    Attributes:
        bits: Bob: his corrected key; Alice: her key, unchanged.
        disclosed_bits: parity bits of Alice's key that crossed the channel.
        frames: number of frames the key was cut into.
        frame_bits: length of a frame (``N`` in the module docstring).
        passes_run: normal passes plus the most BICONF iterations any frame ran.
        messages: messages this reconciliation put on the channel (both directions).
        qber_corrected: fraction of the key's bits Bob flipped (Alice learns the
            count from Bob's closing message; it is public).
        round_trips: Bob -> Alice -> Bob exchanges.
        direction_bits: binary-search directions Bob sent (error-pattern information,
            not counted in ``disclosed_bits``; see the module docstring).
        alice_disclosed_bits: bits counted against the key that Alice sent.
        bob_disclosed_bits: bits counted against the key that Bob sent
            (``disclosed_bits`` is the sum of the two).
    """

    bits: np.ndarray = field(repr=False)
    disclosed_bits: int
    frames: int
    frame_bits: int
    passes_run: int
    messages: int
    qber_corrected: float | None
    round_trips: int = 0
    direction_bits: int = 0
    alice_disclosed_bits: int = 0
    bob_disclosed_bits: int = 0

    def efficiency(self, qber: float) -> float:
        """f = disclosed_bits / (n H2(qber)), the ratio to the Shannon limit."""
        if not isinstance(qber, (int, float)) or not 0.0 < qber < 0.5:
            raise ParameterError("qber", qber, "efficiency needs a QBER in (0, 0.5)")
        n = int(self.bits.shape[0])
        if n == 0:
            raise ParameterError("bits", "empty", "efficiency needs a non-empty key")
        return self.disclosed_bits / (n * binary_entropy(float(qber)))


def reconcile_alice(channel: ChannelEndpoint, bits: np.ndarray, *,
                    variant: CascadeVariant | str, qber_estimate: float, shuffle_seed: int,
                    frame_bits: int = 10_000,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> ReconciliationResult:
    """Alice's side of Cascade: she answers parity questions and never changes her key.

    Args:
        channel: her endpoint of the (authenticated) classical channel.
        bits: her sifted key, a 1-D uint8 array of 0/1.
        variant: a :class:`CascadeVariant` or the name of one in ``CASCADE_VARIANTS``.
        qber_estimate: the QBER estimate both parties agreed on (sets block sizes).
        shuffle_seed: the public seed of the pass permutations (same on both sides).
        frame_bits: the longest frame.
        timeout_s: how long to wait for each of Bob's messages.
    """
    session = _Session.create(bits, variant, qber_estimate, shuffle_seed, frame_bits)
    if session.n == 0:
        return session.result(np.asarray(bits, dtype=np.uint8), 0, 0, 0, 0, 0, 0)
    key = session.to_frames(bits)
    alice = _Alice(session, key)
    return alice.run(channel, timeout_s, np.asarray(bits, dtype=np.uint8))


def reconcile_bob(channel: ChannelEndpoint, bits: np.ndarray, *,
                  variant: CascadeVariant | str, qber_estimate: float, shuffle_seed: int,
                  frame_bits: int = 10_000,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> ReconciliationResult:
    """Bob's side of Cascade: he drives the searches and returns his corrected key.

    Arguments as for :func:`reconcile_alice`; ``bits`` is Bob's sifted key. The input
    array is not modified.
    """
    session = _Session.create(bits, variant, qber_estimate, shuffle_seed, frame_bits)
    if session.n == 0:
        return session.result(np.zeros(0, dtype=np.uint8), 0, 0, 0, 0, 0, 0)
    key = session.to_frames(bits)
    bob = _Bob(session, key)
    return bob.run(channel, timeout_s)


# --------------------------------------------------------------------------------------
# Shared layout


def _resolve_variant(variant: CascadeVariant | str) -> CascadeVariant:
    if isinstance(variant, CascadeVariant):
        return variant
    if isinstance(variant, str) and variant in CASCADE_VARIANTS:
        return CASCADE_VARIANTS[variant]
    raise ParameterError("variant", variant if isinstance(variant, str) else
                         type(variant).__name__,
                         "must be a CascadeVariant or one of " + ", ".join(CASCADE_VARIANTS))


def _check_bits(bits: np.ndarray) -> np.ndarray:
    if not isinstance(bits, np.ndarray) or bits.ndim != 1 or bits.dtype.kind not in "biu":
        described = (f"{bits.ndim}-D {bits.dtype} array" if isinstance(bits, np.ndarray)
                     else type(bits).__name__)
        raise ParameterError("bits", described, "must be a 1-D uint8 array of 0/1")
    key = bits.astype(np.uint8, copy=False)
    if key.size and int(key.max()) > 1:
        raise ParameterError("bits", f"array of {key.size} values",
                             "every value must be 0 or 1")
    return key


@dataclass
class _Session:
    """Everything both parties derive identically from the public parameters."""

    variant: CascadeVariant
    n: int
    frames: int
    length: int
    full_frames: int
    block_sizes: np.ndarray
    column: np.ndarray
    width: int
    perms: np.ndarray
    masks: np.ndarray
    split: np.ndarray
    rows: int
    rng: RandomSource
    prefix_slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pass_masks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint64))

    @classmethod
    def create(cls, bits: np.ndarray, variant: CascadeVariant | str, qber_estimate: float,
               shuffle_seed: int, frame_bits: int) -> _Session:
        resolved = _resolve_variant(variant)
        key = _check_bits(bits)
        if not isinstance(qber_estimate, (int, float)) or isinstance(qber_estimate, bool) \
                or not math.isfinite(qber_estimate) or not 0.0 <= qber_estimate < 0.5:
            raise ParameterError("qber_estimate", qber_estimate, "must be in [0, 0.5)")
        if isinstance(frame_bits, bool) or not isinstance(frame_bits, int) \
                or not 2 <= frame_bits <= MAX_FRAME_BITS:
            raise ParameterError("frame_bits", frame_bits,
                                 f"must be a whole number in [2, {MAX_FRAME_BITS}]")
        if isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int) \
                or shuffle_seed < 0:
            raise ParameterError("shuffle_seed", shuffle_seed, "must be a non-negative integer")
        n = int(key.shape[0])
        frames = -(-n // frame_bits)
        length = -(-n // frames) if frames else 0
        full_frames = n - frames * (length - 1) if frames else 0
        sizes = np.array(resolved.block_sizes(float(qber_estimate), max(length, 1)),
                         dtype=np.int64)
        blocks = -(-max(length, 1) // sizes)
        column = np.concatenate(([0], np.cumsum(blocks))).astype(np.int64)
        width = 8 * -(-max(length, 1) // 64)
        session = cls(variant=resolved, n=n, frames=frames, length=length,
                      full_frames=full_frames, block_sizes=sizes, column=column, width=width,
                      perms=np.empty((0, max(length, 1)), np.uint32),
                      masks=np.empty((0, width // 8), np.uint64),
                      split=np.empty(0, np.int64), rows=0, rng=RandomSource.seeded(shuffle_seed))
        if n:
            session.ensure_rows(resolved.passes)
            session._plan_passes()
        return session

    def _plan_passes(self) -> None:
        """Decide per pass: running parities (many short blocks) or block masks (few long).

        Running parities make every search level two look-ups but cost a pass over the
        frame to build; a pass of a few long blocks (Yan's N/2 passes) is searched
        rarely, so its block parities come from masks and its searches gather.
        """
        blocks = np.diff(self.column)
        masked = blocks <= MASKED_PASS_MAX_BLOCKS
        self.prefix_slot = np.where(masked, -1, np.cumsum(~masked) - 1).astype(np.int64)
        self.pass_masks = np.zeros((self.passes, MASKED_PASS_MAX_BLOCKS, self.width // 8),
                                   np.uint64)
        for p in np.flatnonzero(masked):
            k = int(self.block_sizes[p])
            for b in range(int(blocks[p])):
                member = np.zeros(self.width * 8, np.bool_)
                member[self.perms[p, b * k:(b + 1) * k]] = True
                self.pass_masks[p, b] = np.packbits(member, bitorder="little").view("<u8")

    @property
    def prefix_passes(self) -> int:
        """Passes that keep running parities."""
        return int((self.prefix_slot >= 0).sum())

    @property
    def passes(self) -> int:
        return self.variant.passes

    @property
    def biconf_mode(self) -> int:
        if self.variant.biconf_iterations == 0:
            return 0
        return 2 if self.variant.biconf_until_error_free else 1

    @property
    def biconf_initial(self) -> int:
        """BICONF iterations every frame runs for sure: their parities go up front."""
        return self.variant.biconf_iterations

    def ensure_rows(self, rows: int) -> None:
        """Draw rows (in order: the passes, then BICONF iterations) up to ``rows``.

        A pass's row is a uniform permutation of the frame. A BICONF iteration's row
        is a random subset (each bit with probability 1/2, kept as a bit mask too)
        followed by its complement, each in ascending order; ``split`` is the subset's
        size.
        """
        if rows > _MAX_PERMUTATION_ROWS:
            raise ProtocolAbort("malformed_message", f"permutation row {rows} out of range")
        if rows <= self.rows:
            return
        if rows > self.perms.shape[0]:
            capacity = max(rows, 2 * self.perms.shape[0])
            perms = np.empty((capacity, self.length), np.uint32)
            masks = np.zeros((capacity, self.width // 8), np.uint64)
            split = np.zeros(capacity, np.int64)
            perms[:self.rows] = self.perms[:self.rows]
            masks[:self.rows] = self.masks[:self.rows]
            split[:self.rows] = self.split[:self.rows]
            self.perms, self.masks, self.split = perms, masks, split
        generator = self.rng.generator
        for r in range(self.rows, rows):
            if r < self.passes:
                self.perms[r] = generator.permutation(self.length)
                continue
            subset = generator.integers(0, 2, self.length, dtype=np.uint8).astype(np.bool_)
            inside = np.flatnonzero(subset)
            self.perms[r, :inside.size] = inside
            self.perms[r, inside.size:] = np.flatnonzero(~subset)
            self.split[r] = inside.size
            packed = np.zeros(self.width, np.uint8)
            packed[:(self.length + 7) // 8] = np.packbits(subset, bitorder="little")
            self.masks[r] = packed.view("<u8")
        self.rows = rows

    def to_frames(self, bits: np.ndarray) -> np.ndarray:
        """The key as frames, packed as the kernels expect (see ``_cascade_kernels``)."""
        key = _check_bits(bits)
        out = np.zeros((self.frames, self.length), dtype=np.uint8)
        split = self.full_frames * self.length
        out[:self.full_frames] = key[:split].reshape(self.full_frames, self.length)
        out[self.full_frames:, :self.length - 1] = key[split:].reshape(
            self.frames - self.full_frames, self.length - 1)
        packed = np.zeros((self.frames, self.width), dtype=np.uint8)
        packed[:, :(self.length + 7) // 8] = np.packbits(out, axis=1, bitorder="little")
        return packed

    def from_frames(self, packed: np.ndarray) -> np.ndarray:
        framed = np.unpackbits(packed, axis=1, count=self.length, bitorder="little")
        return np.concatenate((framed[:self.full_frames].ravel(),
                               framed[self.full_frames:, :self.length - 1].ravel()))

    def announce(self) -> bytes:
        """The parameters Alice states in her first message, for Bob to check."""
        name = self.variant.name.encode()
        return (_INIT_HEADER.pack(self.n, self.frames, self.length, self.passes,
                                  self.biconf_initial, self.variant.biconf_blocks, len(name))
                + name + self.block_sizes.astype("<u4").tobytes())

    def decode_searches(self, entry_frame: np.ndarray, entry_row: np.ndarray,
                        entry_count: np.ndarray, block: np.ndarray,
                        biconf_sent: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """(frame, row, lo, hi) of new searches named by block; bad indices abort."""
        frame = np.repeat(entry_frame.astype(np.int64), entry_count.astype(np.int64))
        row = np.repeat(entry_row.astype(np.int64), entry_count.astype(np.int64))
        block = block.astype(np.int64)
        if frame.size == 0:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty.copy(), empty.copy()
        if int(frame.max()) >= self.frames:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_STEP}: frame out of range")
        normal = row < self.passes
        k = self.block_sizes[np.minimum(row, self.passes - 1)]
        nblocks = np.diff(self.column)[np.minimum(row, self.passes - 1)]
        half = self.split[np.minimum(row, self.rows - 1)]
        lo = np.where(normal, block * k, np.where(block == 0, 0, half))
        hi = np.where(normal, np.minimum(self.length, block * k + k),
                      np.where(block == 0, half, self.length))
        valid = np.where(normal, (block >= 0) & (block < nblocks),
                         (block >= 0) & (block < self.variant.biconf_blocks))
        if biconf_sent is not None:
            valid &= normal | (row - self.passes < biconf_sent[frame])
        valid &= (hi - lo) >= 2
        if not bool(valid.all()):
            raise ProtocolAbort("malformed_message", f"{MESSAGE_STEP}: search out of range")
        return frame, row, lo, hi

    def result(self, bits: np.ndarray, disclosed: int, biconf_rows: int, messages: int,
               round_trips: int, direction_bits: int, flips: int) -> ReconciliationResult:
        return ReconciliationResult(
            bits=bits, disclosed_bits=int(disclosed), frames=self.frames,
            frame_bits=self.length, passes_run=(self.passes + biconf_rows) if self.n else 0,
            messages=messages, qber_corrected=(flips / self.n) if self.n else 0.0,
            round_trips=round_trips, direction_bits=int(direction_bits))


def _index_dtype(session: _Session) -> np.dtype:
    return np.dtype("<u2") if session.length <= 0xFFFF else np.dtype("<u4")


def _unpack(payload: bytes, offset: int, count: int) -> np.ndarray:
    raw = np.frombuffer(payload, dtype=np.uint8, count=(count + 7) // 8, offset=offset)
    return np.unpackbits(raw, count=count)


def _take(payload: bytes, offset: int, dtype: np.dtype | str, count: int) -> np.ndarray:
    return np.frombuffer(payload, dtype=dtype, count=count, offset=offset)


# --------------------------------------------------------------------------------------
# Alice


class _Alice:
    """Alice's side: she answers, never decides, and never changes her key.

    She keeps the searches in flight in the same order as Bob (survivors, then new
    ones in message order), so a message needs no search identifiers.
    """

    def __init__(self, session: _Session, key: np.ndarray) -> None:
        self.s = session
        self.key = key
        # Running parities of every pass: a search level costs two look-ups per search.
        self.prefixes = np.empty((session.prefix_passes, session.frames,
                                  session.length // 8 + 1), np.uint8)
        self.frame = np.zeros(0, np.int64)
        self.row = np.zeros(0, np.int64)
        self.lo = np.zeros(0, np.int64)
        self.hi = np.zeros(0, np.int64)
        self.biconf_sent = np.zeros(session.frames, np.int64)
        self._pending_biconf = np.zeros(0, dtype=np.uint8)
        self._flips = 0
        self.disclosed = 0
        self.messages = 0
        self.round_trips = 0
        self.direction_bits = 0

    def run(self, channel: ChannelEndpoint, timeout_s: float,
            original: np.ndarray) -> ReconciliationResult:
        s = self.s
        top = np.zeros((s.frames, int(s.column[-1])), dtype=np.uint8)
        for p in range(s.passes):
            slot = int(s.prefix_slot[p])
            if slot < 0:
                kernels.block_parities_from_masks(self.key.view("<u8"), s.pass_masks[p],
                                                  int(s.column[p + 1] - s.column[p]), top,
                                                  int(s.column[p]))
                continue
            kernels.prefix_parities(self.key, s.perms[p], self.prefixes[slot])
            kernels.block_parities_from_prefix(self.prefixes[slot], s.length,
                                               int(s.block_sizes[p]), top, int(s.column[p]))
        initial = self._biconf(np.arange(s.frames, dtype=np.int64),
                               np.full(s.frames, s.biconf_initial, np.int64))
        parities = np.concatenate((top.ravel(), initial))
        self.disclosed += parities.size
        channel.send(MESSAGE_INIT, s.announce() + np.packbits(parities).tobytes())
        self.messages += 1
        while True:
            payload = channel.recv(MESSAGE_STEP, timeout_s)
            self.messages += 1
            if self._step(payload):
                break
            left = np.empty(self.lo.size, dtype=np.uint8)
            kernels.left_half_parities(self.key, s.perms[:s.rows], self.prefixes,
                                       s.prefix_slot, self.frame, self.row, self.lo, self.hi,
                                       left)
            bits = np.concatenate((left, self._pending_biconf))
            self.disclosed += bits.size
            channel.send(MESSAGE_PARITY, _PARITY_HEADER.pack(bits.size)
                         + np.packbits(bits).tobytes())
            self.messages += 1
            self.round_trips += 1
        return s.result(original, self.disclosed, int(self.biconf_sent.max()), self.messages,
                        self.round_trips, self.direction_bits, self._flips)

    def _biconf(self, req_frame: np.ndarray, req_upto: np.ndarray) -> np.ndarray:
        s = self.s
        if s.biconf_mode == 0 or req_frame.size == 0:
            return np.zeros(0, dtype=np.uint8)
        s.ensure_rows(s.passes + int(req_upto.max()))
        out = np.empty(int((req_upto - self.biconf_sent[req_frame]).sum())
                       * s.variant.biconf_blocks, dtype=np.uint8)
        count = kernels.biconf_parities(self.key.view("<u8"), s.masks[:s.rows], s.passes,
                                        s.variant.biconf_blocks, req_frame, req_upto,
                                        self.biconf_sent, out)
        return out[:count]

    def _step(self, payload: bytes) -> bool:
        """Apply one of Bob's step messages; True when Bob has finished."""
        s = self.s
        try:
            flags, n_dirs, n_entries, n_new, n_req, flips = _STEP_HEADER.unpack_from(payload)
        except struct.error:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_STEP}: short header") from None
        if flags & _FLAG_ABORT:
            detail = payload[_STEP_HEADER.size:].decode("ascii", "replace")
            raise ProtocolAbort("cascade_parameter_mismatch", f"Bob: {detail}")
        index = _index_dtype(s)
        expected = (_STEP_HEADER.size + (n_dirs + 7) // 8 + n_entries * (4 + 2 + index.itemsize)
                    + n_new * index.itemsize + n_req * (4 + 2))
        if len(payload) != expected or n_dirs != self.lo.size:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_STEP}: {len(payload)} bytes "
                                f"and {n_dirs} directions, expected {expected} bytes and "
                                f"{self.lo.size} directions")
        offset = _STEP_HEADER.size
        directions = _unpack(payload, offset, n_dirs)
        offset += (n_dirs + 7) // 8
        self.direction_bits += n_dirs
        keep = np.empty(n_dirs, dtype=np.bool_)
        kernels.alice_apply_directions(directions, self.lo, self.hi, keep)
        self.frame, self.row = self.frame[keep], self.row[keep]
        self.lo, self.hi = self.lo[keep], self.hi[keep]
        entry_frame = _take(payload, offset, "<u4", n_entries)
        offset += 4 * n_entries
        entry_row = _take(payload, offset, "<u2", n_entries)
        offset += 2 * n_entries
        entry_count = _take(payload, offset, index, n_entries)
        offset += index.itemsize * n_entries
        block = _take(payload, offset, index, n_new)
        offset += index.itemsize * n_new
        req_frame = _take(payload, offset, "<u4", n_req).astype(np.int64)
        offset += 4 * n_req
        req_upto = _take(payload, offset, "<u2", n_req).astype(np.int64)
        if int(entry_count.astype(np.int64).sum()) != n_new:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_STEP}: search counts")
        if flags & _FLAG_DONE:
            if self.lo.size or n_new or n_req:
                raise ProtocolAbort("malformed_message",
                                    f"{MESSAGE_STEP}: finished with searches in flight")
            self._flips = int(flips)
            return True
        if int(entry_row.max(initial=0)) >= s.passes + s.variant.biconf_max_iterations:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_STEP}: row out of range")
        new = s.decode_searches(entry_frame, entry_row, entry_count, block, self.biconf_sent)
        self.frame = np.concatenate((self.frame, new[0]))
        self.row = np.concatenate((self.row, new[1]))
        self.lo = np.concatenate((self.lo, new[2]))
        self.hi = np.concatenate((self.hi, new[3]))
        if n_req:
            limit = s.variant.biconf_max_iterations
            if s.biconf_mode == 0 or int(req_frame.max()) >= s.frames \
                    or np.unique(req_frame).size != n_req or int(req_upto.max()) > limit \
                    or bool(np.any(req_upto <= self.biconf_sent[req_frame])):
                raise ProtocolAbort("malformed_message", f"{MESSAGE_STEP}: BICONF request")
        self._pending_biconf = self._biconf(req_frame, req_upto)
        return False


# --------------------------------------------------------------------------------------
# Bob


class _Bob:
    """Bob's side: he plans every frame's next searches, compares parities, flips bits."""

    def __init__(self, session: _Session, key: np.ndarray) -> None:
        s = session
        self.s = s
        self.key = key
        frames = s.frames
        self.pos = np.empty((s.passes, s.length), np.uint32)
        for p in range(s.passes):
            self.pos[p, s.perms[p]] = np.arange(s.length)
        self.alice_top = np.zeros((frames, int(s.column[-1])), np.uint8)
        self.odd_blocks = np.zeros_like(self.alice_top)
        self.odd_count = np.zeros((frames, s.passes), np.int64)
        self.stage = np.zeros(frames, np.int64)
        self.flips = np.zeros(frames, np.int64)
        # Bits Bob flipped, per frame (beyond this many, parities are gathered instead).
        self.flipped = np.zeros((frames, s.length // 4 + 64), np.uint32)
        # Running parities of his bits as they came in (passes of many blocks).
        self.prefixes = np.empty((s.prefix_passes, frames, s.length // 8 + 1), np.uint8)
        for p, slot in enumerate(s.prefix_slot.tolist()):
            if slot >= 0:
                kernels.prefix_parities(key, s.perms[p], self.prefixes[slot])
        self.active = np.zeros(frames, np.int64)
        self.done = np.zeros(frames, np.bool_)
        self.waiting = np.zeros(frames, np.bool_)
        self.biconf_next = np.zeros(frames, np.int64)
        self.biconf_streak = np.zeros(frames, np.int64)
        self.biconf_have = np.zeros(frames, np.int64)
        self.biconf_alice = np.zeros((frames, s.variant.biconf_max_iterations,
                                      s.variant.biconf_blocks), np.uint8)
        self.frame = np.zeros(0, np.int64)
        self.row = np.zeros(0, np.int64)
        self.lo = np.zeros(0, np.int64)
        self.hi = np.zeros(0, np.int64)
        most_blocks = int(np.diff(s.column).max())
        self._out = [np.empty(frames * max(most_blocks, 2), np.int64) for _ in range(5)]
        self._req = [np.empty(frames, np.int64) for _ in range(2)]
        self._new_frame = self._new_row = self._new_block = np.zeros(0, np.int64)
        self.disclosed = 0
        self.messages = 0
        self.round_trips = 0
        self.direction_bits = 0

    def run(self, channel: ChannelEndpoint, timeout_s: float) -> ReconciliationResult:
        s = self.s
        payload = channel.recv(MESSAGE_INIT, timeout_s)
        self.messages += 1
        self._check_announcement(channel, payload)
        offset = len(s.announce())
        top_bits = self.alice_top.size
        initial = s.frames * s.biconf_initial * s.variant.biconf_blocks
        if len(payload) != offset + (top_bits + initial + 7) // 8:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_INIT}: {len(payload)} bytes")
        parities = _unpack(payload, offset, top_bits + initial)
        self.disclosed += parities.size
        self.alice_top[:] = parities[:top_bits].reshape(self.alice_top.shape)
        if s.biconf_mode:
            s.ensure_rows(s.passes + s.biconf_initial)
            kernels.store_biconf(np.arange(s.frames, dtype=np.int64),
                                 np.full(s.frames, s.biconf_initial, np.int64),
                                 self.biconf_have, self.biconf_alice, parities, top_bits,
                                 s.variant.biconf_blocks)
        directions = np.zeros(0, np.uint8)
        while True:
            req_frame, req_upto = self._plan()
            if self.lo.size == 0 and req_frame.size == 0:
                if not bool(self.done.all()):
                    raise ProtocolAbort("cascade_internal", "frames left unfinished")
                channel.send(MESSAGE_STEP, self._step_message(_FLAG_DONE, directions,
                                                              req_frame, req_upto))
                self.messages += 1
                break
            channel.send(MESSAGE_STEP, self._step_message(0, directions, req_frame, req_upto))
            self.messages += 1
            payload = channel.recv(MESSAGE_PARITY, timeout_s)
            self.messages += 1
            self.round_trips += 1
            directions = self._level(payload, req_frame, req_upto)
        corrected = s.from_frames(self.key)
        return s.result(corrected, self.disclosed, int(self.biconf_have.max()), self.messages,
                        self.round_trips, self.direction_bits, int(self.flips.sum()))

    def _check_announcement(self, channel: ChannelEndpoint, payload: bytes) -> None:
        mine = self.s.announce()
        theirs = payload[:len(mine)]
        if theirs == mine:
            return
        fields = ("n", "frames", "frame_length", "passes", "biconf_initial",
                  "biconf_blocks", "variant_name_length")
        detail = "variant/block sizes differ"
        if len(theirs) >= _INIT_HEADER.size:
            for name, a, b in zip(fields, _INIT_HEADER.unpack_from(theirs),
                                  _INIT_HEADER.unpack_from(mine), strict=True):
                if a != b:
                    detail = f"{name}: alice={a} bob={b}"
                    break
        channel.send(MESSAGE_STEP, _STEP_HEADER.pack(_FLAG_ABORT, 0, 0, 0, 0, 0)
                     + detail.encode("ascii", "replace"))
        self.messages += 1
        raise ProtocolAbort("cascade_parameter_mismatch", detail)

    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        """Plan idle frames; append their new searches; return the BICONF requests."""
        s = self.s
        out_frame, out_row, out_block, out_lo, out_hi = self._out
        req_frame, req_upto = self._req
        n_new, n_req = kernels.bob_plan(
            self.key, self.key.view("<u8"), s.perms[:s.rows], s.masks[:s.rows],
            s.split[:s.rows], self.prefixes, s.prefix_slot, s.pass_masks, self.pos,
            s.block_sizes, s.column, self.alice_top, self.odd_blocks, self.odd_count,
            self.stage, self.flips, self.flipped, self.active, self.done, self.waiting,
            self.biconf_next, self.biconf_streak, self.biconf_have, self.biconf_alice,
            s.passes, s.biconf_mode, s.variant.biconf_iterations,
            s.variant.biconf_max_iterations, s.variant.biconf_blocks,
            out_frame, out_row, out_block, out_lo, out_hi, req_frame, req_upto)
        self._new_frame = out_frame[:n_new].copy()
        self._new_row = out_row[:n_new].copy()
        self._new_block = out_block[:n_new].copy()
        self.frame = np.concatenate((self.frame, self._new_frame))
        self.row = np.concatenate((self.row, self._new_row))
        self.lo = np.concatenate((self.lo, out_lo[:n_new]))
        self.hi = np.concatenate((self.hi, out_hi[:n_new]))
        return req_frame[:n_req].copy(), req_upto[:n_req].copy()

    def _step_message(self, flags: int, directions: np.ndarray, req_frame: np.ndarray,
                      req_upto: np.ndarray) -> bytes:
        index = _index_dtype(self.s)
        frame = self._new_frame if not flags else np.zeros(0, np.int64)
        if frame.size:
            starts = np.flatnonzero(np.diff(frame, prepend=-1))
            entry_frame = frame[starts]
            entry_row = self._new_row[starts]
            entry_count = np.diff(np.append(starts, frame.size))
        else:
            entry_frame = entry_row = entry_count = np.zeros(0, np.int64)
        self.direction_bits += directions.size
        return b"".join((
            _STEP_HEADER.pack(flags, directions.size, entry_frame.size, frame.size,
                              req_frame.size, int(self.flips.sum())),
            np.packbits(directions).tobytes(),
            entry_frame.astype("<u4").tobytes(), entry_row.astype("<u2").tobytes(),
            entry_count.astype(index).tobytes(),
            (self._new_block if frame.size else frame).astype(index).tobytes(),
            req_frame.astype("<u4").tobytes(), req_upto.astype("<u2").tobytes()))

    def _level(self, payload: bytes, req_frame: np.ndarray,
               req_upto: np.ndarray) -> np.ndarray:
        """Take Alice's parities for one level; return the directions for her."""
        s = self.s
        n_active = self.lo.size
        n_biconf = int((req_upto - self.biconf_have[req_frame]).sum()) \
            * s.variant.biconf_blocks
        try:
            (count,) = _PARITY_HEADER.unpack_from(payload)
        except struct.error:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_PARITY}: short") from None
        if count != n_active + n_biconf \
                or len(payload) != _PARITY_HEADER.size + (count + 7) // 8:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_PARITY}: {count} parities, "
                                f"expected {n_active + n_biconf}")
        parities = _unpack(payload, _PARITY_HEADER.size, count)
        self.disclosed += count
        if req_frame.size:
            s.ensure_rows(s.passes + int(req_upto.max()))
            kernels.store_biconf(req_frame, req_upto, self.biconf_have, self.biconf_alice,
                                 parities, n_active, s.variant.biconf_blocks)
            self.waiting[req_frame] = False
        directions = np.empty(n_active, np.uint8)
        keep = np.empty(n_active, np.bool_)
        kernels.bob_apply_level(parities[:n_active], self.frame, self.row, self.lo, self.hi,
                                directions, keep, self.key, s.perms[:s.rows], self.prefixes,
                                s.prefix_slot, self.pos, s.block_sizes, s.column, self.odd_blocks,
                                self.odd_count, self.stage, self.flips, self.flipped,
                                self.active)
        self.frame, self.row = self.frame[keep], self.row[keep]
        self.lo, self.hi = self.lo[keep], self.hi[keep]
        return directions
