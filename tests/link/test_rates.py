"""Closed-form gains, error rates, decoy bounds, key rate, PLOB and QBER threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.link.params import PRESETS, preset
from corridor.link.rates import (
    availability,
    binary_entropy,
    class_gains_and_errors,
    dead_gates,
    decoy_bounds_infinite,
    decoy_bounds_vacuum_weak,
    detector_availability,
    error_rate,
    fibre_plob_bits_per_pulse,
    gain,
    infinite_decoy_rate_array,
    one_way_key_fraction,
    plob_bound,
    qber_threshold,
    raw_key_rate,
    secret_key_rate,
    sifting_factor,
)

GYS = preset("gys-2004")
SNSPD = preset("modern-snspd")


def test_gain_and_error_rate_follow_the_closed_form_at_a_hand_checked_point() -> None:
    # GYS at 50 km: eta = 0.045 * 10^(-0.21 * 50 / 10) = 0.045 * 10^-1.05.
    link = GYS.with_length(50.0)
    eta = 0.045 * 10 ** -1.05
    y0 = 1.0 - (1.0 - 8.5e-7) ** 2
    expected_gain = y0 + 1.0 - math.exp(-eta * 0.48)
    assert gain(link, 0.48) == pytest.approx(expected_gain, rel=1e-12)
    expected_errors = 0.5 * y0 + 0.033 * (1.0 - math.exp(-eta * 0.48))
    assert error_rate(link, 0.48) * gain(link, 0.48) == pytest.approx(expected_errors, rel=1e-12)


def test_vacuum_clicks_are_background_with_random_bits() -> None:
    link = GYS.with_length(30.0)
    assert gain(link, 0.0) == pytest.approx(GYS.background_yield, rel=1e-12)
    assert error_rate(link, 0.0) == 0.5


def test_published_gys_background_yield_is_reproduced_by_the_preset() -> None:
    # Lo-Ma-Chen 2005 quote Y0 = 1.7e-6 for GYS; the preset stores p_dark per detector.
    assert GYS.background_yield == pytest.approx(1.7e-6, rel=1e-6)


@pytest.mark.parametrize(("eta", "bits"), [(0.5, 1.0), (1e-2, 0.0145), (0.0, 0.0)])
def test_plob_bound_values(eta: float, bits: float) -> None:
    # -log2(1 - 0.01) = 0.014499...; quoted to the 4 digits of the published check.
    assert plob_bound(eta) == pytest.approx(bits, abs=5e-5)


def test_plob_of_a_lossless_channel_is_unbounded_and_bad_input_is_refused() -> None:
    assert math.isinf(plob_bound(1.0))
    with pytest.raises(ParameterError, match="transmittance"):
        plob_bound(1.5)


def test_fibre_plob_uses_the_fibre_not_bobs_detectors() -> None:
    link = GYS.with_length(100.0)
    assert fibre_plob_bits_per_pulse(link) == pytest.approx(plob_bound(10 ** -2.1))


def test_bb84_qber_threshold_is_eleven_percent() -> None:
    threshold = qber_threshold()
    assert threshold == pytest.approx(0.110, abs=5e-4)
    assert 1.0 - 2.0 * binary_entropy(threshold) == pytest.approx(0.0, abs=1e-12)
    # Imperfect reconciliation lowers the threshold.
    assert qber_threshold(1.22) < threshold
    assert one_way_key_fraction(threshold, 1.22) < 0.0


def test_binary_entropy_values_and_vectorisation() -> None:
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-3)
    values = binary_entropy(np.array([0.0, 0.1, 0.5, 0.9]))
    assert values.shape == (4,)
    assert values[1] == pytest.approx(values[3])
    with pytest.raises(ParameterError):
        binary_entropy(1.2)


def test_sifting_factor_of_standard_and_efficient_bb84() -> None:
    assert sifting_factor(0.5) == 0.5
    assert sifting_factor(0.9) == pytest.approx(0.82)
    assert sifting_factor(0.999) > 0.99


def test_infinite_decoy_estimate_matches_gllp() -> None:
    link = GYS.with_length(80.0)
    eta = link.transmittance
    y0 = link.background_yield
    estimate = decoy_bounds_infinite(link)
    y1 = y0 + eta - y0 * eta
    assert estimate.single_photon_yield_lower == pytest.approx(y1)
    assert estimate.single_photon_error_upper == pytest.approx((0.5 * y0 + 0.033 * eta) / y1)
    assert estimate.single_photon_gain_lower == pytest.approx(y1 * 0.48 * math.exp(-0.48))


def _vacuum_weak_from_closed_form(link, mu: float, nu: float):  # type: ignore[no-untyped-def]
    return decoy_bounds_vacuum_weak(
        signal_gain=gain(link, mu), decoy_gain=gain(link, nu),
        signal_qber=error_rate(link, mu), decoy_qber=error_rate(link, nu),
        background_yield=link.background_yield, signal_intensity=mu, decoy_intensity=nu)


@pytest.mark.parametrize("length_km", [0.0, 50.0, 120.0])
def test_vacuum_weak_bounds_are_valid_and_tighten_as_the_decoy_weakens(length_km: float) -> None:
    link = GYS.with_length(length_km)
    exact = decoy_bounds_infinite(link)
    previous_gap = math.inf
    for nu in (0.2, 0.1, 0.05, 0.01):
        bound = _vacuum_weak_from_closed_form(link, 0.48, nu)
        assert bound.single_photon_yield_lower <= exact.single_photon_yield_lower * (1 + 1e-12)
        assert bound.single_photon_error_upper >= exact.single_photon_error_upper * (1 - 1e-12)
        gap = exact.single_photon_yield_lower - bound.single_photon_yield_lower
        assert gap < previous_gap
        previous_gap = gap
    # Ma et al. 2005: as nu -> 0 the bound approaches the infinite-decoy value.
    assert bound.single_photon_yield_lower == pytest.approx(exact.single_photon_yield_lower,
                                                            rel=0.02)


def test_vacuum_weak_collapse_gives_zero_not_nan() -> None:
    # A PNS-like observation: the decoy clicks far less than the signal implies.
    bound = decoy_bounds_vacuum_weak(signal_gain=1e-3, decoy_gain=1e-6, signal_qber=0.03,
                                     decoy_qber=0.03, background_yield=1e-6,
                                     signal_intensity=0.5, decoy_intensity=0.1)
    assert (bound.single_photon_yield_lower, bound.single_photon_error_upper,
            bound.single_photon_gain_lower) == (0.0, 0.5, 0.0)


def test_vacuum_weak_refuses_bad_settings() -> None:
    with pytest.raises(ParameterError, match="decoy_intensity"):
        decoy_bounds_vacuum_weak(1e-3, 1e-4, 0.03, 0.03, 1e-6, 0.1, 0.2)
    with pytest.raises(ParameterError, match="decoy_gain"):
        decoy_bounds_vacuum_weak(1e-3, float("nan"), 0.03, 0.03, 1e-6, 0.5, 0.1)


probability = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(signal_gain=probability, decoy_gain=probability, signal_qber=probability,
       decoy_qber=probability, background=probability,
       mu=st.floats(min_value=0.05, max_value=1.5), ratio=st.floats(min_value=0.01,
                                                                   max_value=0.95))
def test_vacuum_weak_bounds_stay_physical_on_any_observation(
        signal_gain: float, decoy_gain: float, signal_qber: float, decoy_qber: float,
        background: float, mu: float, ratio: float) -> None:
    bound = decoy_bounds_vacuum_weak(signal_gain, decoy_gain, signal_qber, decoy_qber,
                                     background, mu, mu * ratio)
    assert 0.0 <= bound.single_photon_yield_lower <= 1.0
    assert 0.0 <= bound.single_photon_error_upper <= 0.5
    assert 0.0 <= bound.single_photon_gain_lower <= bound.single_photon_yield_lower


def test_key_rate_is_zero_not_negative_when_misalignment_is_too_high() -> None:
    noisy = GYS.override({"misalignment_error": 0.15})
    assert raw_key_rate(noisy) < 0.0
    assert secret_key_rate(noisy) == 0.0
    assert secret_key_rate(noisy, "vacuum-weak") == 0.0


def test_vacuum_weak_rate_is_below_infinite_decoys() -> None:
    for length_km in (0.0, 50.0, 100.0):
        link = GYS.with_length(length_km)
        assert 0.0 < secret_key_rate(link, "vacuum-weak") < secret_key_rate(link, "infinite")


def test_unknown_decoy_mode_is_refused() -> None:
    with pytest.raises(ParameterError, match="decoy"):
        secret_key_rate(GYS, "three")


def test_vectorised_rate_matches_the_scalar_rate() -> None:
    link = SNSPD.with_length(70.0)
    mus = np.array([0.2, 0.5, 0.8])
    vector = infinite_decoy_rate_array(link, mus)
    scalar = [raw_key_rate(link.with_intensities(mu), "infinite") for mu in mus]
    assert vector == pytest.approx(scalar, rel=1e-12)


def test_rate_tends_to_zero_and_gain_to_background_as_transmittance_vanishes() -> None:
    far = GYS.with_length(2000.0)
    assert far.transmittance < 1e-40
    assert gain(far, 0.48) == pytest.approx(far.background_yield, rel=1e-9)
    assert error_rate(far, 0.48) == pytest.approx(0.5, rel=1e-9)
    assert secret_key_rate(far) == 0.0


preset_names = st.sampled_from(sorted(PRESETS))
lengths = st.floats(min_value=0.0, max_value=400.0, allow_nan=False)
intensities = st.floats(min_value=0.16, max_value=1.5)


@settings(max_examples=150, deadline=None)
@given(name=preset_names, first=lengths, second=lengths, mu=intensities,
       decoy=st.sampled_from(["infinite", "vacuum-weak"]))
def test_rate_does_not_increase_with_distance(name: str, first: float, second: float,
                                              mu: float, decoy: str) -> None:
    short, long = sorted((first, second))
    link = PRESETS[name].with_intensities(mu)
    assert (secret_key_rate(link.with_length(long), decoy)
            <= secret_key_rate(link.with_length(short), decoy))


@settings(max_examples=150, deadline=None)
@given(name=preset_names, length_km=lengths, mu=st.floats(min_value=0.0, max_value=5.0))
def test_gain_is_a_probability(name: str, length_km: float, mu: float) -> None:
    link = PRESETS[name].with_length(length_km)
    q = gain(link, mu)
    assert 0.0 < q <= 1.0
    assert 0.0 <= error_rate(link, mu) <= 0.5


@settings(max_examples=150, deadline=None)
@given(name=preset_names, length_km=st.floats(min_value=0.5, max_value=400.0), mu=intensities,
       decoy=st.sampled_from(["infinite", "vacuum-weak"]))
def test_rate_per_pulse_is_below_the_plob_bound_of_the_fibre(name: str, length_km: float,
                                                             mu: float, decoy: str) -> None:
    link = PRESETS[name].with_length(length_km).with_intensities(mu)
    assert secret_key_rate(link, decoy) < fibre_plob_bits_per_pulse(link)


def test_negative_intensity_is_refused() -> None:
    with pytest.raises(ParameterError, match="intensity"):
        gain(GYS, -0.1)
    with pytest.raises(ParameterError, match="intensity"):
        error_rate(GYS, float("inf"))


# --------------------------------------------------------------------------------------
# Detectors that saturate: dead time and pixels
# --------------------------------------------------------------------------------------

def test_dead_gates_count_the_gates_inside_the_dead_time() -> None:
    assert dead_gates(SNSPD) == 49                      # 50 ns at 1 GHz: gates 1..49
    assert dead_gates(SNSPD.override({"pulse_rate_hz": 2.5e9})) == 124
    assert dead_gates(SNSPD.override({"dead_time_s": 0.0})) == 0
    assert dead_gates(SNSPD.override({"dead_time_s": 0.5e-9})) == 0   # within one gate


@pytest.mark.parametrize("decoy", ["infinite", "vacuum-weak"])
@pytest.mark.parametrize("length_km", [0.0, 10.0, 50.0, 150.0])
def test_dead_time_scales_the_key_rate_by_the_availability(decoy: str,
                                                           length_km: float) -> None:
    """Every yield carries the same A and the decoy bounds are linear in the yields, so
    R(dead time) = A R(no dead time) exactly, with A = 1 / (1 + D P / N)."""
    for pixels in (1, 3):
        link = SNSPD.with_length(length_km).override({"detector_pixels": pixels})
        free = link.override({"dead_time_s": 0.0})
        src = link.source
        p = sum(pc * gain(link, mu) for pc, mu in zip(src.class_probabilities,
                                                        src.intensities, strict=True))
        a = 1.0 / (1.0 + 49 * p / pixels)
        assert availability(link) == pytest.approx(a, rel=1e-12)
        assert raw_key_rate(link, decoy) == pytest.approx(a * raw_key_rate(free, decoy),
                                                          rel=1e-9)
        gains, errors = class_gains_and_errors(link)
        for k, mu in enumerate(src.intensities):
            assert gains[k] == pytest.approx(a * gain(link, mu), rel=1e-12)
            assert errors[k] == pytest.approx(error_rate(link, mu), rel=1e-12)


def test_modern_snspd_saturates_at_short_distance() -> None:
    """50 ns dead time: the receiver never clicks more than 1 / tau = 20 M times per
    second, and between 1 and 10 km the key rate per second barely moves (it fell by a
    third without dead time)."""
    per_second = {}
    for length_km in (1.0, 10.0):
        link = SNSPD.with_length(length_km)
        gains, _ = class_gains_and_errors(link)
        clicks = 1e9 * sum(p * g for p, g in zip(link.source.class_probabilities, gains,
                                                   strict=True))
        assert clicks < 1.0 / 50e-9
        per_second[length_km] = secret_key_rate(link) * 1e9
    assert per_second[10.0] / per_second[1.0] > 0.85
    free = SNSPD.override({"dead_time_s": 0.0})
    assert secret_key_rate(free.with_length(10.0)) / secret_key_rate(free.with_length(1.0)) < 0.7
    assert secret_key_rate(SNSPD.with_length(10.0)) * 1e9 < 11e6      # was 73 Mb/s


def test_vectorised_rate_sees_the_saturation_of_each_intensity() -> None:
    link = SNSPD.with_length(5.0)
    grid = np.array([0.2, 0.5, 0.9])
    values = infinite_decoy_rate_array(link, grid)
    for mu, value in zip(grid, values, strict=True):
        assert value == pytest.approx(raw_key_rate(link.with_intensities(mu)), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(gates=st.integers(0, 10_000), pixels=st.integers(1, 64),
       p=st.floats(0.0, 1.0))
def test_availability_is_a_probability_that_pixels_raise_and_dead_time_lowers(
        gates: int, pixels: int, p: float) -> None:
    a = float(detector_availability(gates, pixels, p))
    assert 0.0 < a <= 1.0
    assert float(detector_availability(gates + 1, pixels, p)) <= a
    assert float(detector_availability(gates, pixels + 1, p)) >= a
    # Counted clicks per gate, A P = P / (1 + D P / N), never reach N / D.
    if gates:
        assert a * p <= pixels / gates
    else:
        assert a == 1.0
