"""Optimised settings, maximum distance, and the published cut-off points."""

from __future__ import annotations

import math

import pytest

from corridor.errors import ParameterError
from corridor.link.finite_key import finite_key_rate
from corridor.link.optimize import max_distance_km, optimise
from corridor.link.params import preset
from corridor.link.rates import secret_key_rate, sifting_factor

GYS = preset("gys-2004")
SNSPD = preset("modern-snspd")


@pytest.fixture(scope="module")
def gys_infinite_cutoff_km() -> float:
    return max_distance_km(GYS, "infinite")


def test_gys_infinite_decoy_cutoff_is_the_published_142_km(gys_infinite_cutoff_km: float) -> None:
    # Lo, Ma, Chen, PRL 94, 230504 (2005), Fig. 1: about 142 km with the GYS
    # parameters. The tolerance of +-2 km covers reading the figure; the model's own
    # value is 142.2 km.
    assert 140.0 <= gys_infinite_cutoff_km <= 144.0


def test_gys_optimal_signal_intensity_is_near_the_published_half_photon() -> None:
    # Lo-Ma-Chen: mu_opt ~ 0.48 for GYS (the preset's own value), nearly flat in L.
    for length_km in (0.0, 50.0, 100.0):
        best, rate = optimise(GYS.with_length(length_km))
        assert 0.42 <= best.source.signal_intensity <= 0.52
        assert rate >= secret_key_rate(GYS.with_length(length_km))


def test_vacuum_weak_cutoff_is_slightly_below_infinite_decoys(
        gys_infinite_cutoff_km: float) -> None:
    # Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005): vacuum + one weak decoy comes close to
    # the infinite-decoy distance; with nu = 0.1 the model loses about 2.4 km.
    vacuum_weak_km = max_distance_km(GYS, "vacuum-weak")
    assert gys_infinite_cutoff_km - 5.0 < vacuum_weak_km < gys_infinite_cutoff_km
    # A weaker decoy comes closer still.
    weaker = GYS.override({"decoy_intensity": 0.02})
    assert vacuum_weak_km < max_distance_km(weaker, "vacuum-weak") < gys_infinite_cutoff_km


def test_rate_at_the_cutoff_changes_sign() -> None:
    cutoff = max_distance_km(SNSPD, "infinite")
    assert optimise(SNSPD.with_length(cutoff - 0.5))[1] > 0.0
    assert optimise(SNSPD.with_length(cutoff + 0.5))[1] == 0.0


def test_finite_key_optimum_grows_with_the_block_towards_the_asymptote() -> None:
    link = SNSPD.with_length(50.0)
    # Reference: the asymptotic infinite-decoy rate with the optimal mu and the
    # efficient-BB84 limit q -> 1 (the supremum over basis bias), which no finite
    # block with any setting can reach.
    best_mu, _ = optimise(link)
    ceiling = secret_key_rate(best_mu) / sifting_factor(link.source.z_basis_probability)
    rates = []
    for pulses in (10**8, 10**10, 10**12):
        best, rate = optimise(link, block_pulses=pulses)
        assert rate == pytest.approx(finite_key_rate(best, pulses))
        assert rate >= finite_key_rate(link, pulses)
        rates.append(rate)
    assert 0.0 < rates[0] < rates[1] < rates[2] < ceiling
    # Converging: the second hundredfold step gains less than the first.
    assert rates[2] - rates[1] < rates[1] - rates[0]


def test_finite_key_reaches_less_far_than_the_asymptotic_key() -> None:
    asymptotic_km = max_distance_km(SNSPD, "vacuum-weak")
    finite_km = max_distance_km(SNSPD, block_pulses=10**10)
    assert 0.0 < finite_km < asymptotic_km


def test_a_link_without_key_at_zero_km_has_zero_reach() -> None:
    assert max_distance_km(GYS.override({"misalignment_error": 0.2})) == 0.0


def test_a_lossless_noiseless_fibre_has_unbounded_reach() -> None:
    ideal = SNSPD.override({"attenuation_db_per_km": 0.0, "dark_count_probability": 0.0})
    assert math.isinf(max_distance_km(ideal))


def test_settings_given_without_optimisation_reach_less_far() -> None:
    far = SNSPD.override({"signal_intensity": 1.5, "decoy_intensity": 0.15})
    assert (max_distance_km(far, optimise_settings=False)
            < max_distance_km(far, optimise_settings=True))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ParameterError, match="decoy"):
        optimise(GYS, decoy="many")
    with pytest.raises(ParameterError, match="block_pulses"):
        max_distance_km(GYS, block_pulses=0)


def test_a_cold_finite_key_optimisation_finds_key_wherever_the_sweep_did() -> None:
    # Far from the start settings the landscape is flat and negative; a single start
    # used to settle on "no key" at 130 km although the sweep reaches 142 km.
    pulses = 10**8
    reach_km = max_distance_km(SNSPD, block_pulses=pulses)
    for length_km in (reach_km - 10.0, reach_km - 2.0):
        assert optimise(SNSPD.with_length(length_km), block_pulses=pulses)[1] > 0.0
