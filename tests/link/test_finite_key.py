"""Finite-key bounds and key length after Lim, Curty, Walenta, Xu, Zbinden (2014)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.link.finite_key import (
    FINITE_KEY_BOUNDS,
    DecoyCounts,
    FiniteKeyBounds,
    expected_counts,
    finite_key_bounds,
    finite_key_length,
    finite_key_rate,
    security_cost_bits,
)
from corridor.link.params import preset
from corridor.link.rates import (
    binary_entropy,
    class_gains_and_errors,
    decoy_bounds_infinite,
    secret_key_rate,
)

SNSPD_50 = preset("modern-snspd").with_length(50.0)
GYS_50 = preset("gys-2004").with_length(50.0)


def _truth(params, pulses: int) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """Expected single-photon detections in Z and X, and e1, from the closed form."""
    src = params.source
    exact = decoy_bounds_infinite(params)
    tau1 = sum(p * math.exp(-mu) * mu
               for mu, p in zip(src.intensities, src.class_probabilities, strict=True))
    p_z = src.z_basis_probability
    single_z = pulses * p_z ** 2 * tau1 * exact.single_photon_yield_lower
    single_x = pulses * (1 - p_z) ** 2 * tau1 * exact.single_photon_yield_lower
    return single_z, single_x, exact.single_photon_error_upper


@pytest.mark.parametrize("pulses", [10**9, 10**11, 10**13])
def test_bounds_hold_against_the_true_single_photon_statistics(pulses: int) -> None:
    src = SNSPD_50.source
    bounds = finite_key_bounds(expected_counts(SNSPD_50, pulses), src.intensities,
                               src.class_probabilities, 1e-10)
    single_z, single_x, e1 = _truth(SNSPD_50, pulses)
    assert 0.0 < bounds.single_photon_events_lower <= single_z
    assert 0.0 < bounds.test_single_photon_events_lower <= single_x
    assert e1 <= bounds.single_photon_phase_error_upper <= 0.5
    assert bounds.test_single_photon_errors_upper <= bounds.test_single_photon_events_lower


def test_bounds_become_tight_for_large_blocks() -> None:
    # With nu = 0.15 and a vacuum, the three-intensity bound of Eq. (3) recovers
    # about 95 % of the single-photon events (the rest is the decoy-state gap, not
    # statistics), and the phase error tends to e1 = e_d.
    src = SNSPD_50.source
    pulses = 10**15
    bounds = finite_key_bounds(expected_counts(SNSPD_50, pulses), src.intensities,
                               src.class_probabilities, 1e-10)
    single_z, _, e1 = _truth(SNSPD_50, pulses)
    assert bounds.single_photon_events_lower / single_z > 0.9
    assert bounds.single_photon_phase_error_upper < 1.3 * e1


def test_key_length_follows_the_formula_of_lim_et_al() -> None:
    bounds = FiniteKeyBounds(vacuum_events_lower=1000.0, single_photon_events_lower=1e6,
                             single_photon_phase_error_upper=0.03,
                             test_single_photon_events_lower=1e5,
                             test_single_photon_errors_upper=2000.0)
    eps_sec, eps_cor = 1e-10, 1e-15
    expected = (1000.0 + 1e6 * (1 - binary_entropy(0.03)) - 2e5
                - 6 * math.log2(21 / eps_sec) - math.log2(2 / eps_cor))
    assert finite_key_length(bounds, 2e5, eps_sec, eps_cor) == math.floor(expected)
    assert security_cost_bits(eps_sec, eps_cor) == pytest.approx(
        6 * math.log2(21 / eps_sec) + math.log2(2 / eps_cor))


def test_key_length_is_never_negative() -> None:
    bounds = FiniteKeyBounds(0.0, 100.0, 0.2, 10.0, 2.0)
    assert finite_key_length(bounds, 1e4, 1e-10, 1e-15) == 0


def test_expected_counts_follow_the_gains() -> None:
    pulses = 10**10
    counts = expected_counts(SNSPD_50, pulses)
    src = SNSPD_50.source
    p_z = src.z_basis_probability
    # The gains carry the receiver's saturation (modern-snspd has a 50 ns dead time).
    gains, _ = class_gains_and_errors(SNSPD_50)
    for k, p in enumerate(src.class_probabilities):
        assert counts.key_basis_detections[k] == round(pulses * p * p_z ** 2 * gains[k])
        assert counts.key_basis_errors[k] <= counts.key_basis_detections[k]
        assert counts.test_basis_errors[k] <= counts.test_basis_detections[k]
    assert counts.key_basis_total == sum(counts.key_basis_detections)


@pytest.mark.parametrize("params", [SNSPD_50, GYS_50], ids=["modern-snspd", "gys-2004"])
def test_finite_key_rate_grows_with_the_block_and_stays_below_the_asymptotic_rate(
        params) -> None:  # type: ignore[no-untyped-def]
    blocks = [10**9, 10**11, 10**13, 10**15]
    rates = [finite_key_rate(params, n) for n in blocks]
    asymptotic = secret_key_rate(params, "infinite")
    assert all(a < b for a, b in itertools.pairwise(rates))
    assert all(rate < asymptotic for rate in rates)
    # Converging: each hundredfold block gains less than the previous one did.
    gains = [b - a for a, b in itertools.pairwise(rates)]
    assert all(later < earlier for earlier, later in itertools.pairwise(gains))


def test_small_blocks_give_no_key() -> None:
    assert finite_key_rate(GYS_50, 10**6) == 0.0


def test_collapsed_decoy_statistics_give_no_key_and_no_nan() -> None:
    counts = DecoyCounts(key_basis_detections=(100_000, 0, 10), key_basis_errors=(3000, 0, 5),
                         test_basis_detections=(100_000, 0, 10), test_basis_errors=(3000, 0, 5))
    bounds = finite_key_bounds(counts, (0.5, 0.1, 0.0), (0.8, 0.1, 0.1), 1e-10)
    assert bounds.single_photon_events_lower == 0.0
    assert bounds.single_photon_phase_error_upper == 0.5
    assert finite_key_length(bounds, 0.0, 1e-10, 1e-15) == 0


def test_a_test_sample_without_errors_still_bounds_the_phase_error_above_zero() -> None:
    counts = DecoyCounts(key_basis_detections=(10**7, 10**6, 100), key_basis_errors=(0, 0, 0),
                         test_basis_detections=(10**7, 10**6, 100), test_basis_errors=(0, 0, 0))
    bounds = finite_key_bounds(counts, (0.5, 0.1, 0.0), (0.8, 0.1, 0.1), 1e-10)
    assert bounds.single_photon_phase_error_upper > 0.0


@pytest.mark.parametrize(("intensities", "probabilities", "field"), [
    ((0.2, 0.15, 0.1), (0.8, 0.1, 0.1), "signal_intensity"),
    ((0.5, 0.1, 0.1), (0.8, 0.1, 0.1), "decoy_intensity"),
    ((0.5, 0.1, 0.0), (0.8, 0.1, 0.2), "probabilities"),
    ((0.5, 0.1, 0.0), (0.9, 0.1, 0.0), "probabilities"),
])
def test_settings_outside_the_analysis_are_refused(intensities: tuple[float, float, float],
                                                   probabilities: tuple[float, float, float],
                                                   field: str) -> None:
    counts = expected_counts(SNSPD_50, 10**9)
    with pytest.raises(ParameterError, match=field):
        finite_key_bounds(counts, intensities, probabilities, 1e-10)


def test_inconsistent_counts_and_epsilons_are_refused() -> None:
    bad = DecoyCounts((10, 10, 10), (11, 0, 0), (10, 10, 10), (0, 0, 0))
    with pytest.raises(ParameterError, match="key_basis_errors"):
        finite_key_bounds(bad, (0.5, 0.1, 0.0), (0.8, 0.1, 0.1), 1e-10)
    negative = DecoyCounts((10, -1, 10), (0, 0, 0), (10, 10, 10), (0, 0, 0))
    with pytest.raises(ParameterError, match="key_basis_detections"):
        finite_key_bounds(negative, (0.5, 0.1, 0.0), (0.8, 0.1, 0.1), 1e-10)
    good = expected_counts(SNSPD_50, 10**9)
    with pytest.raises(ParameterError, match="eps_sec"):
        finite_key_bounds(good, (0.5, 0.1, 0.0), (0.8, 0.1, 0.1), 0.0)
    with pytest.raises(ParameterError, match="pulses"):
        finite_key_rate(SNSPD_50, 0)


counts_strategy = st.tuples(*(st.integers(min_value=0, max_value=10**9) for _ in range(3)))
fraction = st.floats(min_value=0.0, max_value=1.0)


@settings(max_examples=200, deadline=None)
@given(key=counts_strategy, test=counts_strategy,
       key_error_fraction=st.tuples(fraction, fraction, fraction),
       test_error_fraction=st.tuples(fraction, fraction, fraction),
       bound=st.sampled_from(FINITE_KEY_BOUNDS))
def test_bounds_stay_physical_on_any_observed_counts(
        key: tuple[int, int, int], test: tuple[int, int, int],
        key_error_fraction: tuple[float, float, float],
        test_error_fraction: tuple[float, float, float], bound: str) -> None:
    counts = DecoyCounts(
        key_basis_detections=key,
        key_basis_errors=tuple(int(n * f) for n, f in zip(key, key_error_fraction,
                                                         strict=True)),  # type: ignore[arg-type]
        test_basis_detections=test,
        test_basis_errors=tuple(int(n * f) for n, f in zip(test, test_error_fraction,
                                                          strict=True)))  # type: ignore[arg-type]
    bounds = finite_key_bounds(counts, (0.5, 0.15, 0.0), (0.7, 0.2, 0.1), 1e-10, bound)
    values = (bounds.vacuum_events_lower, bounds.single_photon_events_lower,
              bounds.single_photon_phase_error_upper, bounds.test_single_photon_events_lower,
              bounds.test_single_photon_errors_upper)
    assert all(math.isfinite(v) and v >= 0.0 for v in values)
    assert bounds.single_photon_phase_error_upper <= 0.5
    length = finite_key_length(bounds, counts.key_basis_total
                               * binary_entropy(min(counts.key_basis_qber, 0.5)), 1e-10, 1e-15)
    assert length >= 0
    if bound == "tightened":
        # Its caps s_0 + s_1 <= n_Z and v_X1 <= m_X keep every bound within the data.
        assert length <= counts.key_basis_total
        assert bounds.test_single_photon_errors_upper <= sum(counts.test_basis_errors)


def test_the_published_bound_is_not_capped_by_the_observed_counts() -> None:
    # Clicks only in the vacuum class: data that the decoy model makes (all but)
    # impossible, so the Hoeffding events have failed. Eq. (2) then certifies more
    # vacuum events than were detected; Lim et al. do not cap it (the failure is
    # inside eps_sec), the tightened bound does. The pipeline never hashes to more
    # bits than it holds either way.
    counts = DecoyCounts((0, 0, 86), (0, 0, 0), (0, 0, 0), (0, 0, 0))
    published = finite_key_bounds(counts, (0.5, 0.15, 0.0), (0.7, 0.2, 0.1), 1e-10, "lim2014")
    tightened = finite_key_bounds(counts, (0.5, 0.15, 0.0), (0.7, 0.2, 0.1), 1e-10, "tightened")
    assert published.vacuum_events_lower > 86
    assert tightened.vacuum_events_lower == 86


def test_the_tightened_bound_caps_single_photon_test_errors_by_the_observed_errors() -> None:
    # A large block with few test errors: Eq. (4) alone bounds v_X1 far above m_X
    # (the decoy and vacuum classes' Hoeffding terms are scaled by e^mu / p_k).
    counts = expected_counts(SNSPD_50, 10**9)
    src = SNSPD_50.source
    published = finite_key_bounds(counts, src.intensities, src.class_probabilities, 1e-10,
                                  "lim2014")
    tightened = finite_key_bounds(counts, src.intensities, src.class_probabilities, 1e-10,
                                  "tightened")
    m_x = sum(counts.test_basis_errors)
    assert published.test_single_photon_errors_upper > m_x
    assert tightened.test_single_photon_errors_upper == m_x
    assert tightened.single_photon_phase_error_upper < published.single_photon_phase_error_upper
    assert tightened.single_photon_events_lower == published.single_photon_events_lower


def test_an_unknown_bound_is_refused_with_the_allowed_names() -> None:
    counts = expected_counts(SNSPD_50, 10**9)
    with pytest.raises(ParameterError, match="lim2014, tightened"):
        finite_key_bounds(counts, (0.5, 0.15, 0.0), (0.7, 0.2, 0.1), 1e-10, "lim-2014")
    with pytest.raises(ParameterError, match="finite_key_bound"):
        finite_key_rate(SNSPD_50, 10**9, "published")


def test_gamma_matches_hand_evaluation_of_eq_5() -> None:
    from corridor.link.finite_key import _gamma

    # sqrt((c+d)(1-b)b/(c d ln2) * log2((c+d)/(c d (1-b) b) * (21/eps)^2)) evaluated
    # by hand for eps = 1e-10, b = 1 %: 2.0896e-3 (c = d = 4.2e5) and 1.5490e-2
    # (c = 4.2e3, d = 4.2e5).
    assert _gamma(1e-10 / 21, 0.01, 4.2e5, 4.2e5) == pytest.approx(2.0896e-3, rel=1e-4)
    assert _gamma(1e-10 / 21, 0.01, 4.2e3, 4.2e5) == pytest.approx(1.5490e-2, rel=1e-4)
    # Huge samples against a loose eps_sec: the logarithm's argument falls below 1,
    # where the limit 0 applies instead of a math domain error.
    assert _gamma(0.5 / 21, 0.4, 1e9, 1e9) == 0.0


def test_key_block_rate_solves_eps_sec_equal_kappa_times_the_key_length() -> None:
    from corridor.link.finite_key import (
        LinkConstants,
        key_basis_detection_probability,
        key_block_rate,
        raw_finite_key_rate,
    )
    from corridor.link.optimize import optimise_key_block

    lim, _ = optimise_key_block(preset("lim-2014").with_length(50.0), 10**6, "lim2014", 1e-15)
    link = LinkConstants.of(lim)
    src = lim.source
    args = (src.intensities, src.class_probabilities, src.z_basis_probability)
    pulses = 10**6 / key_basis_detection_probability(link, *args)
    length = key_block_rate(link, *args, 10**6, "lim2014", 1e-15) * pulses
    assert length > 1000
    # A fixed point of l = l(eps_sec = kappa l), to within a bit.
    again = raw_finite_key_rate(link, *args, pulses, "lim2014", 1e-15 * length) * pulses
    assert again == pytest.approx(length, abs=1.0)
    # Without the scaling the preset's fixed eps_sec applies.
    fixed = key_block_rate(link, *args, 10**6, "lim2014") * pulses
    assert fixed == pytest.approx(raw_finite_key_rate(link, *args, pulses, "lim2014") * pulses)
    # Far beyond the reach: no fixed point at one bit or more, and a negative rate.
    far = preset("lim-2014").with_length(200.0)
    assert key_block_rate(LinkConstants.of(far), *args, 10**4, "lim2014", 1e-15) < 0.0


def test_expected_counts_add_lim_et_al_afterpulses() -> None:
    from corridor.link.finite_key import expected_gain_and_qber

    # Without afterpulses: exactly the closed form, saturation included.
    (signal_gain, _, _), (signal_qber, _, _) = class_gains_and_errors(SNSPD_50)
    assert expected_gain_and_qber(SNSPD_50, 0.5) == pytest.approx(
        (signal_gain, signal_qber), rel=1e-12)
    # Lim et al. Sec. IV: R = D (1 + p_ap) clicks, e = p_dc + e_mis (1 - e^{-eta mu})
    # + p_ap D / 2 errors per pulse.
    lim = preset("lim-2014").with_length(50.0)
    eta = 0.1 * 10 ** (-0.2 * 50 / 10)
    d = 1 - (1 - 6e-7) ** 2 + 1 - math.exp(-eta * 0.5)
    errors = 0.5 * (1 - (1 - 6e-7) ** 2) + 0.005 * (1 - math.exp(-eta * 0.5)) + 0.04 * d / 2
    clicks, qber = expected_gain_and_qber(lim, 0.5)
    assert clicks == pytest.approx(d * 1.04, rel=1e-12)
    assert qber == pytest.approx(errors / (d * 1.04), rel=1e-12)
    counts = expected_counts(lim, 10**10)
    src = lim.source
    assert counts.key_basis_detections[0] == round(
        10**10 * src.signal_probability * src.z_basis_probability ** 2 * clicks)
