"""The Monte Carlo simulator against the closed form, and its bookkeeping.

Statistical tolerance used throughout: an observed count passes when it is not in the
two-sided tail of its exact binomial law beyond the 5-sigma normal tail
(p-value >= 5.7e-7). Counts are binomial by construction: detections of class c given
the n_c pulses of that class sent, errors given the sifted clicks. Seeds are fixed, so
each test is deterministic; the tolerance says how unlikely a false failure would be
for any seed. The tolerance is never widened to make a test pass.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, chisquare

from corridor.errors import ParameterError
from corridor.link import rates
from corridor.link.params import LinkParameters, preset
from corridor.link.records import SIGNAL
from corridor.link.simulator import (
    SQUASHING_RULE,
    SimulationSummary,
    class_statistics,
    pattern_table,
    simulate_block,
    simulate_stream,
    summarise,
)
from corridor.randomness import RandomSource


def memoryless(name: str) -> LinkParameters:
    """The preset with its dead time removed: the per-pulse model that the tests here
    check (the detector memory has its own tests in test_simulator.py)."""
    return preset(name).override({"dead_time_s": 0.0})


#: Two-sided tail probability of 5 standard deviations of a normal law.
FIVE_SIGMA_P_VALUE = 5.7e-7


def assert_binomial(successes: int, trials: int, probability: float, label: str) -> None:
    """Fail when ``successes`` lies beyond the 5-sigma-equivalent tail of Bin(trials, p)."""
    assert trials > 0, f"{label}: no trials"
    p_value = binomtest(int(successes), int(trials), float(probability)).pvalue
    assert p_value >= FIVE_SIGMA_P_VALUE, (
        f"{label}: observed {successes}/{trials} = {successes / trials:.6g}, "
        f"expected {probability:.6g}, p-value {p_value:.2e}")


def assert_two_sample(k1: int, n1: int, k2: int, n2: int, label: str) -> None:
    """Two binomial proportions agree within 5 pooled standard deviations."""
    pooled = (k1 + k2) / (n1 + n2)
    sigma = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    difference = k1 / n1 - k2 / n2
    assert abs(difference) <= 5 * sigma, (
        f"{label}: {k1}/{n1} against {k2}/{n2}, difference {difference:.3g}, "
        f"5 sigma = {5 * sigma:.3g}")


GRID = [("modern-snspd", 10.0), ("modern-snspd", 50.0), ("modern-snspd", 100.0),
        ("gys-2004", 10.0), ("gys-2004", 50.0), ("gys-2004", 100.0)]


@pytest.mark.parametrize(("preset_name", "length_km"), GRID)
def test_gain_and_qber_match_closed_form(preset_name: str, length_km: float) -> None:
    params = memoryless(preset_name).with_length(length_km)
    summary = SimulationSummary()
    for records in simulate_stream(params, 20_000_000, RandomSource.seeded(11),
                                   block_pulses=5_000_000):
        summary.add(records)
    for c, intensity in enumerate(params.source.intensities):
        label = f"{preset_name} {length_km:g} km class {c}"
        assert_binomial(summary.detections_per_class[c], summary.pulses_per_class[c],
                        rates.gain(params, intensity), label + " gain")
        if summary.sifted_per_class[c]:
            assert_binomial(summary.errors_per_class[c], summary.sifted_per_class[c],
                            rates.error_rate(params, intensity), label + " QBER")


@pytest.mark.parametrize("intensity", [0.05, 0.3, 0.8])
def test_gain_over_signal_intensities(intensity: float) -> None:
    params = memoryless("modern-snspd").with_length(25.0).with_intensities(intensity, intensity / 3)
    summary = SimulationSummary()
    summary.add(simulate_block(params, 10_000_000, RandomSource.seeded(5)))
    assert_binomial(summary.detections_per_class[SIGNAL], summary.pulses_per_class[SIGNAL],
                    rates.gain(params, intensity), f"signal {intensity} gain")
    assert_binomial(summary.errors_per_class[SIGNAL], summary.sifted_per_class[SIGNAL],
                    rates.error_rate(params, intensity), f"signal {intensity} QBER")


@pytest.mark.parametrize("preset_name", ["modern-snspd", "gys-2004"])
def test_exact_law_differs_from_textbook_formula_only_at_second_order(preset_name: str) -> None:
    """The simulator samples 1 - (1 - Y0) e^(-eta l) and squashes double clicks; the
    textbook gain Y0 + 1 - e^(-eta l) and error rate differ by Y0 (1 - e^(-eta l)) and
    third-order terms in eta l, far below the statistical tolerance of the grid."""
    for length_km in (0.0, 10.0, 50.0, 100.0, 150.0):
        params = memoryless(preset_name).with_length(length_km)
        model = class_statistics(params)
        for c, intensity in enumerate(params.source.intensities):
            gain = rates.gain(params, intensity)
            assert model.click_probability[c] == pytest.approx(gain, rel=2e-6)
            assert model.sifted_error_rate[c] == pytest.approx(
                rates.error_rate(params, intensity), abs=1e-4)


def test_same_seed_same_records_and_different_seed_differs() -> None:
    params = memoryless("modern-snspd").with_length(30.0)
    first = simulate_block(params, 2_000_000, RandomSource.seeded(42), block_id=3)
    second = simulate_block(params, 2_000_000, RandomSource.seeded(42), block_id=3)
    other = simulate_block(params, 2_000_000, RandomSource.seeded(43), block_id=3)
    for a, b in ((first.alice, second.alice), (first.bob, second.bob)):
        for name in ("index", "basis", "bit"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert first.alice.pulses_per_class == second.alice.pulses_per_class
    assert first.block_id == 3
    assert not np.array_equal(first.alice.index[:100], other.alice.index[:100])


def test_stream_blocks_cover_the_pulses_and_repeat_by_seed() -> None:
    params = memoryless("modern-snspd").with_length(20.0)
    blocks = list(simulate_stream(params, 2_500_000, RandomSource.seeded(9),
                                  block_pulses=1_000_000, first_block_id=7))
    assert [b.block_id for b in blocks] == [7, 8, 9]
    assert [b.pulses for b in blocks] == [1_000_000, 1_000_000, 500_000]
    for block in blocks:
        assert sum(block.alice.pulses_per_class) == block.pulses
        index = block.alice.index
        assert np.all(np.diff(index) > 0)
        assert index[0] >= 0 and index[-1] < block.pulses
        np.testing.assert_array_equal(index, block.bob.index)
    again = list(simulate_stream(params, 2_500_000, RandomSource.seeded(9),
                                 block_pulses=1_000_000, first_block_id=7))
    for x, y in zip(blocks, again, strict=True):
        np.testing.assert_array_equal(x.bob.bit, y.bob.bit)


def test_stream_memory_is_bounded_whatever_the_total() -> None:
    params = memoryless("modern-snspd").with_length(10.0)
    stream = simulate_stream(params, 10 ** 15, RandomSource.seeded(1), block_pulses=1_000_000)
    next(stream)  # compile and warm up outside the measurement
    tracemalloc.start()
    try:
        blocks = list(itertools.islice(stream, 20))
        del blocks
        count = sum(1 for _ in itertools.islice(stream, 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20
    # 20 blocks of ~1.3e5 records (15 bytes each) held at once, plus transient draws;
    # materialising 1e15 pulses would need petabytes.
    assert peak < 150 * 1024 * 1024


def test_bases_bits_and_positions_are_uniform_and_independent() -> None:
    params = memoryless("modern-snspd").with_length(10.0)
    records = simulate_block(params, 10_000_000, RandomSource.seeded(21))
    alice, bob = records.alice, records.bob
    n = len(records)
    p_z = params.source.z_basis_probability
    # The click probability does not depend on the bases, so bases keep their law.
    assert_binomial(int(np.count_nonzero(alice.basis == 0)), n, p_z, "Alice Z basis")
    assert_binomial(int(np.count_nonzero(bob.basis == 0)), n, p_z, "Bob Z basis")
    assert_binomial(int(np.count_nonzero(alice.basis == bob.basis)), n,
                    p_z ** 2 + (1 - p_z) ** 2, "bases independent")
    assert_binomial(int(np.count_nonzero(alice.bit)), n, 0.5, "Alice bit")
    assert_binomial(int(np.count_nonzero(bob.bit)), n, 0.5, "Bob bit")
    mismatched = alice.basis != bob.basis
    assert_binomial(int(np.count_nonzero(alice.bit[mismatched] == bob.bit[mismatched])),
                    int(np.count_nonzero(mismatched)), 0.5, "mismatched bases uncorrelated")
    # Positions: uniform over the block (chi-square over 20 bins).
    histogram = np.bincount(alice.index * 20 // records.pulses, minlength=20)
    assert chisquare(histogram).pvalue >= FIVE_SIGMA_P_VALUE
    # Pulses per class: each class count is Binomial(N, p_c).
    for c, p_c in enumerate(params.source.class_probabilities):
        assert_binomial(alice.pulses_per_class[c], records.pulses, p_c, f"class {c} sent")


def test_double_clicks_follow_the_squashing_rule() -> None:
    params = memoryless("modern-snspd").with_length(0.0).with_intensities(0.8, 0.2)
    records = simulate_block(params, 5_000_000, RandomSource.seeded(4))
    table = pattern_table(params)
    p_z = params.source.z_basis_probability
    basis = np.array([p_z, 1 - p_z])
    double_given_signal = float((basis[:, None] * basis[None, :] * table[0, :, :, 2]).sum())
    signal = records.alice.intensity_class == SIGNAL
    assert_binomial(int(np.count_nonzero(records.bob.double_click[signal])),
                    records.alice.pulses_per_class[SIGNAL], double_given_signal,
                    "signal double clicks")
    # A squashed double click carries a fair coin: half of them disagree with Alice.
    doubles = records.bob.double_click & (records.alice.basis == records.bob.basis)
    agree = records.alice.bit[doubles] == records.bob.bit[doubles]
    assert_binomial(int(np.count_nonzero(agree)), int(np.count_nonzero(doubles)), 0.5,
                    "squashed bit")
    assert "uniformly random bit" in SQUASHING_RULE


def test_dead_time_follows_the_renewal_law() -> None:
    """Non-paralysable dead time of d gates: a renewal process with cycle d + G,
    G ~ Geometric(P); the count over N gates has mean N / E[C] and variance
    N Var(C) / E[C]^3 (renewal central limit theorem)."""
    dead_time_s = 50e-9
    base = memoryless("modern-snspd").with_length(5.0)
    params = base.override({"dead_time_s": dead_time_s})
    pulses = 5_000_000
    records = simulate_block(params, pulses, RandomSource.seeded(8))
    dead_gates = math.ceil(dead_time_s * params.source.pulse_rate_hz) - 1
    assert np.diff(records.bob.index).min() >= dead_gates + 1
    p = sum(pc * q for pc, q in zip(params.source.class_probabilities,
                                    class_statistics(base).click_probability, strict=True))
    mean_cycle = dead_gates + 1 / p
    var_cycle = (1 - p) / p ** 2
    mean = pulses / mean_cycle
    sigma = math.sqrt(pulses * var_cycle / mean_cycle ** 3)
    assert abs(len(records) - mean) <= 5 * sigma
    assert sum(records.alice.pulses_per_class) == pulses


def test_afterpulses_follow_their_markov_law() -> None:
    """No dead time, afterpulse probability a into the next gate: gate t clicks with
    probability P + (1 - P) a [t - 1 clicked], a two-state Markov chain with stationary
    click probability pi = P / (1 - (1 - P) a) and count variance
    N pi (1 - pi) (1 + lambda) / (1 - lambda), lambda = (1 - P) a."""
    afterpulse = 0.08
    params = memoryless("modern-snspd").with_length(20.0).override(
        {"afterpulse_probability": afterpulse})
    pulses = 5_000_000
    records = simulate_block(params, pulses, RandomSource.seeded(12))
    without = params.override({"afterpulse_probability": 0.0})
    p = sum(pc * q for pc, q in zip(params.source.class_probabilities,
                                    class_statistics(without).click_probability, strict=True))
    lam = (1 - p) * afterpulse
    pi = p / (1 - lam)
    sigma = math.sqrt(pulses * pi * (1 - pi) * (1 + lam) / (1 - lam))
    assert abs(len(records) - pulses * pi) <= 5 * sigma
    assert sum(records.alice.pulses_per_class) == pulses
    assert np.all(np.diff(records.alice.index) > 0)


def test_summary_reports_expected_values_and_decoy_estimates() -> None:
    params = memoryless("modern-snspd").with_length(50.0)
    report = summarise(simulate_stream(params, 20_000_000, RandomSource.seeded(3)), params)
    assert report["pulses"] == 20_000_000
    assert set(report["per_class"]) == {"signal", "decoy", "vacuum"}
    signal = report["per_class"]["signal"]
    assert signal["expected_gain"] == pytest.approx(rates.gain(params, 0.5))
    assert abs(signal["gain_deviation_sigmas"]) < 5
    decoy = report["decoy_estimates"]
    honest = rates.decoy_bounds_infinite(params)
    # An honest link: the vacuum + weak bound is a lower bound close to the true Y1.
    assert 0.5 * honest.single_photon_yield_lower < decoy["single_photon_yield_lower"]
    assert decoy["single_photon_yield_lower"] < 1.1 * honest.single_photon_yield_lower
    assert decoy["secret_key_rate_bits_per_pulse"] > 0
    assert report["wall_time_s"] > 0


def test_bad_input_is_named() -> None:
    params = memoryless("modern-snspd")
    with pytest.raises(ParameterError, match="pulses"):
        simulate_block(params, -1, RandomSource.seeded(1))
    with pytest.raises(ParameterError, match="block_pulses"):
        list(simulate_stream(params, 10, RandomSource.seeded(1), block_pulses=0))
    with pytest.raises(ParameterError, match="total_pulses"):
        list(simulate_stream(params, 2.5, RandomSource.seeded(1)))  # type: ignore[arg-type]


def test_reprs_never_show_bits() -> None:
    records = simulate_block(memoryless("modern-snspd"), 100_000, RandomSource.seeded(1))
    for text in (repr(records), repr(records.alice), repr(records.bob), str(records)):
        assert "[" not in text and "array" not in text


def test_empty_and_tiny_blocks() -> None:
    params = memoryless("modern-snspd").with_length(100.0)
    empty = simulate_block(params, 0, RandomSource.seeded(1))
    assert len(empty) == 0 and empty.alice.pulses_per_class == (0, 0, 0)
    tiny = simulate_block(params, 1, RandomSource.seeded(1))
    assert sum(tiny.alice.pulses_per_class) == 1


@settings(max_examples=60, deadline=None)
@given(length_km=st.floats(0.0, 300.0), signal=st.floats(0.05, 2.0),
       dark=st.floats(0.0, 1e-3), misalignment=st.floats(0.0, 0.2),
       p_z=st.floats(0.05, 0.95))
def test_pattern_table_is_a_law_and_click_probability_ignores_bases(
        length_km: float, signal: float, dark: float, misalignment: float, p_z: float) -> None:
    params = preset("gys-2004").override({
        "length_km": length_km, "signal_intensity": signal, "decoy_intensity": signal / 4,
        "dark_count_probability": dark, "misalignment_error": misalignment,
        "z_basis_probability": p_z})
    table = pattern_table(params)
    assert np.all(table >= 0) and np.all(table.sum(axis=-1) <= 1 + 1e-12)
    clicks = table.sum(axis=-1)                                    # [c, a, b]
    for c, intensity in enumerate(params.source.intensities):
        # 1 - (1 - p_dark)^2 exp(-eta l), written to keep the digits of tiny values.
        exact = -math.expm1(2 * math.log1p(-dark) - params.transmittance * intensity)
        np.testing.assert_allclose(clicks[c], exact, rtol=1e-9, atol=1e-300)
    # Mismatched bases carry no information about Alice's bit.
    np.testing.assert_allclose(table[:, 0, 1, 0], table[:, 0, 1, 1], rtol=1e-12)
    stats = class_statistics(params)
    assert all(0.0 <= e <= 0.5 + 1e-12 for e in stats.sifted_error_rate)


def test_gaps_between_clicks_are_geometric() -> None:
    """Clicks form a Bernoulli(P) process: gaps are i.i.d. Geometric(P), so the number
    of gaps longer than k is Binomial(gaps, (1 - P)^k)."""
    params = memoryless("modern-snspd").with_length(30.0)
    records = simulate_block(params, 20_000_000, RandomSource.seeded(31))
    p = sum(pc * q for pc, q in zip(params.source.class_probabilities,
                                    class_statistics(params).click_probability, strict=True))
    gaps = np.diff(records.alice.index)
    for k in (0, 1, 10, 50, 200):
        assert_binomial(int(np.count_nonzero(gaps > k)), gaps.size, (1 - p) ** k,
                        f"gaps longer than {k}")


@pytest.mark.parametrize(("preset_name", "length_km"),
                         [("modern-snspd", 10.0), ("modern-snspd", 100.0), ("gys-2004", 0.0)])
def test_integer_alias_table_encodes_the_exact_outcome_law(preset_name: str,
                                                           length_km: float) -> None:
    # The kernel keeps column j's own code when the 53-bit fraction f < threshold[j],
    # so each column gives its own code probability threshold / 2^53 and its alias the
    # rest. Summed over columns this must be the conditional law of (class, bases,
    # pattern) given a click, up to the 2^-53 resolution of the uniform (1e-12 here).
    from corridor.link.simulator import _click_law

    params = memoryless(preset_name).with_length(length_km)
    law = _click_law(params, None)
    columns = law.alias_threshold.shape[0]
    keep = law.alias_threshold.astype(np.float64) / 2.0**53
    own = (law.alias_codes & 0xFF).astype(np.int64)
    other = (law.alias_codes >> 8).astype(np.int64)
    encoded = np.zeros(64)
    np.add.at(encoded, own, keep / columns)
    np.add.at(encoded, other, (1.0 - keep) / columns)
    table = pattern_table(params)
    p_z = params.source.z_basis_probability
    basis = np.array([p_z, 1.0 - p_z])
    classes = np.asarray(params.source.class_probabilities)
    expected = np.zeros(64)
    for c, a, b, k in itertools.product(range(3), range(2), range(2), range(3)):
        code = c | (a << 2) | (b << 3) | (int(k == 1) << 4) | (int(k == 2) << 5)
        expected[code] += classes[c] * basis[a] * basis[b] * table[c, a, b, k]
    expected /= expected.sum()
    np.testing.assert_allclose(encoded, expected, rtol=0.0, atol=1e-12)


# --------------------------------------------------------------------------------------
# Detector memory: dead time, pixels, afterpulses against the exact stationary model
# --------------------------------------------------------------------------------------

MEMORY_CASES = [
    ("modern-snspd", 10.0, {}),                          # 50 ns, one pixel: A ~ 0.13
    ("modern-snspd", 50.0, {}),
    ("modern-snspd", 10.0, {"detector_pixels": 4}),
    ("grunenfelder-2023", 10.0, {}),                     # 14 pixels at 2.5 GHz
    ("modern-snspd", 20.0, {"afterpulse_probability": 0.05}),
]


def _memory_summary(params: LinkParameters, pulses: int, seed: int) -> SimulationSummary:
    summary = SimulationSummary()
    for records in simulate_stream(params, pulses, RandomSource.seeded(seed),
                                   block_pulses=pulses // 4):
        summary.add(records)
    return summary


@pytest.mark.parametrize(("preset_name", "length_km", "changes"), MEMORY_CASES)
def test_detector_memory_matches_the_exact_model(preset_name: str, length_km: float,
                                                 changes: dict[str, float]) -> None:
    """Exact tests where the law is exact, a conservative one where it is not.

    Which records survive the dead time depends only on earlier click positions, and
    whether a record is an afterpulse record only on an independent coin, so the
    details of the records are i.i.d.: the class of each detection is exactly
    categorical with weights p_c Q_c, and the errors of sifted clicks exactly
    binomial. The total count is a renewal count, less variable than a binomial one,
    so its binomial test is conservative (it can only pass more easily).
    """
    params = preset(preset_name).with_length(length_km).override(changes)
    model = class_statistics(params)
    summary = _memory_summary(params, 20_000_000, seed=41)
    label = f"{preset_name} {length_km:g} km {changes}"
    weights = [p * g for p, g in zip(params.source.class_probabilities,
                                     model.click_probability, strict=True)]
    total = sum(weights)
    for c in range(3):
        if weights[c] > 0 and params.source.class_probabilities[c] > 0:
            assert_binomial(summary.detections_per_class[c], summary.detections,
                            weights[c] / total, f"{label} class {c} share")
        if summary.sifted_per_class[c]:
            assert_binomial(summary.errors_per_class[c], summary.sifted_per_class[c],
                            model.sifted_error_rate[c], f"{label} class {c} QBER")
    assert_binomial(summary.detections, summary.pulses, total, f"{label} detections")
    # Every pulse, counted or lost in a dead window, is in its class's tally.
    for c, p in enumerate(params.source.class_probabilities):
        if 0 < p < 1:
            assert_binomial(summary.pulses_per_class[c], summary.pulses, p,
                            f"{label} class {c} pulses")


def test_dead_time_scales_every_class_by_the_closed_form_availability() -> None:
    """The simulator's exact model and the closed form share A = 1 / (1 + D P / N)."""
    for name, length_km, changes in MEMORY_CASES[:4]:
        params = preset(name).with_length(length_km).override(changes)
        without = params.override({"dead_time_s": 0.0})
        exact = class_statistics(params).click_probability
        free = class_statistics(without).click_probability
        ratios = [e / f for e, f in zip(exact, free, strict=True)]
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-12)
        # Exact and textbook click probabilities differ by Y0 (1 - e^-eta l) only.
        assert ratios[0] == pytest.approx(rates.availability(params), rel=1e-6)
        assert class_statistics(params).sifted_error_rate == \
            class_statistics(without).sifted_error_rate


def test_pixels_raise_the_count_rate_that_saturates() -> None:
    base = preset("modern-snspd").with_length(2.0)
    one = len(simulate_block(base, 2_000_000, RandomSource.seeded(2)))
    many = len(simulate_block(base.override({"detector_pixels": 8}), 2_000_000,
                              RandomSource.seeded(2)))
    free = len(simulate_block(base.override({"dead_time_s": 0.0}), 2_000_000,
                              RandomSource.seeded(2)))
    assert one < many < free
    # A single pixel never clicks twice within its dead time.
    records = simulate_block(base, 2_000_000, RandomSource.seeded(3))
    assert np.diff(records.bob.index).min() >= rates.dead_gates(base) + 1


def test_afterpulses_with_several_pixels_are_refused() -> None:
    with pytest.raises(ParameterError, match="afterpulse_probability"):
        preset("modern-snspd").override({"detector_pixels": 2,
                                         "afterpulse_probability": 0.01})


def test_gaps_of_a_single_pixel_with_dead_time_are_dead_time_plus_geometric() -> None:
    """A single pixel counts a renewal process: gaps D + G, G ~ Geometric(P) on
    {1, 2, ...}, so the number of gaps longer than D + k is Binomial(gaps, (1 - P)^k)."""
    params = preset("modern-snspd").with_length(20.0)
    gates = rates.dead_gates(params)
    free = class_statistics(params.override({"dead_time_s": 0.0})).click_probability
    p = sum(pc * q for pc, q in zip(params.source.class_probabilities, free, strict=True))
    gaps = np.diff(simulate_block(params, 20_000_000, RandomSource.seeded(5)).alice.index)
    assert gaps.min() > gates
    for k in (0, 1, 5, 20, 60):
        assert_binomial(int(np.count_nonzero(gaps > gates + k)), gaps.size, (1 - p) ** k,
                        f"gaps longer than D + {k}")
