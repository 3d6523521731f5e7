"""The distillation pipeline: stages 1-6 strung together, and the drivers that run a link.

This module owns :class:`DistillConfig`, the two parties' processors
(:class:`AliceProcessor`, :class:`BobProcessor`), stage 5's length and seed agreement,
stage 6 (output and authentication-key accounting), and the drivers:
:func:`distill_link` (Alice and Bob in two threads of one process) and
:func:`run_party` (one party of a two-process run over TCP).

A key block's life (ARCHITECTURE.md, "The key's life")::

    records --sifting--> SIFTED --estimation--> ESTIMATED --Cascade/LDPC--> CORRECTED
      --verification--> VERIFIED --Toeplitz--> AMPLIFIED --auth accounting--> AUTHENTICATED

Each party holds only its own side of the detection records, its own
:class:`~corridor.randomness.RandomSource` and one endpoint of the authenticated
classical channel; everything the other party needs crosses that channel.

Security accounting of one block (Lim et al., PRA 89, 022307 (2014); the bound,
``lim2014`` or ``tightened``, is ``DistillConfig.finite_key_bound``, docs/finite-key.md):

- lambda_EC = the reconciliation's disclosed bits (Cascade's parities, or LDPC's
  syndromes, reveals and Bob's flags: ``ReconciliationResult.disclosed_bits``) + the
  verification tags and verdicts;
- l = finite_key_length(bounds, lambda_EC, eps_sec, eps_cor), which also subtracts
  6 log2(21/eps_sec) + log2(2/eps_cor) (so the tag is, conservatively, paid twice),
  minus the bits of any segment that verification dropped and of any LDPC frame that
  reconciliation dropped;
- Toeplitz seed of n + l - 1 bits drawn by Alice and sent over the channel;
- the Wegman-Carter authentication of the block's messages consumes pre-shared key
  bits; after the block the same number of bits, rounded up to whole bytes, is moved
  from the front of the block's output into both parties' pools and is *not*
  delivered (``auth_replenished_bits``). The delivered key is the rest.

Abort handling: an abort that both parties reach from the same public data (QBER,
bounds, verification verdict, key length) discards the block on both sides and the
run goes on. Any other abort (authentication failure, malformed or unexpected
message, timeout, closed transport) leaves the channel untrustworthy: the block is
discarded, the peer is told if possible, and the run stops (fail closed).
"""

from __future__ import annotations

import contextlib
import math
import queue
import stat
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corridor.distill.auth import AuthenticatedChannel, AuthenticationKeyPool
from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.cascade import (
    CASCADE_VARIANTS,
    ReconciliationResult,
    reconcile_alice,
    reconcile_bob,
)
from corridor.distill.channel import ChannelEndpoint, ChannelStats, in_process_pair
from corridor.distill.estimation import (
    DEFAULT_QBER_ABORT_THRESHOLD,
    EstimationResult,
    EstimationSettings,
    estimate,
)
from corridor.distill.ldpc import LdpcReconciliationResult, LdpcSettings
from corridor.distill.ldpc import reconcile_alice as ldpc_reconcile_alice
from corridor.distill.ldpc import reconcile_bob as ldpc_reconcile_bob
from corridor.distill.ldpc_codes import DEFAULT_CODE_BITS
from corridor.distill.privacy import toeplitz_hash
from corridor.distill.sifting import decode_arrays, encode_arrays, sift_alice, sift_bob
from corridor.distill.verification import (
    DEFAULT_SEGMENT_BITS,
    TAG_BITS,
    VerificationResult,
    verify_alice,
    verify_bob,
)
from corridor.errors import ParameterError, ProtocolAbort
from corridor.link.attacks import Attack
from corridor.link.finite_key import (
    DEFAULT_FINITE_KEY_BOUND,
    check_bound,
    finite_key_length,
    security_cost_bits,
)
from corridor.link.params import LinkParameters
from corridor.link.rates import binary_entropy
from corridor.link.records import AliceRecords, BobRecords, DetectionRecords
from corridor.link.simulator import simulate_stream
from corridor.randomness import RandomSource

MESSAGE_HELLO = "session.hello"
MESSAGE_RECONCILE_SEED = "reconcile.seed"
MESSAGE_AMPLIFY = "amplify.seed"
MESSAGE_ABORT = "session.abort"

#: Aborts that both parties reach from the same public data: the block is discarded
#: on both sides and the run continues with the next block.
BLOCK_ABORT_REASONS = frozenset({
    "insufficient_test_bits", "insufficient_statistics", "qber_above_threshold",
    "single_photon_bound_too_low", "phase_error_bound_too_high", "no_secret_key",
    "verification_failed", "verification_bound_above_eps_cor",
    "output_used_for_authentication",
})

#: Pulses per block by default: with detectors that saturate (modern-snspd's 50 ns dead
#: time) a 1e8-pulse block of efficient BB84 at 10 km holds no finite key (Lim et al.
#: 2014, test-basis statistics too thin); 1e9 pulses (1 s at 1 GHz, ~1.4e7 sifted bits
#: at 10 km) do.
DEFAULT_BLOCK_PULSES = 1_000_000_000

#: Reconciliation methods a link can run (``DistillConfig.reconciliation``).
RECONCILIATION_METHODS = ("cascade", "ldpc")

STAGES = ("sifting", "estimation", "reconciliation", "verification", "amplification",
          "authentication")


#: Disclosed bits over n H2(QBER), both directions, that the pre-reconciliation check
#: assumes per method, a little above what docs/benchmarks.md measures: Cascade
#: (biconf) discloses f = 2.15-2.18 counting Bob's answers, LDPC 1.10-1.18 with its
#: retries. A block that cannot pay that is aborted before the work is done.
PRE_CHECK_EFFICIENCY = {"cascade": 2.30, "ldpc": 1.25}


@dataclass(frozen=True)
class DistillConfig:
    """Settings of the post-processing, identical on both sides (checked at session start).

    Attributes:
        link_id: the link the blocks belong to.
        eps_sec: secrecy parameter of the finite-key analysis.
        eps_cor: correctness parameter; the Poly1305 verification bound must not exceed it.
        cascade_variant: one of ``CASCADE_VARIANTS``.
        frame_bits: Cascade frame size in bits.
        qber_abort_threshold: abort a block above this test-basis QBER (11 % for BB84).
        abort_reconciliation_efficiency: f of the pessimistic pre-reconciliation check
            (both directions; default: the method's, ``PRE_CHECK_EFFICIENCY``).
        channel_timeout_s: how long a party waits for the next message.
        auth_pool_bytes: size of the pre-shared authentication key pool.
        verification_segment_bits: key bits per verification tag (a segment that still
            differs after Cascade is dropped, the rest of the block kept).
        finite_key_bound: ``"lim2014"`` (Lim et al. 2014 as published) or
            ``"tightened"`` (docs/finite-key.md).
        reconciliation: "cascade" (interactive, ``corridor.distill.cascade``) or "ldpc"
            (one-way syndrome with blind retries, ``corridor.distill.ldpc``).
        ldpc_code_bits: length of the LDPC mother codes (``reconciliation = "ldpc"``).
        ldpc_efficiency: f the first LDPC syndrome aims at (``LdpcSettings.efficiency``).
        ldpc_retry_step: f each blind LDPC retry adds to a failed frame
            (``LdpcSettings.retry_step``). Longer codes with a lower first try and
            finer steps disclose less and cost more decoding (docs/ldpc.md,
            "Efficiency first").
    """

    link_id: str = "link-1"
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    cascade_variant: str = "biconf"
    frame_bits: int = 10_000
    qber_abort_threshold: float = DEFAULT_QBER_ABORT_THRESHOLD
    abort_reconciliation_efficiency: float | None = None
    channel_timeout_s: float = 120.0
    auth_pool_bytes: int = 1 << 16
    verification_segment_bits: int = DEFAULT_SEGMENT_BITS
    finite_key_bound: str = DEFAULT_FINITE_KEY_BOUND
    reconciliation: str = "cascade"
    ldpc_code_bits: int = DEFAULT_CODE_BITS
    ldpc_efficiency: float = LdpcSettings.efficiency
    ldpc_retry_step: float = LdpcSettings.retry_step

    def __post_init__(self) -> None:
        check_bound(self.finite_key_bound)
        if not self.link_id or not isinstance(self.link_id, str):
            raise ParameterError("link_id", self.link_id, "must be a non-empty string")
        for name in ("eps_sec", "eps_cor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ParameterError(name, value, "allowed range is (0, 1)")
        if self.cascade_variant not in CASCADE_VARIANTS:
            raise ParameterError("cascade_variant", self.cascade_variant,
                                 "must be one of " + ", ".join(sorted(CASCADE_VARIANTS)))
        if isinstance(self.frame_bits, bool) or not isinstance(self.frame_bits, int) \
                or not 64 <= self.frame_bits <= 10_000_000:
            raise ParameterError("frame_bits", self.frame_bits,
                                 "must be a whole number in [64, 10000000]")
        if not self.channel_timeout_s > 0:
            raise ParameterError("channel_timeout_s", self.channel_timeout_s, "must be above 0")
        if isinstance(self.auth_pool_bytes, bool) or not isinstance(self.auth_pool_bytes, int) \
                or self.auth_pool_bytes < 64:
            raise ParameterError("auth_pool_bytes", self.auth_pool_bytes,
                                 "must be a whole number of bytes >= 64")
        if isinstance(self.verification_segment_bits, bool) or \
                not isinstance(self.verification_segment_bits, int) or \
                self.verification_segment_bits < 1024:
            raise ParameterError("verification_segment_bits", self.verification_segment_bits,
                                 "must be a whole number of bits >= 1024")
        if self.reconciliation not in RECONCILIATION_METHODS:
            raise ParameterError("reconciliation", self.reconciliation,
                                 "must be one of " + ", ".join(RECONCILIATION_METHODS))
        self.ldpc_settings()  # validates the ldpc_* fields
        # Validates the thresholds with their own error messages.
        EstimationSettings(intensities=(0.5, 0.1, 0.0), class_probabilities=(0.8, 0.1, 0.1),
                           eps_sec=self.eps_sec, eps_cor=self.eps_cor,
                           qber_abort_threshold=self.qber_abort_threshold,
                           abort_reconciliation_efficiency=self.pre_check_efficiency)

    @property
    def pre_check_efficiency(self) -> float:
        """f of the pessimistic key-length check before reconciliation: the one set, or
        the reconciliation method's (``PRE_CHECK_EFFICIENCY``)."""
        if self.abort_reconciliation_efficiency is not None:
            return float(self.abort_reconciliation_efficiency)
        return PRE_CHECK_EFFICIENCY[self.reconciliation]

    @classmethod
    def for_link(cls, params: LinkParameters, **overrides: Any) -> DistillConfig:
        """A config that takes eps_sec and eps_cor from ``params.protocol``."""
        values: dict[str, Any] = {"eps_sec": params.protocol.eps_sec,
                                  "eps_cor": params.protocol.eps_cor}
        values.update(overrides)
        return cls(**values)

    def ldpc_settings(self) -> LdpcSettings:
        """The LDPC reconciliation settings of this config."""
        return LdpcSettings(code_bits=self.ldpc_code_bits, efficiency=self.ldpc_efficiency,
                            retry_step=self.ldpc_retry_step)

    def fingerprint(self) -> bytes:
        """The settings both parties must share, as bytes (sent at session start)."""
        return repr((self.link_id, self.eps_sec, self.eps_cor, self.cascade_variant,
                     self.frame_bits, self.qber_abort_threshold,
                     self.pre_check_efficiency,
                     self.verification_segment_bits, self.finite_key_bound,
                     self.reconciliation, self.ldpc_settings())).encode()


def estimation_settings(params: LinkParameters, config: DistillConfig) -> EstimationSettings:
    """Stage 2's settings for a link and a config."""
    return EstimationSettings(intensities=params.source.intensities,
                              class_probabilities=params.source.class_probabilities,
                              eps_sec=config.eps_sec, eps_cor=config.eps_cor,
                              qber_abort_threshold=config.qber_abort_threshold,
                              abort_reconciliation_efficiency=config.pre_check_efficiency,
                              verification_tag_bits=TAG_BITS,
                              verification_segment_bits=config.verification_segment_bits,
                              finite_key_bound=config.finite_key_bound,
                              z_basis_probability=params.source.z_basis_probability)


class _Processor(ABC):
    """What Alice's and Bob's processors share: the block loop and its accounting."""

    role = ""

    def __init__(self, raw: ChannelEndpoint, channel: AuthenticatedChannel,
                 pool: AuthenticationKeyPool, rng: RandomSource, config: DistillConfig,
                 params: LinkParameters) -> None:
        self.raw = raw
        self.channel = channel
        self.pool = pool
        self.rng = rng
        self.config = config
        self.settings = estimation_settings(params, config)
        self.replenished_bits = 0
        self._auth_mark = 0
        self._cpu_mark = 0.0

    # -- stage helpers implemented per role -------------------------------------------
    @abstractmethod
    def _sift(self, records: Any, block_id: int) -> Any:
        """Role-specific part of the stage."""

    @abstractmethod
    def _reconcile(self, bits: np.ndarray, est: EstimationResult) -> ReconciliationResult:
        """Role-specific part of the stage."""

    @abstractmethod
    def _verify(self, block: KeyBlock) -> VerificationResult:
        """Role-specific part of the stage."""

    @abstractmethod
    def _agree_length(self, length_bits: int, n_bits: int, block_id: int) -> np.ndarray:
        """Role-specific part of the stage."""

    # -- the block ---------------------------------------------------------------------
    def _timed(self, block: KeyBlock, stage: str, start: float,
               timings: dict[str, float], offloaded_cpu_s: float = 0.0) -> float:
        """Record the stage's wall time in ``timings_s`` and this thread's CPU time in
        ``meta["cpu_s"]`` (what the stage cost this party, whatever the load), plus
        ``offloaded_cpu_s`` that the stage spent on other threads (LDPC decoding)."""
        now = time.perf_counter()
        cpu_now = time.thread_time()
        timings[stage] = now - start
        block.timings_s[stage] = timings[stage]
        block.meta.setdefault("cpu_s", {})[stage] = cpu_now - self._cpu_mark + offloaded_cpu_s
        self._cpu_mark = cpu_now
        return now

    def process_block(self, records: AliceRecords | BobRecords, block_id: int,
                      pulses: int) -> KeyBlock:
        """Run stages 1-6 on one block of this party's records.

        Returns the block in state AUTHENTICATED, or DISCARDED (bits zeroized) with
        ``discard_reason``. When the reason is not one of ``BLOCK_ABORT_REASONS``
        (authentication, transport, malformed message) the block's
        ``meta["session_abort"]`` is True: the channel can no longer be trusted and the
        run must stop.
        """
        timings: dict[str, float] = {}
        block = KeyBlock(link_id=self.config.link_id, block_id=block_id, role=self.role,
                         bits=np.zeros(0, dtype=np.uint8), meta={"pulses": pulses})
        self._auth_mark = self.channel.auth_bits_consumed
        stats_mark = self.raw.stats.as_dict()
        try:
            start = time.perf_counter()
            self._cpu_mark = time.thread_time()
            sifted = self._sift(records, block_id)
            sifted.block.meta.update(pulses=pulses)
            block = sifted.block
            start = self._timed(block, "sifting", start, timings)
            est = estimate(self.channel, sifted, self.settings,
                           timeout_s=self.config.channel_timeout_s)
            start = self._timed(block, "estimation", start, timings)
            sifted_bits = block.length_bits
            rec = self._reconcile(block.bits, est)
            if self.role == "bob":
                # Bob's flips, per intensity class: the observed key-basis errors (public
                # as a count, like qber_corrected; the bound does not use them).
                corrected = np.asarray(rec.bits, dtype=np.uint8)
                if corrected.shape == block.bits.shape:
                    flipped = corrected != block.bits
                    per_class = np.bincount(sifted.key_classes[flipped], minlength=3)
                    block.meta["key_basis_errors"] = [int(x) for x in per_class[:3]]
            self._advance_corrected(block, rec)
            # LDPC frames that Bob could not decode left the key on both sides.
            dropped = sifted_bits - block.length_bits
            start = self._timed(block, "reconciliation", start, timings,
                                float(getattr(rec, "offloaded_cpu_s", 0.0)))
            verified = self._verify(block)
            start = self._timed(block, "verification", start, timings)
            disclosed = int(rec.disclosed_bits) + verified.disclosed_bits
            length = finite_key_length(est.bounds, disclosed, self.config.eps_sec,
                                       self.config.eps_cor)
            block.meta.update(lambda_ec_bits=disclosed, finite_key_length_bits=int(length),
                              security_cost_bits=security_cost_bits(self.config.eps_sec,
                                                                    self.config.eps_cor))
            # Dropped segments lower the min-entropy by at most their length (chain rule).
            length = min(length - verified.removed_bits - dropped, block.length_bits)
            seed_bits = self._agree_length(length, block.length_bits, block_id)
            if length <= 0:
                raise ProtocolAbort("no_secret_key",
                                    f"block {block_id}: finite-key length {length} <= 0 after "
                                    f"disclosing {disclosed} bits")
            amplified = toeplitz_hash(block.bits, seed_bits, length)
            block.bits[:] = 0
            block.advance(BlockState.AMPLIFIED, bits=np.asarray(amplified, dtype=np.uint8),
                          disclosed_bits=disclosed, finite_key_bits=length,
                          eps_sec=self.config.eps_sec, eps_cor=self.config.eps_cor)
            start = self._timed(block, "amplification", start, timings)
            self._authenticate(block)
            self._timed(block, "authentication", start, timings)
        except ProtocolAbort as exc:
            self._account_channel(block, stats_mark)
            if block.state is not BlockState.DISCARDED:
                block.meta["discard_detail"] = exc.detail
                block.discard(exc.reason)
            if exc.reason not in BLOCK_ABORT_REASONS:
                block.meta["session_abort"] = True
            return block
        except Exception:
            # A bug, not a protocol event: never leave key bits behind in a half-done block.
            if block.state is not BlockState.DISCARDED:
                block.discard("internal_error")
            raise
        self._account_channel(block, stats_mark)
        return block

    def _advance_corrected(self, block: KeyBlock, rec: ReconciliationResult) -> None:
        n = block.length_bits
        qber = float(rec.qber_corrected or 0.0)
        shannon = n * binary_entropy(min(max(qber, 0.0), 0.5))
        efficiency = rec.disclosed_bits / shannon if shannon > 0 else None
        meta: dict[str, Any] = {
            "reconciliation_method": self.config.reconciliation,
            "reconciliation_disclosed_bits": int(rec.disclosed_bits),
            "reconciliation_alice_bits": int(rec.alice_disclosed_bits),
            "reconciliation_bob_bits": int(rec.bob_disclosed_bits),
            "reconciliation_frames": int(rec.frames),
            "reconciliation_messages": int(rec.messages),
            "reconciliation_dropped_bits": n - int(rec.bits.shape[0]),
            "qber_corrected": qber, "reconciliation_efficiency": efficiency}
        if isinstance(rec, LdpcReconciliationResult):
            meta.update(ldpc_code=rec.code_identity, ldpc_distribution=rec.distribution,
                        ldpc_code_bits=rec.code_bits, ldpc_punctured_bits=rec.punctured_bits,
                        ldpc_shortened_bits=rec.shortened_bits,
                        ldpc_syndrome_bits=rec.syndrome_bits,
                        ldpc_revealed_bits=rec.revealed_bits, ldpc_rounds=rec.passes_run,
                        ldpc_dropped_frames=rec.dropped_frames)
        else:
            meta.update(cascade_variant=self.config.cascade_variant,
                        cascade_frames=int(rec.frames), cascade_passes=int(rec.passes_run),
                        cascade_messages=int(rec.messages),
                        cascade_direction_bits=int(rec.direction_bits))
        block.advance(BlockState.CORRECTED, bits=np.asarray(rec.bits, dtype=np.uint8), **meta)

    def _authenticate(self, block: KeyBlock) -> None:
        """Stage 6: refill the authentication pool from the block, deliver the rest.

        The delivered key is cut to whole bytes (what the key store hands out); the
        at most 7 bits left over are zeroized and counted in ``dropped_bits``.
        """
        consumed = self.channel.auth_bits_consumed - self._auth_mark
        refill_bits = 8 * math.ceil(consumed / 8)
        block.meta.update(auth_bits_consumed=int(consumed), auth_replenished_bits=refill_bits)
        rest = block.length_bits - refill_bits
        deliver_bits = rest - rest % 8 if rest > 0 else 0
        if deliver_bits <= 0:
            # Too short to pay for its own authentication: all of it refills the pool.
            usable = block.length_bits - block.length_bits % 8
            self._replenish(block.bits[:usable])
            block.meta["auth_replenished_bits"] = usable
            raise ProtocolAbort("output_used_for_authentication",
                                f"block {block.block_id}: {block.length_bits} secret bits, "
                                f"authentication consumed {consumed}")
        self._replenish(block.bits[:refill_bits])
        delivered = block.bits[refill_bits:refill_bits + deliver_bits].copy()
        block.bits[:] = 0
        block.advance(BlockState.AUTHENTICATED, bits=delivered, secret_bits=deliver_bits,
                      dropped_bits=rest - deliver_bits)

    def _replenish(self, bits: np.ndarray) -> None:
        if bits.size:
            self.pool.replenish(np.packbits(bits).tobytes())
            self.replenished_bits += int(bits.size)

    def _account_channel(self, block: KeyBlock, mark: dict[str, int]) -> None:
        now = self.raw.stats.as_dict()
        block.meta["channel"] = {key: now[key] - mark[key] for key in now}
        block.meta.setdefault("auth_bits_consumed",
                              int(self.channel.auth_bits_consumed - self._auth_mark))

    def notify_peer(self, reason: str) -> None:
        """Tell the peer the session stops (best effort)."""
        # Best effort on the raw transport: the authenticated channel is what failed.
        with contextlib.suppress(Exception):
            self.raw.send(MESSAGE_ABORT, reason.encode()[:200])


class AliceProcessor(_Processor):
    """Alice's post-processing: her records, her randomness, her channel endpoint.

    Alice draws the Cascade shuffle seed, the verification hash key and the Toeplitz
    seed, and sends them to Bob over the authenticated channel.
    """

    role = "alice"

    def _sift(self, records: Any, block_id: int) -> Any:
        if not isinstance(records, AliceRecords):
            raise ParameterError("records", type(records).__name__, "Alice needs AliceRecords")
        return sift_alice(self.channel, records, link_id=self.config.link_id, block_id=block_id,
                          timeout_s=self.config.channel_timeout_s)

    def _reconcile(self, bits: np.ndarray, est: EstimationResult) -> ReconciliationResult:
        if self.config.reconciliation == "ldpc":
            return ldpc_reconcile_alice(self.channel, bits, qber_estimate=est.qber_estimate,
                                        rng=self.rng, settings=self.config.ldpc_settings(),
                                        timeout_s=self.config.channel_timeout_s)
        shuffle_seed = int.from_bytes(self.rng.bytes(8), "big")
        self.channel.send(MESSAGE_RECONCILE_SEED, shuffle_seed.to_bytes(8, "big"))
        return reconcile_alice(self.channel, bits, variant=self.config.cascade_variant,
                               qber_estimate=est.qber_estimate, shuffle_seed=shuffle_seed,
                               frame_bits=self.config.frame_bits,
                               timeout_s=self.config.channel_timeout_s)

    def _verify(self, block: KeyBlock) -> VerificationResult:
        return verify_alice(self.channel, block, self.rng, eps_cor=self.config.eps_cor,
                            segment_bits=self.config.verification_segment_bits,
                            timeout_s=self.config.channel_timeout_s)

    def _agree_length(self, length_bits: int, n_bits: int, block_id: int) -> np.ndarray:
        # Sent even when l <= 0 so that Bob checks the accounting and aborts in step.
        seed_bits = self.rng.bits(n_bits + length_bits - 1) if length_bits > 0 \
            else np.zeros(0, dtype=np.uint8)
        self.channel.send(MESSAGE_AMPLIFY, encode_arrays(
            np.array([max(length_bits, 0)], dtype=np.int64), np.packbits(seed_bits)))
        return seed_bits


class BobProcessor(_Processor):
    """Bob's post-processing: his records, his channel endpoint; he draws nothing secret."""

    role = "bob"

    def _sift(self, records: Any, block_id: int) -> Any:
        if not isinstance(records, BobRecords):
            raise ParameterError("records", type(records).__name__, "Bob needs BobRecords")
        return sift_bob(self.channel, records, link_id=self.config.link_id, block_id=block_id,
                        timeout_s=self.config.channel_timeout_s)

    def _reconcile(self, bits: np.ndarray, est: EstimationResult) -> ReconciliationResult:
        if self.config.reconciliation == "ldpc":
            return ldpc_reconcile_bob(self.channel, bits, qber_estimate=est.qber_estimate,
                                      settings=self.config.ldpc_settings(),
                                      timeout_s=self.config.channel_timeout_s)
        payload = self.channel.recv(MESSAGE_RECONCILE_SEED, self.config.channel_timeout_s)
        if len(payload) != 8:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_RECONCILE_SEED}: "
                                f"{len(payload)} bytes, expected 8")
        return reconcile_bob(self.channel, bits, variant=self.config.cascade_variant,
                             qber_estimate=est.qber_estimate,
                             shuffle_seed=int.from_bytes(payload, "big"),
                             frame_bits=self.config.frame_bits,
                             timeout_s=self.config.channel_timeout_s)

    def _verify(self, block: KeyBlock) -> VerificationResult:
        return verify_bob(self.channel, block, eps_cor=self.config.eps_cor,
                          segment_bits=self.config.verification_segment_bits,
                          timeout_s=self.config.channel_timeout_s)

    def _agree_length(self, length_bits: int, n_bits: int, block_id: int) -> np.ndarray:
        payload = self.channel.recv(MESSAGE_AMPLIFY, self.config.channel_timeout_s)
        alice_length, packed = decode_arrays(payload, 2, MESSAGE_AMPLIFY)
        mine = max(length_bits, 0)
        if alice_length.shape != (1,) or int(alice_length[0]) != mine:
            raise ProtocolAbort("accounting_mismatch",
                                f"block {block_id}: Alice's key length differs from Bob's "
                                f"({mine} bits)")
        seed_count = n_bits + length_bits - 1 if length_bits > 0 else 0
        if packed.size != (seed_count + 7) // 8:
            raise ProtocolAbort("malformed_message", f"{MESSAGE_AMPLIFY}: seed of "
                                f"{packed.size} bytes, expected {(seed_count + 7) // 8}")
        return np.unpackbits(packed.astype(np.uint8), count=seed_count)


# ---------------------------------------------------------------------------------------
# Sessions and reports
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandomStreams:
    """The independent random streams of a simulated run, all derived from one seed.

    The same seed gives the same streams in every process, which is what lets the two
    processes of a TCP run simulate the same quantum channel and the in-process run
    reproduce them.
    """

    simulation: RandomSource
    alice: RandomSource
    bob: RandomSource
    pre_shared_key: RandomSource

    @classmethod
    def from_seed(cls, seed: int) -> RandomStreams:
        root = RandomSource.seeded(seed)
        return cls(simulation=root.spawn(), alice=root.spawn(), bob=root.spawn(),
                   pre_shared_key=root.spawn())


def pre_shared_key(streams: RandomStreams, config: DistillConfig,
                   psk_file: str | Path | None = None) -> tuple[bytes, str]:
    """The initial authentication key and a description of where it came from.

    With ``psk_file`` the key is read from that file (both sites hold a copy);
    otherwise, in simulation, it is drawn from the run's seed.
    """
    if psk_file is None:
        return (streams.pre_shared_key.bytes(config.auth_pool_bytes),
                "derived from the simulation seed (simulation only)")
    return read_psk_pool(psk_file), f"read from {psk_file}"


def read_psk_pool(psk_file: str | Path) -> bytes:
    """:func:`read_psk_file` for a link run, where the file is the authentication pool
    itself (``kme serve`` derives keys from it instead): at least
    :data:`MIN_PSK_POOL_BYTES`, since each block's tags take about 80 bytes until blocks
    that yield key refill it (a 64-byte key stopped the first block)."""
    key = read_psk_file(psk_file)
    if len(key) < MIN_PSK_POOL_BYTES:
        raise ParameterError("psk_file", str(psk_file),
                             f"must hold at least {MIN_PSK_POOL_BYTES} bytes of key for a "
                             "link run (the authentication pool itself)",
                             f"it holds {len(key)}; a new one: (umask 077; head -c 65536 "
                             f"/dev/urandom > {psk_file}), the same file at both sites")
    return key


MIN_PSK_POOL_BYTES = 1024
"""Smallest ``--psk-file`` a link run starts from: about ten blocks' tags (a block takes
about 80 bytes at 10 km) before blocks that yield key refill the pool."""


def read_psk_file(psk_file: str | Path) -> bytes:
    """The pre-shared authentication key in ``psk_file``: at least 64 bytes, in a file
    only its owner can read (ParameterError naming ``psk_file`` otherwise)."""
    path = Path(psk_file)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as exc:
        raise ParameterError("psk_file", str(path), "must be a readable file",
                             exc.strerror or type(exc).__name__) from None
    if mode & 0o077:
        # The key that authenticates the classical channel: anyone who can read it can
        # impersonate either party, so it is refused, as a KEK file is.
        raise ParameterError("psk_file", str(path),
                             f"must be private to its owner; it has mode {mode:04o}",
                             f"run: chmod 600 {path}")
    if len(data) < 64:
        raise ParameterError("psk_file", str(path), "must hold at least 64 bytes of key",
                             f"it holds {len(data)}")
    return data


@dataclass
class PartyOutcome:
    """What one party produced over a run.

    Attributes:
        role: "alice" or "bob".
        blocks: every processed block (AUTHENTICATED or DISCARDED), in order.
        stats: the raw transport's counters (bytes on the wire, tags included).
        auth_bits_consumed: pre-shared key bits the channel authentication used.
        auth_bits_replenished: bits moved from output into the pool.
        auth_pool_bits_left: bits left in the pool at the end.
        auth_forgery_bound: sum over accepted messages of the Poly1305 forgery bound.
        run_abort: reason the run stopped early, if it did.
    """

    role: str
    blocks: list[KeyBlock] = field(default_factory=list)
    stats: ChannelStats = field(default_factory=ChannelStats)
    auth_bits_consumed: int = 0
    auth_bits_replenished: int = 0
    auth_pool_bits_left: int = 0
    auth_forgery_bound: float = 0.0
    run_abort: str | None = None
    internal_error: Exception | None = field(default=None, repr=False)

    @property
    def keys(self) -> list[KeyBlock]:
        """The delivered (AUTHENTICATED) blocks."""
        return [b for b in self.blocks if b.state is BlockState.AUTHENTICATED]

    def __repr__(self) -> str:
        return (f"PartyOutcome(role={self.role!r}, blocks={len(self.blocks)}, "
                f"keys={len(self.keys)}, run_abort={self.run_abort!r})")


def make_processor(role: str, raw: ChannelEndpoint, psk: bytes, rng: RandomSource,
                   config: DistillConfig, params: LinkParameters) -> _Processor:
    """Wrap ``raw`` in Wegman-Carter authentication keyed by ``psk`` and build a processor."""
    pool = AuthenticationKeyPool(psk)
    channel = AuthenticatedChannel(raw, pool, role)
    cls: type[_Processor] = AliceProcessor if role == "alice" else BobProcessor
    return cls(raw, channel, pool, rng, config, params)


def _hello(processor: _Processor, session_info: bytes) -> None:
    """Both sides check they run the same settings before any block."""
    mine = processor.config.fingerprint() + b"|" + session_info
    if processor.role == "alice":
        processor.channel.send(MESSAGE_HELLO, mine)
        theirs = processor.channel.recv(MESSAGE_HELLO, processor.config.channel_timeout_s)
    else:
        theirs = processor.channel.recv(MESSAGE_HELLO, processor.config.channel_timeout_s)
        processor.channel.send(MESSAGE_HELLO, mine)
    if theirs != mine:
        raise ProtocolAbort("configuration_mismatch",
                            "the peer runs different settings (link id, epsilons, Cascade "
                            "variant, frame size, thresholds, or simulated link, seed and "
                            "block size)")


def run_party(processor: _Processor,
              blocks: Iterable[tuple[int, int, AliceRecords | BobRecords]],
              progress: Callable[[KeyBlock], None] | None = None,
              session_info: bytes = b"", *, keep_blocks: bool = True) -> PartyOutcome:
    """Run one party over a sequence of (block id, pulses, own records).

    ``session_info`` (public) must be the same on both sides, or the session is refused
    before any block: the simulated runs put the link parameters, seed and block size
    there. ``keep_blocks=False`` leaves ``outcome.blocks`` empty: a party that runs for
    days and hands every block to ``progress`` must not keep each block's key bits in
    memory (the KME key sources).

    A session-level abort stops the run and is recorded in ``run_abort``; the blocks
    already delivered stay delivered (each was authenticated on its own).
    """
    outcome = PartyOutcome(role=processor.role)
    try:
        _hello(processor, session_info)
        for block_id, pulses, records in blocks:
            block = processor.process_block(records, block_id, pulses)
            # The records of a block are hundreds of MB at 1e9 pulses: let them go now,
            # not when the next block arrives (a link waiting for its turn held them).
            del records
            if keep_blocks:
                outcome.blocks.append(block)
            if progress is not None:
                progress(block)
            if block.meta.get("session_abort"):
                detail = block.meta.get("discard_detail")
                raise ProtocolAbort(block.discard_reason or "session_abort", detail or "")
    except ProtocolAbort as exc:
        outcome.run_abort = str(exc)
        processor.notify_peer(exc.reason)
    except Exception as exc:
        # A bug, not a protocol event: stop the peer promptly, then let the driver raise it.
        outcome.run_abort = f"internal_error: {type(exc).__name__}"
        outcome.internal_error = exc
        processor.notify_peer("internal_error")
    finally:
        outcome.stats = processor.raw.stats
        outcome.auth_bits_consumed = int(processor.channel.auth_bits_consumed)
        outcome.auth_bits_replenished = processor.replenished_bits
        outcome.auth_pool_bits_left = int(processor.pool.available_bits)
        outcome.auth_forgery_bound = float(processor.channel.forgery_probability_bound)
    return outcome


@dataclass
class LinkRunReport:
    """Figures of one run of a link (simulation + distillation), JSON-friendly via as_dict.

    ``alice`` and ``bob`` hold the parties' outcomes, including the delivered key
    blocks; :meth:`as_dict` never includes key bits. In a two-process run only one of
    them is set.
    """

    link_id: str
    params_name: str
    length_km: float
    pulses: int
    block_pulses: int
    seed: int
    attack: str
    config: DistillConfig
    psk_source: str
    alice: PartyOutcome | None
    bob: PartyOutcome | None
    wall_time_s: float
    mode: str = "in-process"

    def _parties(self) -> list[PartyOutcome]:
        return [p for p in (self.alice, self.bob) if p is not None]

    def _primary(self) -> PartyOutcome:
        parties = self._parties()
        if not parties:
            raise ValueError("report without a party")
        return parties[0]

    @property
    def run_abort(self) -> str | None:
        """The first session-level abort of either party, if any."""
        for party in self._parties():
            if party.run_abort:
                return f"{party.role}: {party.run_abort}"
        return None

    def block_rows(self) -> list[dict[str, Any]]:
        """One public row per block (from the primary party, Bob's QBER when present)."""
        rows = []
        bob_blocks = {b.block_id: b for b in self.bob.blocks} if self.bob else {}
        for block in self._primary().blocks:
            meta = block.meta
            other = bob_blocks.get(block.block_id)
            rows.append({
                "block_id": block.block_id,
                "pulses": meta.get("pulses"),
                "state": block.state.name,
                "discard_reason": block.discard_reason,
                "discard_detail": meta.get("discard_detail"),
                "sifted_bits": meta.get("sifted_bits"),
                "test_bits": meta.get("test_bits"),
                "test_qber": meta.get("test_qber"),
                "qber_estimate": meta.get("qber_estimate"),
                "qber_corrected": (other.meta if other else meta).get("qber_corrected"),
                "reconciliation_method": meta.get("reconciliation_method"),
                "reconciliation_disclosed_bits": meta.get("reconciliation_disclosed_bits"),
                "reconciliation_alice_bits": meta.get("reconciliation_alice_bits"),
                "reconciliation_bob_bits": meta.get("reconciliation_bob_bits"),
                "verification_tag_bits": meta.get("verification_tag_bits"),
                "verification_removed_bits": meta.get("verification_removed_bits"),
                "reconciliation_dropped_bits": meta.get("reconciliation_dropped_bits"),
                "disclosed_bits": meta.get("disclosed_bits"),
                "reconciliation_efficiency": (other.meta if other else meta)
                .get("reconciliation_efficiency"),
                "single_photon_events_lower": meta.get("single_photon_events_lower"),
                "single_photon_phase_error_upper": meta.get("single_photon_phase_error_upper"),
                "finite_key_bits": meta.get("finite_key_bits"),
                "finite_key": self._finite_key_row(meta, other.meta if other else None),
                "auth_bits_consumed": meta.get("auth_bits_consumed"),
                "auth_replenished_bits": meta.get("auth_replenished_bits"),
                "secret_bits": block.length_bits if block.state is BlockState.AUTHENTICATED
                else 0,
                "channel": meta.get("channel"),
                "timings_s": dict(block.timings_s),
                "cpu_s": {b.role: dict(b.meta.get("cpu_s", {}))
                          for b in (block, other) if b is not None},
            })
        return rows

    def _finite_key_row(self, meta: dict[str, Any],
                        bob_meta: dict[str, Any] | None) -> dict[str, Any]:
        """Everything needed to recompute the block's key length with other code.

        l = floor(s_Z0 + s_Z1 (1 - h(phi_Z)) - lambda_EC - security_cost_bits) from the
        counts, intensities, probabilities and epsilons below (Lim et al. 2014, Eqs.
        (1)-(5), with the clamps of the named bound, docs/finite-key.md); then, with
        removed = verification_removed_bits + reconciliation_dropped_bits (the bits of
        dropped segments and of LDPC frames Bob could not decode), finite_key_bits =
        min(l - removed, sifted_bits - removed). ``key_basis_errors`` are the errors
        reconciliation corrected per class (Bob's count; the bound does not use them).
        """
        cfg = self.config
        errors = (bob_meta or {}).get("key_basis_errors", meta.get("key_basis_errors"))
        return {
            "bound": meta.get("finite_key_bound", cfg.finite_key_bound),
            "intensities": meta.get("intensities"),
            "class_probabilities": meta.get("class_probabilities"),
            "z_basis_probability": meta.get("z_basis_probability"),
            "key_basis_detections": meta.get("key_basis_detections"),
            "key_basis_errors": errors,
            "test_basis_detections": meta.get("test_basis_detections"),
            "test_basis_errors": meta.get("test_basis_errors"),
            "eps_sec": cfg.eps_sec,
            "eps_cor": cfg.eps_cor,
            "vacuum_events_lower": meta.get("vacuum_events_lower"),
            "single_photon_events_lower": meta.get("single_photon_events_lower"),
            "single_photon_phase_error_upper": meta.get("single_photon_phase_error_upper"),
            "test_single_photon_events_lower": meta.get("test_single_photon_events_lower"),
            "test_single_photon_errors_upper": meta.get("test_single_photon_errors_upper"),
            "reconciliation_alice_bits": meta.get("reconciliation_alice_bits"),
            "reconciliation_bob_bits": meta.get("reconciliation_bob_bits"),
            "reconciliation_disclosed_bits": meta.get("reconciliation_disclosed_bits"),
            "verification_tag_bits": meta.get("verification_tag_bits"),
            "lambda_ec_bits": meta.get("lambda_ec_bits"),
            "security_cost_bits": meta.get("security_cost_bits"),
            "length_bits": meta.get("finite_key_length_bits"),
            "verification_removed_bits": meta.get("verification_removed_bits"),
            "reconciliation_dropped_bits": meta.get("reconciliation_dropped_bits"),
            "finite_key_bits": meta.get("finite_key_bits"),
        }

    def totals(self) -> dict[str, Any]:
        """Sums over the run."""
        rows = self.block_rows()
        primary = self._primary()
        secret = sum(r["secret_bits"] for r in rows)
        aborted: dict[str, int] = {}
        for r in rows:
            if r["discard_reason"]:
                aborted[r["discard_reason"]] = aborted.get(r["discard_reason"], 0) + 1
        stage_time = {stage: sum(r["timings_s"].get(stage, 0.0) for r in rows)
                      for stage in STAGES}
        return {
            "blocks": len(rows),
            "blocks_delivered": sum(1 for r in rows if r["state"] == "AUTHENTICATED"),
            "blocks_aborted": aborted,
            "sifted_bits": sum(r["sifted_bits"] or 0 for r in rows),
            "disclosed_bits": sum(r["disclosed_bits"] or 0 for r in rows),
            "finite_key_bits": sum(r["finite_key_bits"] or 0 for r in rows),
            "secret_bits": secret,
            "channel": primary.stats.as_dict(),
            "auth_bits_consumed": primary.auth_bits_consumed,
            "auth_bits_replenished": primary.auth_bits_replenished,
            "auth_pool_bits_left": primary.auth_pool_bits_left,
            "auth_forgery_bound": primary.auth_forgery_bound,
            "wall_time_s": self.wall_time_s,
            "secret_bits_per_second": secret / self.wall_time_s if self.wall_time_s > 0 else 0.0,
            "stage_time_s": stage_time,
            "run_abort": self.run_abort,
        }

    def as_dict(self) -> dict[str, Any]:
        """The whole report as plain data (no key material)."""
        cfg = self.config
        return {
            "link_id": self.link_id,
            "mode": self.mode,
            "role": None if self.alice and self.bob else self._primary().role,
            "preset": self.params_name,
            "length_km": self.length_km,
            "pulses": self.pulses,
            "block_pulses": self.block_pulses,
            "seed": self.seed,
            "attack": self.attack,
            "reconciliation": cfg.reconciliation,
            "cascade_variant": cfg.cascade_variant,
            "frame_bits": cfg.frame_bits,
            "eps_sec": cfg.eps_sec,
            "eps_cor": cfg.eps_cor,
            "finite_key_bound": cfg.finite_key_bound,
            "qber_abort_threshold": cfg.qber_abort_threshold,
            "psk_source": self.psk_source,
            "blocks": self.block_rows(),
            "totals": self.totals(),
        }

    def __repr__(self) -> str:
        return (f"LinkRunReport(link_id={self.link_id!r}, mode={self.mode!r}, "
                f"blocks={len(self._primary().blocks)}, run_abort={self.run_abort!r})")


def _simulation_info(params: LinkParameters, total_pulses: int, seed: int, block_pulses: int,
                     attack: Attack | None) -> bytes:
    """What both processes of a simulated run must agree on (all public)."""
    return repr((sorted(params.flat().items()), total_pulses, seed, block_pulses,
                 _describe_attack(attack))).encode()


def _describe_attack(attack: Attack | None) -> str:
    return "none" if attack is None else repr(attack)


def _split(records: Iterator[DetectionRecords], role: str
           ) -> Iterator[tuple[int, int, AliceRecords | BobRecords]]:
    for rec in records:
        yield rec.block_id, rec.pulses, (rec.alice if role == "alice" else rec.bob)


def distill_link(params: LinkParameters, total_pulses: int, seed: int, *,
                 block_pulses: int = DEFAULT_BLOCK_PULSES, attack: Attack | None = None,
                 config: DistillConfig | None = None, psk_file: str | Path | None = None,
                 progress: Callable[[KeyBlock], None] | None = None,
                 channel_wrapper: Callable[[ChannelEndpoint, str], ChannelEndpoint] | None = None,
                 ) -> LinkRunReport:
    """Simulate a link and distil its blocks, Alice and Bob in two threads of one process.

    The simulator runs in the calling thread; each block's Alice side goes to Alice's
    thread and Bob side to Bob's thread, which talk only over an authenticated
    in-process channel. ``channel_wrapper(endpoint, role)`` lets tests put a tampering
    or corrupting layer under the authentication. ``progress`` is called with each of
    Alice's finished blocks.
    """
    config = config or DistillConfig.for_link(params)
    streams = RandomStreams.from_seed(seed)
    psk, psk_source = pre_shared_key(streams, config, psk_file)
    raw_alice, raw_bob = in_process_pair()
    ends: dict[str, ChannelEndpoint] = {"alice": raw_alice, "bob": raw_bob}
    if channel_wrapper is not None:
        ends = {role: channel_wrapper(end, role) for role, end in ends.items()}
    alice = make_processor("alice", ends["alice"], psk, streams.alice, config, params)
    bob = make_processor("bob", ends["bob"], psk, streams.bob, config, params)
    feeds: dict[str, queue.Queue[tuple[int, int, Any] | None]] = {
        "alice": queue.Queue(maxsize=2), "bob": queue.Queue(maxsize=2)}
    outcomes: dict[str, PartyOutcome] = {}
    stop = threading.Event()

    exhausted = {"alice": False, "bob": False}
    info = _simulation_info(params, total_pulses, seed, block_pulses, attack)

    def feed(role: str) -> Iterator[tuple[int, int, Any]]:
        while True:
            item = feeds[role].get()
            if item is None:
                exhausted[role] = True
                return
            yield item

    def party(processor: _Processor) -> None:
        role = processor.role
        callback = progress if role == "alice" else None
        outcomes[role] = run_party(processor, feed(role), callback, info)
        stop.set()
        # Drain what the simulator still sends so that it never blocks on a full queue.
        while not exhausted[role]:
            exhausted[role] = feeds[role].get() is None

    start = time.perf_counter()
    threads = [threading.Thread(target=party, args=(p,), name=f"corridor-{p.role}", daemon=True)
               for p in (alice, bob)]
    for thread in threads:
        thread.start()
    try:
        for rec in simulate_stream(params, total_pulses, streams.simulation,
                                   block_pulses=block_pulses, attack=attack):
            if stop.is_set():
                break
            feeds["alice"].put((rec.block_id, rec.pulses, rec.alice))
            feeds["bob"].put((rec.block_id, rec.pulses, rec.bob))
    finally:
        feeds["alice"].put(None)
        feeds["bob"].put(None)
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - start
    for outcome in outcomes.values():
        if outcome.internal_error is not None:
            raise outcome.internal_error
    _reconcile_outcomes(outcomes["alice"], outcomes["bob"])
    return LinkRunReport(link_id=config.link_id, params_name=params.name,
                         length_km=params.fibre.length_km, pulses=total_pulses,
                         block_pulses=block_pulses, seed=seed, attack=_describe_attack(attack),
                         config=config, psk_source=psk_source, alice=outcomes["alice"],
                         bob=outcomes["bob"], wall_time_s=wall)


def _reconcile_outcomes(alice: PartyOutcome, bob: PartyOutcome) -> None:
    """Fail closed if the two sides ever disagree on which blocks were delivered."""
    bob_by_id = {b.block_id: b for b in bob.blocks}
    for block in alice.blocks:
        other = bob_by_id.get(block.block_id)
        if other is None or (block.state is BlockState.AUTHENTICATED) != \
                (other.state is BlockState.AUTHENTICATED) or \
                block.length_bits != other.length_bits:
            for b in (block, other):
                if b is not None and b.state is not BlockState.DISCARDED:
                    b.discard("parties_disagree")
    alice_ids = {b.block_id for b in alice.blocks}
    for block in bob.blocks:
        if block.block_id not in alice_ids and block.state is not BlockState.DISCARDED:
            block.discard("parties_disagree")


def distill_party(role: str, raw: ChannelEndpoint, params: LinkParameters, total_pulses: int,
                  seed: int, *, block_pulses: int = DEFAULT_BLOCK_PULSES,
                  attack: Attack | None = None,
                  config: DistillConfig | None = None, psk_file: str | Path | None = None,
                  progress: Callable[[KeyBlock], None] | None = None) -> LinkRunReport:
    """One party of a two-process run, over ``raw`` (a TCP endpoint, usually).

    Both processes run the simulator with the same seed and each keeps only its own
    side of the records: only classical messages cross the transport.
    """
    if role not in ("alice", "bob"):
        raise ParameterError("role", role, "must be alice or bob")
    config = config or DistillConfig.for_link(params)
    streams = RandomStreams.from_seed(seed)
    psk, psk_source = pre_shared_key(streams, config, psk_file)
    rng = streams.alice if role == "alice" else streams.bob
    processor = make_processor(role, raw, psk, rng, config, params)
    start = time.perf_counter()
    records = simulate_stream(params, total_pulses, streams.simulation,
                              block_pulses=block_pulses, attack=attack)
    outcome = run_party(processor, _split(records, role), progress,
                        _simulation_info(params, total_pulses, seed, block_pulses, attack))
    wall = time.perf_counter() - start
    if outcome.internal_error is not None:
        raise outcome.internal_error
    return LinkRunReport(link_id=config.link_id, params_name=params.name,
                         length_km=params.fibre.length_km, pulses=total_pulses,
                         block_pulses=block_pulses, seed=seed, attack=_describe_attack(attack),
                         config=config, psk_source=psk_source,
                         alice=outcome if role == "alice" else None,
                         bob=outcome if role == "bob" else None,
                         wall_time_s=wall, mode="tcp")
