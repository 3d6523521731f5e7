"""Stage 3 of distillation, second method: rate-adaptive LDPC reconciliation.

This module owns one-way syndrome reconciliation with the mother codes of
``corridor.distill.ldpc_codes``: choosing a code and its puncturing and shortening
for a QBER estimate, the messages, blind retries (Martinez-Mateo, Elkouss, Martin,
"Blind reconciliation", QIC 12, 791 (2012)) and the exact count of what crosses the
channel. It returns the same :class:`~corridor.distill.cascade.ReconciliationResult`
as Cascade, so verification and privacy amplification do not know which ran.

Frames. The key is cut into ``F`` frames of ``K`` or ``K - 1`` key bits. Each frame
is one codeword of an ``(n, m)`` mother code (``m`` checks): ``p`` positions are
*punctured* (Alice fills them with secret random bits from her own RandomSource;
Bob knows nothing of them), ``s`` (or ``s + 1`` in a ``K - 1`` frame) positions are
*shortened* (fixed to 0, public), the other ``K`` carry key bits (rate adaptation of
Elkouss, Martinez-Mateo, Lancho, Martin, "Rate compatible protocol for information
reconciliation: an application to QKD", IEEE ITW 2010). The effective rate is
``(n - m - s) / (n - p - s)``.

Choosing p and s. For a QBER estimate ``q`` and a target efficiency ``f``, the syndrome
should disclose ``f h(q)`` bits per key bit. Every code whose rate can be brought there
is a candidate; the one whose design rate is closest to ``1 - f h(q)`` is taken (least
modulation), ``K`` is the most key bits per frame it allows, ``F = ceil(len / K)`` and
``K`` is then lowered to ``ceil(len / F)``; ``p = m - round(f h(q) K)`` (within
``[0, max_punctured]``) and ``s = n - K - p``. If ``f`` is below the chosen code's
threshold efficiency (``(1 - R) / h(threshold)`` of its ensemble, 1.153 for the
rate-0.90 code, below 1.10 for every other), the same code is planned again at that
floor (``LdpcSettings.threshold_floor``). A key whose frames are too short for
that rate (``p`` would exceed ``max_punctured``) is planned on codes of half the
length, down to ``MIN_ADAPTIVE_CODE_BITS``. Both parties compute this from the
public estimate and settings; Alice's first message repeats it with the code identity
and Bob refuses a mismatch (``ldpc_code_mismatch``, ``ldpc_parameter_mismatch``).

Protocol and accounting (every count is per frame and exact):

1. Alice -> Bob ``ldpc.syndrome``: the ``m`` syndrome bits of every frame. They
   disclose at most ``m - p`` bits about the key: the punctured columns of the
   parity-check matrix have full column rank (each punctured variable owns a private
   check, see ``ldpc_codes``), so given the key the syndrome still carries the ``p``
   secret random bits in full: I(key; syndrome) = H(syndrome) - H(syndrome | key)
   <= m - p. Shortened bits are public constants, not key: they disclose nothing.
2. Bob decodes every frame (``_ldpc_kernels.decode_layered_fast``, or the reference
   ``decode_layered_spa``: ``LdpcSettings.decoder``; on ``decoder_threads`` threads,
   frames being independent) and answers
   ``ldpc.result``: one bit per frame, decoded or not, and before a retry the
   unsatisfied checks of the frames that ask for a targeted one
   (``bob_disclosed_bits``: all of it depends on both strings, so every bit is counted).
3. Retries: for every frame that failed, Alice reveals the values of more positions
   of that frame, Bob decodes those frames again and answers again; at most
   ``max_retries`` times. A frame that failed with many unsatisfied checks gets the
   next ``ceil(retry_step * h(q) * K)`` positions of a fixed public order (the
   punctured positions, last first, then key positions: a *blind* retry). A frame
   left with at most ``targeted_max_checks`` unsatisfied checks (a trapping set: a
   few confidently wrong bits that belief propagation cannot move) gets a *targeted*
   retry: Bob's answer names those checks and Alice reveals every position of them
   not yet known. A revealed punctured bit removes one bit of the credit ``p`` and a
   revealed key bit discloses one bit: each revealed bit counts one
   (``alice_disclosed_bits = F (m - p) + revealed``); the check indices Bob sends are
   counted in ``bob_disclosed_bits`` bit for bit (a byte per failed frame for their
   number, ``ceil(log2 m)`` bits per index).
4. Frames still failing after the last retry are dropped by both parties (a public
   decision from Bob's flags); their bits leave the key, and what was disclosed about
   them stays counted (an upper bound: they are independent of the kept frames).

A decoded frame satisfies the syndrome, but may still differ from Alice's (an
undetected error: another word with the same syndrome); the verification stage
catches it. ``disclosed_bits = alice_disclosed_bits + bob_disclosed_bits``.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corridor.distill import _ldpc_kernels as kernels
from corridor.distill.cascade import ReconciliationResult
from corridor.distill.channel import DEFAULT_TIMEOUT_S, ChannelEndpoint
from corridor.distill.ldpc_codes import (
    DEFAULT_CODE_BITS,
    DEFAULT_CODE_SEED,
    DISTRIBUTIONS,
    MAX_CODE_BITS,
    MIN_CODE_BITS,
    LdpcCode,
    degree_two_graph,
    distributions_by_rate,
    get_code,
)
from corridor.errors import ParameterError, ProtocolAbort
from corridor.link.rates import binary_entropy
from corridor.randomness import RandomSource

MESSAGE_SYNDROME = "ldpc.syndrome"
MESSAGE_RESULT = "ldpc.result"
MESSAGE_REVEAL = "ldpc.reveal"

#: QBER estimates below this are planned as this (a zero estimate would ask for rate 1).
MIN_PLANNING_QBER = 0.002
#: Shortest mother code the plan turns to for a key too short for ``code_bits`` codes.
MIN_ADAPTIVE_CODE_BITS = 1 << 12
#: Log-likelihood ratio of a position both parties know (shortened or revealed).
_KNOWN_LLR = np.float32(1e4)
_PHI = kernels.phi_table()

#: Failed frames per call whose decoder state a retry starts from (each holds one
#: float32 per edge and per variable: about 7.5 MB at n = 2^18).
WARM_START_FRAMES = 16

#: Bob's decoders (``LdpcSettings.decoder``).
DECODERS = ("fast", "reference")

_SYNDROME_HEADER = struct.Struct("<32sQIIIII")
_RESULT_HEADER = struct.Struct("<BI")
_REVEAL_HEADER = struct.Struct("<III")
_FLAG_ABORT = 1
#: Unsatisfied checks one frame may name in a request (their number travels in a byte).
_MAX_TARGETED_CHECKS = 255
_MAX_DECODER_THREADS = 256


@dataclass(frozen=True)
class LdpcSettings:
    """How LDPC reconciliation runs; identical on both sides.

    Attributes:
        code_bits: mother code length ``n``.
        code_seed: construction seed of the mother codes.
        efficiency: f the first syndrome aims at (disclosed / (K h(q))).
        threshold_floor: aim the first syndrome at no less than the chosen code's
            threshold efficiency (``DegreeDistribution.threshold_efficiency``) when
            ``efficiency`` is below it: only the rate-0.90 code's (1.153) is above the
            default 1.10, so this acts at QBER below about 1.6 %, where a first try
            at 1.10 fails on nearly every frame (measured: at 1.2 % six frames of 16
            were dropped after every retry without the floor, none with it).
        retry_step: each blind retry reveals ``ceil(retry_step * h(q) * K)`` more bits
            of a failed frame (its f rises by ``retry_step``).
        max_retries: blind retries before a frame is dropped (0: one-way only).
        retry_headroom: the plan keeps at least ``retry_headroom * h(q) * K`` punctured
            positions per frame (shortening more key positions instead), so that the
            first ``retry_headroom / retry_step`` retries reveal punctured bits, each a
            full bit of help to Bob; a revealed key bit helps him only h(q) bits.
        max_iterations: decoder sweeps per attempt.
        decoder: Bob's decoder, "fast" (``_ldpc_kernels.decode_layered_fast``) or
            "reference" (``decode_layered_spa``); the same messages, the fast one
            stops differently (see there). Kept selectable to measure one against the
            other.
        stall_sweeps: the fast decoder gives up an attempt when its count of
            unsatisfied checks has not reached a new low for this many sweeps (0:
            never; the reference decoder ignores it).
        targeted_max_checks: a frame that fails with between 1 and this many
            unsatisfied checks asks for a targeted retry (Alice reveals every
            position of those checks) instead of a blind one (0: blind retries only).
        decoder_threads: threads Bob decodes frames on (0: one per CPU this process
            may run on). Frames are decoded independently, so the words, the counts and
            every message are the same for any value; it is Bob's alone and not part
            of the settings both parties compare (left out of ``repr`` and ``==``).
    """

    code_bits: int = DEFAULT_CODE_BITS
    code_seed: int = DEFAULT_CODE_SEED
    efficiency: float = 1.10
    threshold_floor: bool = True
    retry_step: float = 0.04
    max_retries: int = 10
    retry_headroom: float = 0.0
    max_iterations: int = 60
    decoder: str = "fast"
    stall_sweeps: int = 20
    targeted_max_checks: int = 16
    decoder_threads: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.code_bits, bool) or not isinstance(self.code_bits, int) \
                or not MIN_CODE_BITS <= self.code_bits <= MAX_CODE_BITS:
            raise ParameterError("ldpc.code_bits", self.code_bits,
                                 f"must be a whole number in [{MIN_CODE_BITS}, {MAX_CODE_BITS}]")
        if isinstance(self.code_seed, bool) or not isinstance(self.code_seed, int) \
                or not 0 <= self.code_seed < 2 ** 63:
            raise ParameterError("ldpc.code_seed", self.code_seed,
                                 "must be a whole number in [0, 2^63)")
        if not _real(self.efficiency) or not 1.0 <= self.efficiency <= 2.0:
            raise ParameterError("ldpc.efficiency", self.efficiency, "must be in [1, 2]")
        if not isinstance(self.threshold_floor, bool):
            raise ParameterError("ldpc.threshold_floor", self.threshold_floor,
                                 "must be true or false")
        if not _real(self.retry_step) or not 0.0 < self.retry_step <= 1.0:
            raise ParameterError("ldpc.retry_step", self.retry_step, "must be in (0, 1]")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or not 0 <= self.max_retries <= 32:
            raise ParameterError("ldpc.max_retries", self.max_retries,
                                 "must be a whole number in [0, 32]")
        if not _real(self.retry_headroom) or not 0.0 <= self.retry_headroom <= 1.0:
            raise ParameterError("ldpc.retry_headroom", self.retry_headroom,
                                 "must be in [0, 1]")
        if isinstance(self.max_iterations, bool) or not isinstance(self.max_iterations, int) \
                or not 1 <= self.max_iterations <= 1000:
            raise ParameterError("ldpc.max_iterations", self.max_iterations,
                                 "must be a whole number in [1, 1000]")
        if self.decoder not in DECODERS:
            raise ParameterError("ldpc.decoder", self.decoder,
                                 "must be one of " + ", ".join(DECODERS))
        if isinstance(self.stall_sweeps, bool) or not isinstance(self.stall_sweeps, int) \
                or not 0 <= self.stall_sweeps <= 1000:
            raise ParameterError("ldpc.stall_sweeps", self.stall_sweeps,
                                 "must be a whole number in [0, 1000]")
        if isinstance(self.targeted_max_checks, bool) \
                or not isinstance(self.targeted_max_checks, int) \
                or not 0 <= self.targeted_max_checks <= _MAX_TARGETED_CHECKS:
            raise ParameterError("ldpc.targeted_max_checks", self.targeted_max_checks,
                                 f"must be a whole number in [0, {_MAX_TARGETED_CHECKS}]")
        if isinstance(self.decoder_threads, bool) or not isinstance(self.decoder_threads, int) \
                or not 0 <= self.decoder_threads <= _MAX_DECODER_THREADS:
            raise ParameterError("ldpc.decoder_threads", self.decoder_threads,
                                 f"must be a whole number in [0, {_MAX_DECODER_THREADS}]"
                                 " (0: one per CPU)")


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


@dataclass
class LdpcReconciliationResult(ReconciliationResult):
    """A :class:`ReconciliationResult` with what only LDPC has (all public).

    Attributes (beyond the base class; ``frame_bits`` is ``K``, key bits per frame):
        code_identity: hex identity of the mother code used.
        distribution: its degree distribution.
        code_bits: its length ``n``.
        punctured_bits: ``p`` per frame; shortened_bits: ``s`` per full frame.
        syndrome_bits: syndrome bits sent (``F m``).
        revealed_bits: bits Alice revealed in retries (blind and targeted).
        first_round_failures: frames that did not decode from the syndrome alone.
        dropped_frames, dropped_bits: frames (and their key bits) left out.
        decoder_sweeps: Bob's decoder sweeps over the code, summed over frames and
            rounds (0 at Alice); times the code's edges, the decoding work done.
        offloaded_cpu_s: CPU seconds Bob's decoder spent on threads other than the
            caller's (``decoder_threads``), which the caller's own thread clock does
            not see; 0.0 when it decoded on the caller's thread.
    """

    code_identity: str = ""
    distribution: str = ""
    code_bits: int = 0
    punctured_bits: int = 0
    shortened_bits: int = 0
    syndrome_bits: int = 0
    revealed_bits: int = 0
    first_round_failures: int = 0
    dropped_frames: int = 0
    dropped_bits: int = 0
    decoder_sweeps: int = 0
    offloaded_cpu_s: float = 0.0


@dataclass(frozen=True)
class Plan:
    """The public layout of one reconciliation (both parties compute it alike)."""

    code: LdpcCode = field(repr=False)
    n_key: int
    frames: int
    key_per_frame: int
    punctured: int
    shortened: int
    reveal_step: int

    def frame_lengths(self) -> np.ndarray:
        """Key bits of each frame: ``K`` for the first ``n_key - F (K - 1)``, else ``K - 1``."""
        full = self.n_key - self.frames * (self.key_per_frame - 1)
        lengths = np.full(self.frames, self.key_per_frame - 1, np.int64)
        lengths[:full] = self.key_per_frame
        return lengths

    def key_positions(self, short: bool) -> np.ndarray:
        """Code positions of the key bits (ascending) in a frame of ``K`` (or ``K - 1``)."""
        n, p = self.code.n, self.punctured
        s = self.shortened + (1 if short else 0)
        return np.sort(self.code.fill_order[s:n - p])

    def reveal_order(self, short: bool) -> np.ndarray:
        """Positions revealed by blind retries: punctured last-first, then key positions."""
        n, p = self.code.n, self.punctured
        s = self.shortened + (1 if short else 0)
        return np.concatenate((self.code.puncture_order[:p][::-1],
                               self.code.fill_order[s:n - p]))

    def shortened_positions(self, short: bool) -> np.ndarray:
        """Code positions fixed to public zeros in a frame of ``K`` (or ``K - 1``)."""
        return self.code.fill_order[:self.shortened + (1 if short else 0)]

    def header(self) -> bytes:
        return _SYNDROME_HEADER.pack(bytes.fromhex(self.code.identity), self.n_key,
                                     self.frames, self.key_per_frame, self.punctured,
                                     self.shortened, self.reveal_step)


class _Reveals:
    """The positions revealed in each retry, computed alike by both parties.

    A blind retry takes the next ``reveal_step`` positions of the frame's public order
    (``Plan.reveal_order``); a targeted one every position of the named checks that is
    neither shortened nor already revealed. A frame gets its mask of known positions at
    its first targeted retry (frames that only ever get blind ones never need it), and
    its later blind retries skip what the mask holds.
    """

    def __init__(self, pl: Plan, lengths: np.ndarray) -> None:
        self._pl = pl
        self._short = lengths < pl.key_per_frame
        self._cursor = np.zeros(pl.frames, np.int64)
        self._known: dict[int, np.ndarray] = {}

    def take(self, frame: int, checks: np.ndarray | None) -> np.ndarray:
        """The positions of ``frame`` revealed now (blind if ``checks`` is None)."""
        pl, code = self._pl, self._pl.code
        short = bool(self._short[frame])
        order = pl.reveal_order(short)
        cursor = int(self._cursor[frame])
        known = self._known.get(frame)
        if checks is None:
            if known is None:
                take = order[cursor:cursor + pl.reveal_step]
                self._cursor[frame] = cursor + take.size
                return take
            rest = order[cursor:]
            free = np.flatnonzero(~known[rest])[:pl.reveal_step]
            take = rest[free]
            self._cursor[frame] = cursor + (int(free[-1]) + 1 if free.size else rest.size)
        else:
            if known is None:
                known = self._known[frame] = np.zeros(code.n, np.bool_)
                known[pl.shortened_positions(short)] = True
                known[order[:cursor]] = True
            rows = [code.cols[code.row_start[c]:code.row_start[c + 1]] for c in checks.tolist()]
            take = np.unique(np.concatenate(rows)).astype(np.int64)
            take = take[~known[take]]
        known[take] = True
        return take


def _index_width(checks: int) -> int:
    """Bits per check index in Bob's requests."""
    return max(1, (checks - 1).bit_length())


def _pack_requests(requests: list[np.ndarray | None], width: int) -> bytes:
    """Bob's requests: one byte per failed frame (its number of checks, 0 for a blind
    retry), then every check index in ``width`` bits, packed."""
    counts = bytes(0 if r is None else r.size for r in requests)
    named = [r for r in requests if r is not None]
    if not named:
        return counts
    indices = np.concatenate(named).astype(np.int64)
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    bits = ((indices[:, None] >> shifts) & 1).astype(np.uint8)
    return counts + np.packbits(bits.ravel()).tobytes()


def _request_bits(requests: list[np.ndarray | None], width: int) -> int:
    """Bits of :func:`_pack_requests`'s message that carry information (no padding)."""
    return 8 * len(requests) + width * sum(0 if r is None else r.size for r in requests)


def _unpack_requests(payload: bytes, frames: int, width: int, checks: int,
                     max_checks: int) -> list[np.ndarray | None]:
    """Alice's reading of :func:`_pack_requests`; refuses anything malformed."""
    counts = list(payload[:frames])
    total = sum(counts)
    if len(counts) != frames or len(payload) != frames + (total * width + 7) // 8 \
            or any(c > max_checks for c in counts):
        raise ProtocolAbort("malformed_message", f"{MESSAGE_RESULT}: requests of "
                            f"{len(payload)} bytes for {frames} failed frames")
    bits = _unpack(payload, frames, total * width).reshape(total, width).astype(np.int64)
    indices = bits @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))
    out: list[np.ndarray | None] = []
    start = 0
    for count in counts:
        if count == 0:
            out.append(None)
            continue
        named = indices[start:start + count]
        start += count
        if int(named[-1]) >= checks or (count > 1 and bool((np.diff(named) <= 0).any())):
            raise ProtocolAbort("malformed_message",
                                f"{MESSAGE_RESULT}: check indices out of order or range")
        out.append(named)
    return out


def _layout(n: int, n_key: int, fh: float, gh: float, seed: int,
            only: str | None = None) -> tuple[LdpcCode, int, int, int, bool]:
    """(code, frames, K, p, too short) for mother codes of length ``n`` (of the
    distribution ``only``, if given); *too short*: full frames would reach the target
    rate, but the key's frames are shorter (fewer key bits per frame need more
    puncturing than the code allows)."""
    target_rate = 1.0 - fh
    best: tuple[float, LdpcCode, int] | None = None
    reachable = True
    candidates = [d for d in distributions_by_rate() if only in (None, d.name)]
    for dist in sorted(candidates, key=lambda d: abs(d.rate - target_rate)):
        m = round((1.0 - dist.rate) * n)
        if best is not None and abs(dist.rate - target_rate) >= best[0]:
            break
        code = get_code(dist.name, n, seed)
        p_cap = code.max_punctured
        # The most key bits a frame can carry with m - p = f h K, K <= n - p and the
        # headroom p >= g h K (so K <= m / ((f + g) h): a code of too high a rate is
        # shortened); then p <= p_cap must hold.
        k_max = min(n, math.floor((n - m) / (1.0 - fh)), math.floor(m / (fh + gh)))
        if m - fh * k_max > p_cap:
            continue   # even full puncturing leaves the rate too low
        best = (abs(dist.rate - target_rate), code, k_max)
    if best is None:
        # QBER so low that no code reaches the rate: the highest one, fully punctured.
        code = get_code(candidates[0].name, n, seed)
        best = (0.0, code, n - code.max_punctured)
        reachable = False
    # (k_max >= 1: m / (f h) >= 1 since f h < 1 <= m.)
    _, code, k_max = best
    m = code.checks
    frames = max(1, -(-n_key // k_max))
    k = max(1, -(-n_key // frames))
    wanted = m - round(fh * k)
    p = min(max(wanted, 0), code.max_punctured, n - k)
    return code, frames, k, p, reachable and p < wanted


def settings_named(name: Callable[[str], str], **values: Any) -> LdpcSettings:
    """``LdpcSettings(**values)``, whose errors name the setting ``name(attribute)`` (the
    command-line flag, the key of the corridor file a user typed) instead of
    ``ldpc.attribute``."""
    try:
        return LdpcSettings(**values)
    except ParameterError as error:
        attribute = error.field.removeprefix("ldpc.")
        raise ParameterError(name(attribute), error.value, error.allowed, error.hint) from None


def plan(n_key: int, qber_estimate: float, settings: LdpcSettings) -> Plan:
    """Choose the code, frames, puncturing and shortening (see the module docstring).

    A key whose frames of the ``code_bits`` codes would be too short for the target
    rate (the puncturing they would need exceeds what the code allows, so the syndrome
    would disclose more than ``f h(q)`` per key bit) is planned on codes of half the length,
    and so on down to ``MIN_ADAPTIVE_CODE_BITS``: the longest length that reaches the
    target rate, or the shortest tried.
    """
    q = max(float(qber_estimate), MIN_PLANNING_QBER)
    h = binary_entropy(q)
    fh = min(settings.efficiency * h, 0.999)
    gh = settings.retry_headroom * h
    n = settings.code_bits
    code, frames, k, p, too_short = _layout(n, n_key, fh, gh, settings.code_seed)
    floor = DISTRIBUTIONS[code.distribution].threshold_efficiency
    only = None
    if settings.threshold_floor and floor > settings.efficiency:
        # The same code (chosen at f, as without the floor), planned at its floor.
        fh = min(floor * h, 0.999)
        only = code.distribution
        code, frames, k, p, too_short = _layout(n, n_key, fh, gh, settings.code_seed, only)
    while too_short and n // 2 >= min(MIN_ADAPTIVE_CODE_BITS, settings.code_bits):
        n //= 2
        code, frames, k, p, too_short = _layout(n, n_key, fh, gh, settings.code_seed, only)
    s = code.n - k - p
    step = max(1, math.ceil(settings.retry_step * h * k))
    return Plan(code=code, n_key=n_key, frames=frames, key_per_frame=k, punctured=p,
                shortened=s, reveal_step=step)


def _check_inputs(bits: np.ndarray, qber_estimate: float) -> np.ndarray:
    key = np.asarray(bits)
    if key.ndim != 1 or (key.size and (key.dtype.kind not in "biu" or int(key.max()) > 1
                                       or int(key.min()) < 0)):
        raise ParameterError("bits", f"array of shape {key.shape}", "must be a 1-D array of 0/1")
    if not _real(qber_estimate) or not 0.0 <= qber_estimate < 0.5:
        raise ParameterError("qber_estimate", qber_estimate, "must be in [0, 0.5)")
    return key.astype(np.uint8, copy=False)


def _empty(key: np.ndarray) -> LdpcReconciliationResult:
    return LdpcReconciliationResult(bits=key.copy(), disclosed_bits=0, frames=0, frame_bits=0,
                                    passes_run=0, messages=0, qber_corrected=None)


def _unpack(payload: bytes, offset: int, count: int) -> np.ndarray:
    raw = np.frombuffer(payload, dtype=np.uint8, offset=offset)
    return np.unpackbits(raw, count=count)


def reconcile_alice(channel: ChannelEndpoint, bits: np.ndarray, *, qber_estimate: float,
                    rng: RandomSource, settings: LdpcSettings | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> LdpcReconciliationResult:
    """Alice's side: she sends syndromes (and blind-retry reveals); her key is unchanged.

    Args:
        channel: her endpoint of the authenticated classical channel.
        bits: her sifted key, a 1-D array of 0/1.
        qber_estimate: the QBER estimate both parties agreed on.
        rng: her private randomness (fills the punctured positions; must be secret).
        settings: identical on both sides.
        timeout_s: how long to wait for each of Bob's messages.

    Returns her key without the frames Bob could not decode.
    """
    settings = settings or LdpcSettings()
    key = _check_inputs(bits, qber_estimate)
    if key.size == 0:
        return _empty(key)
    pl = plan(int(key.size), qber_estimate, settings)
    code = pl.code
    n, m = code.n, code.checks
    lengths = pl.frame_lengths()
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    words = np.zeros((pl.frames, n), np.uint8)
    for short in (False, True):
        rows = np.flatnonzero(lengths == pl.key_per_frame - (1 if short else 0))
        if rows.size:
            positions = pl.key_positions(short)
            for f in rows.tolist():
                words[f, positions] = key[offsets[f]:offsets[f + 1]]
    if pl.punctured:
        secret = rng.bits(pl.frames * pl.punctured).reshape(pl.frames, pl.punctured)
        words[:, code.puncture_order[:pl.punctured]] = secret
    syn = np.empty((pl.frames, m), np.uint8)
    kernels.syndromes(words, code.row_start, code.cols, syn)
    channel.send(MESSAGE_SYNDROME, pl.header() + np.packbits(syn, axis=1).tobytes())
    messages = 1
    revealed = np.zeros(pl.frames, np.int64)
    reveals = _Reveals(pl, lengths)
    width = _index_width(m)
    in_play = np.arange(pl.frames, dtype=np.int64)
    failing = in_play
    rounds = 0
    bob_bits = 0
    first_failures = 0
    while True:
        payload = channel.recv(MESSAGE_RESULT, timeout_s)
        messages += 1
        rounds += 1
        ok = _parse_result(payload, in_play.size)
        bob_bits += int(in_play.size)
        failing = in_play[ok == 0]
        if rounds == 1:
            first_failures = int(failing.size)
        rest = payload[_RESULT_HEADER.size + (in_play.size + 7) // 8:]
        no_requests = failing.size == 0 or rounds > settings.max_retries \
            or not settings.targeted_max_checks
        if no_requests and rest:
            raise ProtocolAbort("malformed_message",
                                f"{MESSAGE_RESULT}: {len(rest)} bytes after the flags")
        if failing.size == 0 or rounds > settings.max_retries:
            break
        requests: list[np.ndarray | None] = [None] * int(failing.size)
        if settings.targeted_max_checks:
            requests = _unpack_requests(rest, int(failing.size), width, m,
                                        settings.targeted_max_checks)
            bob_bits += _request_bits(requests, width)
        chunks = []
        for f, checks in zip(failing.tolist(), requests, strict=True):
            take = reveals.take(f, checks)
            chunks.append(words[f, take])
            revealed[f] += take.size
        values = np.concatenate(chunks)
        channel.send(MESSAGE_REVEAL, _REVEAL_HEADER.pack(failing.size, pl.reveal_step,
                                                         values.size)
                     + np.packbits(values).tobytes())
        messages += 1
        in_play = failing
    words[:] = 0
    keep = np.ones(pl.frames, np.bool_)
    keep[failing] = False
    kept = _kept_bits(key, offsets, keep)
    return _result(pl, kept, keep, lengths, revealed, messages, rounds, None,
                   bob_bits=bob_bits, first_failures=first_failures)


def _parse_result(payload: bytes, expected: int) -> np.ndarray:
    try:
        flags, count = _RESULT_HEADER.unpack_from(payload)
    except struct.error:
        raise ProtocolAbort("malformed_message", f"{MESSAGE_RESULT}: short header") from None
    if flags & _FLAG_ABORT:
        detail = payload[_RESULT_HEADER.size:].decode("ascii", "replace")
        reason, _, rest = detail.partition(":")
        raise ProtocolAbort(reason if reason.startswith("ldpc_") else "ldpc_parameter_mismatch",
                            f"Bob: {rest.strip() or detail}")
    if count != expected or len(payload) < _RESULT_HEADER.size + (count + 7) // 8:
        raise ProtocolAbort("malformed_message", f"{MESSAGE_RESULT}: {count} flags, "
                            f"expected {expected}")
    return _unpack(payload, _RESULT_HEADER.size, count)


def _kept_bits(key: np.ndarray, offsets: np.ndarray, keep: np.ndarray) -> np.ndarray:
    if bool(keep.all()):
        return key.copy()
    parts = [key[offsets[f]:offsets[f + 1]] for f in np.flatnonzero(keep).tolist()]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def _result(pl: Plan, kept: np.ndarray, keep: np.ndarray, lengths: np.ndarray,
            revealed: np.ndarray, messages: int, rounds: int, qber_corrected: float | None,
            bob_bits: int, first_failures: int,
            decoder_sweeps: int = 0, offloaded_cpu_s: float = 0.0) -> LdpcReconciliationResult:
    code = pl.code
    syndrome_bits = pl.frames * code.checks
    revealed_bits = int(revealed.sum())
    alice_bits = pl.frames * (code.checks - pl.punctured) + revealed_bits
    return LdpcReconciliationResult(
        bits=kept, disclosed_bits=alice_bits + bob_bits, frames=pl.frames,
        frame_bits=pl.key_per_frame, passes_run=rounds, messages=messages,
        qber_corrected=qber_corrected, round_trips=rounds, direction_bits=0,
        alice_disclosed_bits=alice_bits, bob_disclosed_bits=bob_bits,
        code_identity=code.identity, distribution=code.distribution, code_bits=code.n,
        punctured_bits=pl.punctured, shortened_bits=pl.shortened,
        syndrome_bits=syndrome_bits, revealed_bits=revealed_bits,
        first_round_failures=first_failures, dropped_frames=int((~keep).sum()),
        dropped_bits=int(lengths[~keep].sum()), decoder_sweeps=decoder_sweeps,
        offloaded_cpu_s=offloaded_cpu_s)


def reconcile_bob(channel: ChannelEndpoint, bits: np.ndarray, *, qber_estimate: float,
                  settings: LdpcSettings | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> LdpcReconciliationResult:
    """Bob's side: he decodes every frame towards Alice's syndrome; returns his corrected key
    without the frames he could not decode. Arguments as :func:`reconcile_alice` (Bob
    draws nothing). The input array is not modified."""
    settings = settings or LdpcSettings()
    key = _check_inputs(bits, qber_estimate)
    if key.size == 0:
        return _empty(key)
    pl = plan(int(key.size), qber_estimate, settings)
    code = pl.code
    n, m = code.n, code.checks
    payload = channel.recv(MESSAGE_SYNDROME, timeout_s)
    messages = 1
    _check_header(channel, payload, pl)
    row_bytes = (m + 7) // 8
    if len(payload) != _SYNDROME_HEADER.size + pl.frames * row_bytes:
        raise ProtocolAbort("malformed_message", f"{MESSAGE_SYNDROME}: {len(payload)} bytes")
    packed = np.frombuffer(payload, np.uint8, offset=_SYNDROME_HEADER.size)
    target = np.unpackbits(packed.reshape(pl.frames, row_bytes), axis=1, count=m)
    target = np.ascontiguousarray(target)
    lengths = pl.frame_lengths()
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    q = max(float(qber_estimate), MIN_PLANNING_QBER)
    key_llr = np.float32(math.log((1.0 - q) / q))
    llr = np.full((pl.frames, n), _KNOWN_LLR, np.float32)   # shortened: public zeros
    positions = {short: pl.key_positions(short) for short in (False, True)}
    for f in range(pl.frames):
        short = bool(lengths[f] < pl.key_per_frame)
        llr[f, positions[short]] = np.where(key[offsets[f]:offsets[f + 1]] == 1,
                                            -key_llr, key_llr)
    if pl.punctured:
        llr[:, code.puncture_order[:pl.punctured]] = 0.0
    decoded = np.empty((pl.frames, n), np.uint8)
    converged = np.zeros(pl.frames, np.bool_)
    iterations = np.zeros(pl.frames, np.int64)
    revealed = np.zeros(pl.frames, np.int64)
    in_play = np.arange(pl.frames, dtype=np.int64)
    # Warm start of retries: the first WARM_START_FRAMES frames keep their decoder
    # state when they fail (np.empty: memory is only touched for frames that fail).
    slots = min(pl.frames, WARM_START_FRAMES)
    slot = np.where(in_play < slots, in_play, -1)
    resume = np.zeros(pl.frames, np.bool_)
    state_r = np.empty((slots, code.edges), np.float32)
    state_total = np.empty((slots, n), np.float32)
    reveals = _Reveals(pl, lengths)
    width = _index_width(m)
    decoder_threads = settings.decoder_threads or _available_cpus()
    offloaded_cpu_s: list[float] = []
    bob_bits = 0
    rounds = 0
    first_failures = 0
    sweeps = 0
    while True:
        decode = functools.partial(_decode, settings, llr, target, code, decoded, converged,
                                   iterations, state_r, state_total, slot, resume)
        threads = min(decoder_threads, int(in_play.size))
        if threads <= 1:
            decode(in_play)
        else:
            # Every frame writes only its own rows (word, flags, sweeps, saved state):
            # interleaved shares decode in parallel, the kernels release the GIL.
            shares = [np.ascontiguousarray(in_play[i::threads]) for i in range(threads)]
            with ThreadPoolExecutor(threads, thread_name_prefix="ldpc-decode") as pool:
                for done in [pool.submit(_on_thread, decode, share) for share in shares]:
                    offloaded_cpu_s.append(done.result())
        sweeps += int(iterations[in_play].sum())
        rounds += 1
        last = rounds > settings.max_retries
        requests: dict[int, np.ndarray] = {}
        for f in in_play[~converged[in_play]].tolist():
            unsatisfied = _unsatisfied_checks(code, decoded[f], target[f])
            # Suspect: a bit whose decision contradicts Bob's own channel value (or that
            # he has no value for); known (shortened, revealed) bits never are.
            suspect = (llr[f] == 0) | ((llr[f] < 0) != (decoded[f] == 1))
            # A targeted retry is certain; the degree-2 repair can land on a wrong word
            # (measured: 1 frame of 342 at QBER 3 %), so it only runs when no targeted
            # retry can follow: in the last round, or with targeted retries off.
            if not last and 0 < unsatisfied.size <= settings.targeted_max_checks:
                requests[f] = unsatisfied
            else:
                converged[f] = _repair_degree_two_paths(code, decoded[f], target[f],
                                                        suspect, unsatisfied)
        ok = converged[in_play].astype(np.uint8)
        failing = in_play[ok == 0]
        asked: list[np.ndarray | None] = [requests.get(f) for f in failing.tolist()]
        # No request section when none can follow (no retry left, nothing failed) or
        # targeted retries are off: then no byte of it is sent or counted.
        tail = b"" if last or failing.size == 0 or not settings.targeted_max_checks \
            else _pack_requests(asked, width)
        channel.send(MESSAGE_RESULT, _RESULT_HEADER.pack(0, in_play.size)
                     + np.packbits(ok).tobytes() + tail)
        messages += 1
        bob_bits += int(in_play.size) + (_request_bits(asked, width) if tail else 0)
        if rounds == 1:
            first_failures = int(failing.size)
        if failing.size == 0 or last:
            break
        payload = channel.recv(MESSAGE_REVEAL, timeout_s)
        messages += 1
        try:
            count, step, total = _REVEAL_HEADER.unpack_from(payload)
        except struct.error:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_REVEAL}: short") from None
        takes = [reveals.take(f, checks) for f, checks in zip(failing.tolist(), asked,
                                                              strict=True)]
        expected = sum(take.size for take in takes)
        if count != failing.size or step != pl.reveal_step or total != expected or \
                len(payload) != _REVEAL_HEADER.size + (total + 7) // 8:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_REVEAL}: {count} frames, "
                                f"{total} bits, expected {failing.size} frames, {expected} bits")
        values = _unpack(payload, _REVEAL_HEADER.size, total)
        start = 0
        for f, take in zip(failing.tolist(), takes, strict=True):
            known = np.where(values[start:start + take.size] == 1, -_KNOWN_LLR, _KNOWN_LLR)
            start += take.size
            if slot[f] >= 0:
                state_total[slot[f], take] += known - llr[f, take]
                resume[f] = True
            llr[f, take] = known
            revealed[f] += take.size
        in_play = failing
    keep = converged.copy()
    corrected = np.empty_like(key)
    for f in range(pl.frames):
        short = bool(lengths[f] < pl.key_per_frame)
        corrected[offsets[f]:offsets[f + 1]] = decoded[f, positions[short]]
    flips = int(sum(int(np.count_nonzero(corrected[offsets[f]:offsets[f + 1]]
                                         != key[offsets[f]:offsets[f + 1]]))
                    for f in np.flatnonzero(keep).tolist()))
    kept = _kept_bits(corrected, offsets, keep)
    # Everything derived from Bob's key goes before the arrays are released.
    for array in (corrected, decoded, llr, state_total, state_r):
        array[:] = 0
    qber_corrected = flips / kept.size if kept.size else None
    return _result(pl, kept, keep, lengths, revealed, messages, rounds, qber_corrected,
                   bob_bits=bob_bits, first_failures=first_failures, decoder_sweeps=sweeps,
                   offloaded_cpu_s=sum(offloaded_cpu_s))


def _available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _on_thread(decode: Callable[[np.ndarray], None], frames: np.ndarray) -> float:
    """Decode ``frames`` on a pool thread; returns the CPU seconds that thread spent."""
    began = time.thread_time()
    decode(frames)
    return time.thread_time() - began


def _decode(settings: LdpcSettings, llr: np.ndarray, target: np.ndarray, code: LdpcCode,
            decoded: np.ndarray, converged: np.ndarray, iterations: np.ndarray,
            state_r: np.ndarray, state_total: np.ndarray, slot: np.ndarray,
            resume: np.ndarray, frames: np.ndarray) -> None:
    """Run Bob's decoder (``settings.decoder``) on ``frames``."""
    if settings.decoder == "fast":
        kernels.decode_layered_fast(llr, target, code.row_start, code.cols, frames,
                                    settings.max_iterations, _PHI, decoded, converged,
                                    iterations, state_r, state_total, slot, resume,
                                    settings.stall_sweeps)
    else:
        kernels.decode_layered_spa(llr, target, code.row_start, code.cols, frames,
                                   settings.max_iterations, _PHI, decoded, converged,
                                   iterations, state_r, state_total, slot, resume)


#: A frame that fails with at most this many unsatisfied checks gets the repair below.
REPAIR_MAX_UNSATISFIED = 2
_REPAIR_MAX_PATH = 16


def _unsatisfied_checks(code: LdpcCode, word: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Indices of the checks ``word`` does not satisfy (ascending)."""
    syndrome = np.empty((1, code.checks), np.uint8)
    kernels.syndromes(word[None, :], code.row_start, code.cols, syndrome)
    return np.flatnonzero(syndrome[0] != target)


def _repair_degree_two_paths(code: LdpcCode, word: np.ndarray, target: np.ndarray,
                             suspect: np.ndarray,
                             unsatisfied_checks: np.ndarray | None = None) -> bool:
    """Flip chains of degree-2 variables between unsatisfied checks; True if the word
    then has the target syndrome.

    Belief propagation on these codes is left, in a few frames, with a handful of
    wrong bits along a path of degree-2 variables whose two end checks are
    unsatisfied (measured: 5 wrong degree-2 bits, 2 unsatisfied checks); no message
    can move such an error. Flipping every variable on a path between two
    unsatisfied checks satisfies both ends and leaves the inner checks as they were.
    The path taken is the cheapest, a variable costing 0 when it is *suspect*
    (``suspect[v]``: its decision contradicts Bob's channel value, or he has none) and
    1 otherwise (fewest flips against the channel, then shortest). The measured chain
    was 5 channel errors the decoder had kept, so every bit on it agrees with the
    channel: the repair cannot demand suspects. Two paths between the same checks
    close a cycle of degree-2 variables, and with up to 16 unsatisfied checks the
    repair was measured to end on a wrong word on a short code; it is therefore kept
    to exactly one pair of unsatisfied checks and paths of at most 16. The result is
    only accepted when the whole syndrome matches; the verification stage catches a
    wrong word as for any other decoding.
    """
    if unsatisfied_checks is None:
        unsatisfied_checks = _unsatisfied_checks(code, word, target)
    unsatisfied = unsatisfied_checks.tolist()
    if not unsatisfied or len(unsatisfied) > REPAIR_MAX_UNSATISFIED:
        return not unsatisfied
    start, other, via = degree_two_graph(code)
    remaining = set(unsatisfied)
    while remaining:
        source = remaining.pop()
        # 0-1 breadth-first search: cost = non-suspect variables on the path.
        best: dict[int, tuple[int, int]] = {source: (0, 0)}
        parent: dict[int, tuple[int, int]] = {}
        queue: collections.deque[int] = collections.deque([source])
        found = -1
        while queue:
            c = queue.popleft()
            cost, length = best[c]
            if c != source and c in remaining:
                found = c
                break
            if length >= _REPAIR_MAX_PATH:
                continue
            for i in range(int(start[c]), int(start[c + 1])):
                d, v = int(other[i]), int(via[i])
                step = 0 if suspect[v] else 1
                candidate = (cost + step, length + 1)
                if d not in best or candidate < best[d]:
                    best[d] = candidate
                    parent[d] = (c, v)
                    if step:
                        queue.append(d)
                    else:
                        queue.appendleft(d)
        if found < 0:
            return False
        remaining.discard(found)
        node = found
        while node != source:
            back, variable = parent[node]
            word[variable] ^= 1
            node = back
    return _unsatisfied_checks(code, word, target).size == 0


def _check_header(channel: ChannelEndpoint, payload: bytes, pl: Plan) -> None:
    mine = pl.header()
    theirs = payload[:len(mine)]
    if theirs == mine:
        return
    reason, detail = "ldpc_parameter_mismatch", "short syndrome header"
    if len(theirs) == len(mine):
        a, b = _SYNDROME_HEADER.unpack(theirs), _SYNDROME_HEADER.unpack(mine)
        if a[0] != b[0]:
            reason = "ldpc_code_mismatch"
            detail = (f"code identity alice={a[0].hex()[:16]} bob={b[0].hex()[:16]} "
                      f"(bob: {pl.code.distribution}, n={pl.code.n}, seed={pl.code.seed})")
        else:
            names = ("n_key", "frames", "key_per_frame", "punctured", "shortened", "reveal_step")
            for name, x, y in zip(names, a[1:], b[1:], strict=True):
                if x != y:
                    detail = f"{name}: alice={x} bob={y}"
                    break
    channel.send(MESSAGE_RESULT, _RESULT_HEADER.pack(_FLAG_ABORT, 0)
                 + f"{reason}: {detail}".encode("ascii", "replace"))
    raise ProtocolAbort(reason, detail)
