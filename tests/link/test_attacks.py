"""Attack signatures, and the analytic attack tables against a naive pulse-by-pulse model.

Tolerances as in tests/link/test_simulator.py: exact binomial tests at the
5-sigma-equivalent tail (p-value >= 5.7e-7), and 5 pooled standard deviations when two
simulated proportions are compared. The naive reference below draws every pulse's
photon number, Eve's choices and every photon's fate, so it checks the photon-number
sums in :mod:`corridor.link.attacks` independently of the fast sampler.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from corridor.errors import ParameterError
from corridor.link import rates
from corridor.link.attacks import (
    ATTACK_NAMES,
    InterceptResend,
    PhotonNumberSplitting,
    make_attack,
)
from corridor.link.params import LinkParameters, preset
from corridor.link.patterns import honest_pattern_table
from corridor.link.records import DECOY, SIGNAL
from corridor.link.simulator import (
    SimulationSummary,
    class_statistics,
    pattern_table,
    simulate_stream,
    summarise,
)
from corridor.randomness import RandomSource
from tests.link.test_simulator import assert_binomial, assert_two_sample, memoryless


def _run(params: LinkParameters, pulses: int, seed: int, attack: object | None
         ) -> SimulationSummary:
    summary = SimulationSummary()
    for records in simulate_stream(params, pulses, RandomSource.seeded(seed),
                                   attack=attack):  # type: ignore[arg-type]
        summary.add(records)
    return summary


def _naive_patterns(params: LinkParameters, attack: str, pulses: int, seed: int,
                    fraction: float = 0.0) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pulse-by-pulse reference. Returns (pulses[c, match], counts[c, match, pattern])."""
    rng = np.random.default_rng(seed)
    src = params.source
    eta_ch = params.fibre.transmittance
    eta_bob = params.detector.efficiency
    e_d = params.protocol.misalignment_error
    dark = params.detector.dark_count_probability
    cls = rng.choice(3, size=pulses, p=src.class_probabilities)
    a_basis = (rng.random(pulses) >= src.z_basis_probability).astype(np.int64)
    b_basis = (rng.random(pulses) >= src.z_basis_probability).astype(np.int64)
    photons = rng.poisson(np.asarray(src.intensities)[cls])
    match = a_basis == b_basis
    r = np.where(match, 1.0 - e_d, 0.5)           # photon -> Alice's-bit detector
    reach = rng.binomial(photons, eta_ch)         # photons surviving the fibre
    if attack == "intercept-resend":
        hit = (rng.random(pulses) < fraction) & (photons > 0)
        eve_wrong = rng.random(pulses) < 0.5
        eve_bit_same = rng.random(pulses) < 0.5
        # Eve's state in the wrong basis: 50/50 if Bob is in Alice's basis, else it is
        # in Bob's basis with a random bit.
        r_eve = np.where(match, 0.5, np.where(eve_bit_same, 1.0 - e_d, e_d))
        r = np.where(hit & eve_wrong, r_eve, r)
    if attack == "pns":
        strategy = PhotonNumberSplitting().strategy(params)
        forward = np.where(photons >= 2, rng.random(pulses) < strategy[0],
                           np.where(photons == 1, rng.random(pulses) < strategy[1], False))
        reach = np.where(forward, np.where(photons >= 2, photons - 1, photons), 0)
    detected = rng.binomial(reach, eta_bob)
    at_alice = rng.binomial(detected, r)
    at_other = detected - at_alice
    click_a = (at_alice > 0) | (rng.random(pulses) < dark)
    click_b = (at_other > 0) | (rng.random(pulses) < dark)
    pattern = np.full(pulses, 3)
    pattern[click_a & ~click_b] = 0
    pattern[~click_a & click_b] = 1
    pattern[click_a & click_b] = 2
    key = (cls * 2 + match.astype(np.int64)) * 4 + pattern
    counts = np.bincount(key, minlength=24).reshape(3, 2, 4)
    return counts.sum(axis=-1), counts[..., :3]


def _table_by_match(params: LinkParameters, table: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(pattern | class, bases match?) from T[c, a, b, k]."""
    p_z = params.source.z_basis_probability
    w = np.array([p_z, 1 - p_z])
    out = np.empty((3, 2, 3))
    mismatch = (w[0] * w[1] * (table[:, 0, 1] + table[:, 1, 0])) / (2 * w[0] * w[1])
    match = (w[0] ** 2 * table[:, 0, 0] + w[1] ** 2 * table[:, 1, 1]) / (w[0] ** 2 + w[1] ** 2)
    out[:, 0], out[:, 1] = mismatch, match
    return out


@pytest.mark.parametrize(("attack", "length_km"), [
    ("none", 10.0), ("intercept-resend", 10.0), ("pns", 10.0), ("pns", 50.0)])
def test_attack_tables_match_a_naive_photon_by_photon_model(attack: str,
                                                             length_km: float) -> None:
    params = memoryless("modern-snspd").with_length(length_km).with_intensities(0.8, 0.3)
    fraction = 0.6
    model = make_attack(attack, fraction if attack == "intercept-resend" else None)
    expected = _table_by_match(params, pattern_table(params, model))
    totals, counts = _naive_patterns(params, attack, 2_000_000, seed=17, fraction=fraction)
    for c in (SIGNAL, DECOY):
        for m in range(2):
            for k in range(3):
                assert_binomial(int(counts[c, m, k]), int(totals[c, m]), float(expected[c, m, k]),
                                f"{attack} class {c} match {m} pattern {k}")


def test_intercept_resend_raises_qber_by_a_quarter_of_the_fraction() -> None:
    params = memoryless("modern-snspd").with_length(25.0)
    fraction = 0.4
    attack = InterceptResend(fraction)
    summary = _run(params, 20_000_000, 5, attack)
    model = class_statistics(params, attack)
    honest_qber = rates.error_rate(params, params.source.signal_intensity)
    # Model: rise f (1/4 - e_d / 2) up to dark counts and double clicks (below 1e-4 here).
    assert model.sifted_error_rate[SIGNAL] - honest_qber == pytest.approx(
        attack.expected_qber_rise(params), abs=1e-4)
    assert attack.expected_qber_rise(params) == pytest.approx(
        fraction / 4, abs=fraction * params.protocol.misalignment_error / 2 + 1e-12)
    assert_binomial(summary.errors_per_class[SIGNAL], summary.sifted_per_class[SIGNAL],
                    model.sifted_error_rate[SIGNAL], "intercept-resend QBER")
    # The gain is untouched: Eve resends as many photons as she took.
    assert_binomial(summary.detections_per_class[SIGNAL], summary.pulses_per_class[SIGNAL],
                    rates.gain(params, params.source.signal_intensity), "intercept-resend gain")


def test_intercept_resend_with_no_fraction_is_the_honest_link() -> None:
    params = preset("gys-2004").with_length(40.0)
    np.testing.assert_allclose(InterceptResend(0.0).pattern_table(params),
                               honest_pattern_table(params), rtol=1e-12, atol=0)


@pytest.mark.parametrize("length_km", [50.0, 100.0])
def test_pns_is_invisible_to_plain_bb84_but_collapses_the_decoy_bound(length_km: float) -> None:
    params = memoryless("modern-snspd").with_length(length_km)
    attack = PhotonNumberSplitting()
    assert attack.describe(params)["signal_gain_matched"] is True
    pulses = 100_000_000 if length_km > 60 else 20_000_000
    summary = _run(params, pulses, 13, attack)
    mu, nu = params.source.signal_intensity, params.source.decoy_intensity
    # Plain BB84 view (signal gain and QBER) agrees with the honest closed form.
    assert_binomial(summary.detections_per_class[SIGNAL], summary.pulses_per_class[SIGNAL],
                    rates.gain(params, mu), "PNS signal gain")
    assert_binomial(summary.errors_per_class[SIGNAL], summary.sifted_per_class[SIGNAL],
                    rates.error_rate(params, mu), "PNS signal QBER")
    # The decoy class loses most of its clicks: far beyond 5 sigma below honest.
    honest_decoy = rates.gain(params, nu)
    n_decoy = summary.pulses_per_class[DECOY]
    sigma = math.sqrt(honest_decoy * (1 - honest_decoy) / n_decoy)
    observed_decoy = summary.detections_per_class[DECOY] / n_decoy
    assert observed_decoy < honest_decoy - 5 * sigma
    report = summarise(summary, params, attack=attack)
    decoy = report["decoy_estimates"]
    assert decoy["single_photon_yield_lower"] == 0.0
    assert decoy["secret_key_rate_bits_per_pulse"] == 0.0
    assert "collapsed" in decoy["verdict"]
    assert report["attack"]["name"] == "pns"


def test_honest_run_keeps_the_decoy_bound() -> None:
    params = memoryless("modern-snspd").with_length(50.0)
    report = summarise(simulate_stream(params, 20_000_000, RandomSource.seeded(13)), params)
    decoy = report["decoy_estimates"]
    assert decoy["single_photon_yield_lower"] > 0.5 * decoy["honest_single_photon_yield"]
    assert "honest" in decoy["verdict"]


def test_pns_gain_match_is_two_sample_consistent_with_honest_run() -> None:
    params = preset("gys-2004").with_length(60.0)
    attacked = _run(params, 40_000_000, 2, PhotonNumberSplitting())
    honest = _run(params, 40_000_000, 3, None)
    assert_two_sample(attacked.detections_per_class[SIGNAL], attacked.pulses_per_class[SIGNAL],
                      honest.detections_per_class[SIGNAL], honest.pulses_per_class[SIGNAL],
                      "signal gain, PNS against honest")


def test_pns_cannot_hide_at_zero_distance() -> None:
    params = memoryless("modern-snspd").with_length(0.0)
    description = PhotonNumberSplitting().describe(params)
    assert description["signal_gain_matched"] is False
    short = PhotonNumberSplitting().describe(memoryless("modern-snspd").with_length(10.0))
    assert short["multi_photon_forwarding_probability"] == 1.0
    assert 0.0 < short["single_photon_forwarding_probability"] < 1.0


def test_vacuum_pulses_are_untouched_by_attacks() -> None:
    params = memoryless("modern-snspd").with_length(30.0)
    honest = honest_pattern_table(params)
    for attack in (InterceptResend(1.0), PhotonNumberSplitting()):
        # Floating-point agreement: the two formulas round differently (1e-23 here).
        np.testing.assert_allclose(attack.pattern_table(params)[2], honest[2],
                                   rtol=1e-9, atol=1e-20)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan, math.inf, True, "half"])
def test_intercept_resend_fraction_is_validated(fraction: object) -> None:
    with pytest.raises(ParameterError, match="attack_fraction"):
        InterceptResend(fraction)  # type: ignore[arg-type]


def test_make_attack_names() -> None:
    assert make_attack("none") is None
    assert isinstance(make_attack("intercept-resend"), InterceptResend)
    assert make_attack("intercept-resend").fraction == 1.0  # type: ignore[union-attr]
    assert isinstance(make_attack("pns"), PhotonNumberSplitting)
    assert ATTACK_NAMES == ("none", "intercept-resend", "pns")
    with pytest.raises(ParameterError, match="attack"):
        make_attack("blinding")
    assert repr(InterceptResend(0.25)) == "InterceptResend(fraction=0.25)"


@settings(max_examples=40, deadline=None)
@given(length_km=st.floats(0.0, 250.0), signal=st.floats(0.1, 1.0),
       efficiency=st.floats(0.05, 1.0), fraction=st.floats(0.0, 1.0))
def test_attack_tables_are_laws_and_pns_matches_the_signal_gain(
        length_km: float, signal: float, efficiency: float, fraction: float) -> None:
    params = memoryless("modern-snspd").override({
        "length_km": length_km, "signal_intensity": signal, "decoy_intensity": signal / 3,
        "efficiency": efficiency})
    honest = class_statistics(params)
    for attack in (InterceptResend(fraction), PhotonNumberSplitting()):
        table = attack.pattern_table(params)
        assert table.shape == (3, 2, 2, 3)
        assert np.all(table >= 0) and np.all(table.sum(axis=-1) <= 1 + 1e-12)
    pns = PhotonNumberSplitting()
    attacked = class_statistics(params, pns)
    if pns.describe(params)["signal_gain_matched"]:
        assert attacked.click_probability[SIGNAL] == pytest.approx(
            honest.click_probability[SIGNAL], rel=1e-9)
    else:
        assert attacked.click_probability[SIGNAL] < honest.click_probability[SIGNAL] * (
            1 - 1e-12)
    # Intercept-resend never changes a gain.
    resend = class_statistics(params, InterceptResend(fraction))
    np.testing.assert_allclose(resend.click_probability, honest.click_probability, rtol=1e-9)
