"""Stage 2 (parameter estimation): counts, bounds and abort rules on synthetic blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.estimation import (
    DEFAULT_QBER_ABORT_THRESHOLD,
    EstimationResult,
    EstimationSettings,
    _errors_per_class,
    estimate,
    pessimistic_leak_bits,
)
from corridor.distill.sifting import SiftedCounts, SiftingResult
from corridor.errors import ParameterError, ProtocolAbort
from corridor.link.finite_key import (
    DecoyCounts,
    expected_counts,
    finite_key_bounds,
    finite_key_length,
)
from corridor.link.params import preset
from tests.distill.test_sifting import run_pair

# A link whose 1e7-pulse blocks hold a positive finite key (checked below); without
# the preset's dead time, which would cut the clicks of such a block tenfold.
PARAMS = preset("modern-snspd").override({
    "dead_time_s": 0.0, "z_basis_probability": 0.5, "signal_probability": 0.5,
    "decoy_probability": 0.3, "vacuum_probability": 0.2}).with_length(5.0)
PULSES = 10_000_000


def settings_for(params=PARAMS, **kw: float) -> EstimationSettings:
    return EstimationSettings(intensities=params.source.intensities,
                              class_probabilities=params.source.class_probabilities,
                              eps_sec=params.protocol.eps_sec, eps_cor=params.protocol.eps_cor,
                              **kw)  # type: ignore[arg-type]


def synthetic_pair(counts: DecoyCounts, seed: int = 0) -> tuple[SiftingResult, SiftingResult]:
    """Two parties' sifting results with exactly the given per-class counts and errors."""
    gen = np.random.default_rng(seed)
    results = []
    key_classes = np.repeat(np.arange(3, dtype=np.uint8), counts.key_basis_detections)
    test_classes = np.repeat(np.arange(3, dtype=np.uint8), counts.test_basis_detections)
    alice_key = gen.integers(0, 2, key_classes.size, dtype=np.uint8)
    alice_test = gen.integers(0, 2, test_classes.size, dtype=np.uint8)
    flips = np.zeros(test_classes.size, dtype=np.uint8)
    start = 0
    for n, m in zip(counts.test_basis_detections, counts.test_basis_errors, strict=True):
        flips[start + gen.choice(n, size=m, replace=False)] = 1
        start += n
    sifted = SiftedCounts(detections=key_classes.size + test_classes.size,
                          key_basis_detections=counts.key_basis_detections,
                          test_basis_detections=counts.test_basis_detections,
                          basis_mismatches=0)
    for role, test_bits in (("alice", alice_test), ("bob", alice_test ^ flips)):
        block = KeyBlock(link_id="L", block_id=5, role=role, bits=alice_key.copy())
        block.advance(BlockState.SIFTED, sifted_bits=sifted.key_bits)
        results.append(SiftingResult(block=block, counts=sifted, key_classes=key_classes,
                                     test_bits=test_bits.astype(np.uint8),
                                     test_classes=test_classes))
    return results[0], results[1]


def estimate_both(counts: DecoyCounts, settings: EstimationSettings, seed: int = 0
                  ) -> tuple[object, object, tuple[SiftingResult, SiftingResult]]:
    a, b = synthetic_pair(counts, seed)
    ra, rb = run_pair(lambda ch: estimate(ch, a, settings), lambda ch: estimate(ch, b, settings))
    return ra, rb, (a, b)


def test_both_parties_reach_the_same_counts_and_bounds() -> None:
    counts = expected_counts(PARAMS, PULSES)
    settings = settings_for()
    ra, rb, (a, b) = estimate_both(counts, settings)
    assert isinstance(ra, EstimationResult) and isinstance(rb, EstimationResult)
    assert ra == rb
    assert ra.test_errors == counts.test_basis_errors
    assert ra.counts.test_basis_detections == counts.test_basis_detections
    # The bounds are exactly those of the finite-key module on the observed counts.
    direct = finite_key_bounds(counts, settings.intensities, settings.class_probabilities,
                               settings.eps_sec)
    assert ra.bounds == direct
    m_x, n_x = sum(counts.test_basis_errors), sum(counts.test_basis_detections)
    assert ra.test_qber == pytest.approx(m_x / n_x)
    assert ra.qber_estimate == pytest.approx((m_x + 1) / (n_x + 2))
    leak = pessimistic_leak_bits(counts.key_basis_total, ra.qber_estimate, settings)
    assert ra.pessimistic_key_bits == finite_key_length(direct, leak, settings.eps_sec,
                                                        settings.eps_cor) > 0
    for side in (a, b):
        assert side.block.state is BlockState.ESTIMATED
        assert side.block.meta["single_photon_events_lower"] == pytest.approx(
            direct.single_photon_events_lower)


def test_qber_above_eleven_percent_aborts_on_both_sides() -> None:
    honest = expected_counts(PARAMS, PULSES)
    n_x = honest.test_basis_detections
    errors = tuple(int(0.12 * n) for n in n_x)
    counts = DecoyCounts(honest.key_basis_detections, honest.key_basis_errors, n_x,
                         errors)  # type: ignore[arg-type]
    ra, rb, _ = estimate_both(counts, settings_for())
    for r in (ra, rb):
        assert isinstance(r, ProtocolAbort) and r.reason == "qber_above_threshold"
    assert DEFAULT_QBER_ABORT_THRESHOLD == 0.11


def test_pns_like_decoy_deficit_aborts_on_the_single_photon_bound() -> None:
    # PNS with decoys: the decoy class clicks far less than the honest link predicts.
    honest = expected_counts(PARAMS, PULSES)
    k, t = list(honest.key_basis_detections), list(honest.test_basis_detections)
    k[1] //= 20
    t[1] //= 20
    te = [min(e, n) for e, n in zip(honest.test_basis_errors, t, strict=True)]
    counts = DecoyCounts(tuple(k), honest.key_basis_errors, tuple(t),  # type: ignore[arg-type]
                         tuple(te))  # type: ignore[arg-type]
    ra, rb, _ = estimate_both(counts, settings_for())
    for r in (ra, rb):
        assert isinstance(r, ProtocolAbort) and r.reason == "single_photon_bound_too_low"


def test_small_block_aborts_with_no_secret_key() -> None:
    # 6e5 pulses: phi_Z ~ 0.21 < 1/2 under Lim et al.'s bound, but no key is left.
    counts = expected_counts(PARAMS, 600_000)
    ra, rb, _ = estimate_both(counts, settings_for())
    for r in (ra, rb):
        assert isinstance(r, ProtocolAbort)
        assert r.reason == "no_secret_key"


def test_a_tiny_block_aborts_on_the_phase_error_bound() -> None:
    counts = expected_counts(PARAMS, 300_000)
    ra, rb, _ = estimate_both(counts, settings_for())
    for r in (ra, rb):
        assert isinstance(r, ProtocolAbort)
        assert r.reason == "phase_error_bound_too_high"


def test_the_bound_is_a_setting_and_reaches_the_block_metadata() -> None:
    counts = expected_counts(PARAMS, PULSES)
    results = {}
    for bound in ("lim2014", "tightened"):
        ra, rb, (sa, _) = estimate_both(counts, settings_for(finite_key_bound=bound))
        assert isinstance(ra, EstimationResult) and isinstance(rb, EstimationResult)
        assert sa.block.meta["finite_key_bound"] == bound
        direct = finite_key_bounds(ra.counts, PARAMS.source.intensities,
                                   PARAMS.source.class_probabilities, PARAMS.protocol.eps_sec,
                                   bound)
        assert ra.bounds == direct
        results[bound] = ra
    assert results["tightened"].pessimistic_key_bits > results["lim2014"].pessimistic_key_bits
    with pytest.raises(ParameterError, match="finite_key_bound"):
        settings_for(finite_key_bound="lim")


def test_no_test_bits_aborts() -> None:
    counts = DecoyCounts((100, 10, 1), (0, 0, 0), (0, 0, 0), (0, 0, 0))
    ra, rb, _ = estimate_both(counts, settings_for())
    for r in (ra, rb):
        assert isinstance(r, ProtocolAbort) and r.reason == "insufficient_test_bits"


def test_pessimistic_leak_grows_with_f_and_qber() -> None:
    s1 = settings_for(abort_reconciliation_efficiency=1.1)
    s2 = settings_for(abort_reconciliation_efficiency=1.3)
    assert pessimistic_leak_bits(10_000, 0.02, s1) < pessimistic_leak_bits(10_000, 0.02, s2)
    assert pessimistic_leak_bits(10_000, 0.02, s1) < pessimistic_leak_bits(10_000, 0.05, s1)
    assert pessimistic_leak_bits(10_000, 0.0, s1) == s1.verification_tag_bits


@pytest.mark.parametrize(("field", "value"), [("qber_abort_threshold", 0.0),
                                              ("qber_abort_threshold", 0.7),
                                              ("abort_reconciliation_efficiency", 0.9)])
def test_bad_settings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ParameterError) as info:
        settings_for(**{field: value})
    assert info.value.field == field


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 200), seed=st.integers(0, 2**32 - 1))
def test_errors_per_class_equal_bincount_of_differing_bits(n: int, seed: int) -> None:
    gen = np.random.default_rng(seed)
    mine = gen.integers(0, 2, n, dtype=np.uint8)
    theirs = np.where(gen.random(n) < 0.3, 1 - mine, mine).astype(np.uint8)
    classes = gen.integers(0, 3, n, dtype=np.uint8)
    expected = np.bincount(classes[mine != theirs], minlength=3)
    got = _errors_per_class(np.packbits(mine), np.packbits(theirs), n, classes)
    assert got == tuple(int(x) for x in expected)
