"""Stage 2 of distillation: parameter estimation (SIFTED -> ESTIMATED).

This module owns the test-bit exchange, the per-class error counts, the finite-key
decoy-state bounds of the block and the decision to abort it.

Protocol: Alice and Bob reveal their X-basis (test) bits to each other (messages
``estimate.alice`` then ``estimate.bob``); both count the errors per intensity class,
so both reach the same counts and the same decision without a further message. The
test bits are never used for key (Lim et al. 2014 draw the key from Z only), so
revealing them costs nothing in lambda_EC.

Bounds: :func:`corridor.link.finite_key.finite_key_bounds` (Lim, Curty, Walenta, Xu,
Zbinden, PRA 89, 022307 (2014)) gives, with failure probabilities that are part of
eps_sec, lower bounds on the vacuum and single-photon Z-basis events (s_Z0, s_Z1)
and an upper bound on the single-photon phase error rate phi_Z. Which bound
(``finite_key_bound``: ``"lim2014"`` as published, the default, or ``"tightened"``)
is a setting that both parties share (docs/finite-key.md).

Abort rules (reason codes of :class:`corridor.errors.ProtocolAbort`):

- ``insufficient_test_bits``: no X-basis test bits, nothing to estimate from;
- ``qber_above_threshold``: observed test-basis QBER above ``qber_abort_threshold``,
  by default 11.0 %, where 1 - 2 H2(e) = 0 and one-way BB84 post-processing can
  yield no key (PHYSICS.md);
- ``single_photon_bound_too_low``: the lower bound on single-photon key-basis events
  s_Z1 is zero (what photon-number splitting does once decoys are present);
- ``phase_error_bound_too_high``: the upper bound on phi_Z reaches 1/2;
- ``no_secret_key``: the finite-key length is <= 0 even before reconciliation, with
  a pessimistic lambda_EC = ceil(f_abort * n_Z * H2(E)) + verification tag bits
  (f_abort defaults to 1.22, the upper end of deployed Cascade), so the block is not
  worth reconciling.

The key-basis QBER estimate handed to Cascade is the test-basis error rate over all
intensity classes, as (m_X + 1) / (n_X + 2) so that it is never zero: the model's
misalignment is basis-independent, and Cascade measures the true rate anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from corridor.distill.block import BlockState
from corridor.distill.channel import DEFAULT_TIMEOUT_S, ChannelEndpoint, receive_view
from corridor.distill.sifting import SiftingResult, decode_arrays, encode_arrays
from corridor.distill.verification import DEFAULT_SEGMENT_BITS, TAG_BITS, segment_count
from corridor.errors import ParameterError, ProtocolAbort
from corridor.link.finite_key import (
    DEFAULT_FINITE_KEY_BOUND,
    DecoyCounts,
    FiniteKeyBounds,
    check_bound,
    finite_key_bounds,
    finite_key_length,
)
from corridor.link.rates import binary_entropy

MESSAGE_ALICE = "estimate.alice"
MESSAGE_BOB = "estimate.bob"

#: One-way BB84 post-processing yields no key above this QBER (1 - 2 H2(e) = 0).
DEFAULT_QBER_ABORT_THRESHOLD = 0.11
#: Reconciliation efficiency assumed for the pre-reconciliation key-length check.
DEFAULT_ABORT_RECONCILIATION_EFFICIENCY = 1.22


@dataclass(frozen=True)
class EstimationSettings:
    """What estimation needs to know about the link and the security targets.

    Attributes:
        intensities: (signal, decoy, vacuum) mean photon numbers.
        class_probabilities: (signal, decoy, vacuum) probabilities.
        eps_sec: secrecy parameter.
        eps_cor: correctness parameter.
        qber_abort_threshold: abort above this test-basis QBER.
        abort_reconciliation_efficiency: f of the pessimistic lambda_EC.
        verification_tag_bits: bits one verification tag discloses.
        verification_segment_bits: length of the key segments verification tags.
        finite_key_bound: ``"lim2014"`` or ``"tightened"``
            (:data:`corridor.link.finite_key.FINITE_KEY_BOUNDS`).
        z_basis_probability: the key-basis probability of the link, recorded in the
            block's metadata for the report (Lim et al.'s bounds do not use it).
    """

    intensities: tuple[float, float, float]
    class_probabilities: tuple[float, float, float]
    eps_sec: float
    eps_cor: float
    qber_abort_threshold: float = DEFAULT_QBER_ABORT_THRESHOLD
    abort_reconciliation_efficiency: float = DEFAULT_ABORT_RECONCILIATION_EFFICIENCY
    verification_tag_bits: int = TAG_BITS
    verification_segment_bits: int = DEFAULT_SEGMENT_BITS
    finite_key_bound: str = DEFAULT_FINITE_KEY_BOUND
    z_basis_probability: float | None = None

    def __post_init__(self) -> None:
        check_bound(self.finite_key_bound)
        if not 0.0 < self.qber_abort_threshold <= 0.5:
            raise ParameterError("qber_abort_threshold", self.qber_abort_threshold,
                                 "allowed range is (0, 0.5]",
                                 "one-way BB84 yields no key above 0.11")
        if not 1.0 <= self.abort_reconciliation_efficiency <= 10.0:
            raise ParameterError("abort_reconciliation_efficiency",
                                 self.abort_reconciliation_efficiency, "allowed range is [1, 10]")


@dataclass(frozen=True)
class EstimationResult:
    """Output of stage 2 (public figures only).

    Attributes:
        counts: the decoy-state counts handed to the finite-key bounds.
        bounds: the finite-key bounds of this block.
        test_errors: X-basis errors per class (m_X,k).
        test_qber: observed X-basis error rate over all classes.
        qber_estimate: key-basis QBER estimate handed to Cascade (never zero).
        pessimistic_leak_bits: lambda_EC assumed by the pre-reconciliation check.
        pessimistic_key_bits: finite-key length with that lambda_EC (> 0, else aborted).
    """

    counts: DecoyCounts
    bounds: FiniteKeyBounds
    test_errors: tuple[int, int, int]
    test_qber: float
    qber_estimate: float
    pessimistic_leak_bits: int
    pessimistic_key_bits: int


def _exchange_test_bits(channel: ChannelEndpoint, own_bits: np.ndarray,
                        role: str, timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Send this party's test bits and receive the peer's: (own packed, peer's packed)."""
    count = int(own_bits.shape[0])
    own_packed = np.packbits(own_bits)
    packed = encode_arrays(own_packed)
    if role == "alice":
        channel.send(MESSAGE_ALICE, packed)
        kind = MESSAGE_BOB
    else:
        kind = MESSAGE_ALICE
    (other_packed,) = decode_arrays(receive_view(channel, kind, timeout_s), 1, kind)
    if role == "bob":
        channel.send(MESSAGE_BOB, packed)
    if other_packed.ndim != 1 or other_packed.size != (count + 7) // 8:
        raise ProtocolAbort("malformed_message", f"{kind}: {other_packed.size} bytes "
                            f"for {count} test bits")
    return own_packed, other_packed


def _errors_per_class(own_packed: np.ndarray, other_packed: np.ndarray, count: int,
                      classes: np.ndarray) -> tuple[int, int, int]:
    """m_X,k: test bits that differ, per intensity class (classes 0, 1, 2)."""
    differ = np.unpackbits(np.bitwise_xor(own_packed, other_packed.astype(np.uint8, copy=False)),
                           count=count)
    total = int(np.count_nonzero(differ))
    if not total:
        return 0, 0, 0
    decoy = int(np.count_nonzero(differ & (classes == 1)))
    vacuum = int(np.count_nonzero(differ & (classes == 2)))
    return total - decoy - vacuum, decoy, vacuum


def pessimistic_leak_bits(key_bits: int, qber: float, settings: EstimationSettings) -> int:
    """lambda_EC assumed before reconciliation: ceil(f_abort n_Z H2(E)) + all tag bits."""
    entropy = binary_entropy(min(max(qber, 0.0), 0.5))
    tags = segment_count(key_bits, settings.verification_segment_bits)
    return math.ceil(settings.abort_reconciliation_efficiency * key_bits * entropy) \
        + settings.verification_tag_bits * tags


def estimate(channel: ChannelEndpoint, sifted: SiftingResult,
             settings: EstimationSettings, *,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> EstimationResult:
    """Run stage 2 for one party and advance its block to ESTIMATED.

    Both parties call this with their own :class:`SiftingResult`; the function
    exchanges the test bits, computes the same counts and bounds on both sides and
    raises :class:`ProtocolAbort` (reasons in the module docstring) when the block
    must be discarded. The caller discards the block on abort.
    """
    block = sifted.block
    own_packed, other_packed = _exchange_test_bits(channel, sifted.test_bits, block.role,
                                                   timeout_s)
    test_errors = _errors_per_class(own_packed, other_packed, int(sifted.test_bits.shape[0]),
                                    sifted.test_classes)
    test_bits = sifted.counts.test_bits
    if test_bits == 0:
        raise ProtocolAbort("insufficient_test_bits",
                            f"block {block.block_id}: no X-basis detections to test with")
    total_errors = sum(test_errors)
    test_qber = total_errors / test_bits
    qber_estimate = (total_errors + 1) / (test_bits + 2)
    block.meta.update(test_qber=test_qber, qber_estimate=qber_estimate,
                      test_basis_errors=list(test_errors),
                      finite_key_bound=settings.finite_key_bound,
                      intensities=[float(x) for x in settings.intensities],
                      class_probabilities=[float(x) for x in settings.class_probabilities],
                      z_basis_probability=settings.z_basis_probability)
    if test_qber > settings.qber_abort_threshold:
        raise ProtocolAbort("qber_above_threshold",
                            f"block {block.block_id}: test QBER {test_qber:.4f} > "
                            f"{settings.qber_abort_threshold:.4f}")
    # Z-basis errors are not known before reconciliation and do not enter the
    # Lim et al. bounds (which use X-basis errors for the phase error); the
    # estimate below only fills the field.
    n_z = sifted.counts.key_basis_detections
    key_errors = (round(qber_estimate * n_z[0]), round(qber_estimate * n_z[1]),
                  round(qber_estimate * n_z[2]))
    counts = DecoyCounts(key_basis_detections=n_z, key_basis_errors=key_errors,
                         test_basis_detections=sifted.counts.test_basis_detections,
                         test_basis_errors=test_errors)
    try:
        bounds = finite_key_bounds(counts, settings.intensities, settings.class_probabilities,
                                   settings.eps_sec, settings.finite_key_bound)
    except ParameterError as exc:
        raise ProtocolAbort("insufficient_statistics",
                            f"block {block.block_id}: {exc}") from None
    block.meta.update(
        vacuum_events_lower=float(bounds.vacuum_events_lower),
        single_photon_events_lower=float(bounds.single_photon_events_lower),
        single_photon_phase_error_upper=float(bounds.single_photon_phase_error_upper),
        test_single_photon_events_lower=float(bounds.test_single_photon_events_lower),
        test_single_photon_errors_upper=float(bounds.test_single_photon_errors_upper))
    if not bounds.single_photon_events_lower > 0:
        raise ProtocolAbort("single_photon_bound_too_low",
                            f"block {block.block_id}: lower bound on single-photon key-basis "
                            f"events is {bounds.single_photon_events_lower:.1f}")
    if not bounds.single_photon_phase_error_upper < 0.5:
        raise ProtocolAbort("phase_error_bound_too_high",
                            f"block {block.block_id}: phase error upper bound "
                            f"{bounds.single_photon_phase_error_upper:.4f} >= 0.5")
    leak = pessimistic_leak_bits(sifted.counts.key_bits, qber_estimate, settings)
    length = finite_key_length(bounds, leak, settings.eps_sec, settings.eps_cor)
    if length <= 0:
        raise ProtocolAbort("no_secret_key",
                            f"block {block.block_id}: finite-key length {length} <= 0 with "
                            f"lambda_EC = {leak} bits (f = "
                            f"{settings.abort_reconciliation_efficiency})")
    block.advance(BlockState.ESTIMATED, pessimistic_leak_bits=leak,
                  pessimistic_key_bits=int(length))
    return EstimationResult(counts=counts, bounds=bounds, test_errors=test_errors,
                            test_qber=test_qber, qber_estimate=qber_estimate,
                            pessimistic_leak_bits=leak, pessimistic_key_bits=int(length))
