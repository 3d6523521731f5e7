"""One-decoy finite key (Rusca et al., APL 112, 171104 (2018)) and the published
set-ups that use it (Boaron et al. 2018, Grünenfelder et al. 2023)."""

from __future__ import annotations

import itertools
import math

import pytest

from corridor.errors import ParameterError
from corridor.link.finite_key_one_decoy import (
    OneDecoyCounts,
    expected_one_decoy_counts,
    one_decoy_bounds,
    one_decoy_finite_key_rate,
    one_decoy_key_length,
)
from corridor.link.params import LinkParameters, preset
from corridor.link.rates import availability, secret_key_rate

BOARON = preset("boaron-2018")
RECORD = preset("grunenfelder-2023")
#: Boaron's long runs: 1e14 pulses is 11.1 h at 2.5 GHz (an assumption: the paper's
#: block sizes were not at hand).
BOARON_BLOCK = 10**14
#: Published rates and the tolerance we hold our closed form to. Several device
#: parameters of both presets are assumptions (params.py says which), so 30 % is an
#: honest band for a model of the set-up, not a fit to it.
TOLERANCE = 0.30


def _true_counts(params: LinkParameters, pulses: int) -> dict[str, float]:
    """Expected n-photon contributions of the closed form (Y_n = Y0 + 1 - (1 - eta)^n,
    every yield times the receiver's availability)."""
    src = params.source
    mus = (src.signal_intensity, src.decoy_intensity)
    ps = (src.signal_probability, src.decoy_probability)
    tau = [sum(p * math.exp(-mu) * mu ** n / math.factorial(n)
               for mu, p in zip(mus, ps, strict=True)) for n in (0, 1)]
    eta, y0, a = params.transmittance, params.background_yield, availability(params)
    p_z = src.z_basis_probability
    y1 = y0 + eta - y0 * eta
    return {"s0_z": pulses * p_z ** 2 * tau[0] * y0 * a,
            "s1_z": pulses * p_z ** 2 * tau[1] * y1 * a,
            "s1_x": pulses * (1 - p_z) ** 2 * tau[1] * y1 * a,
            "v1_x": pulses * (1 - p_z) ** 2 * tau[1] * a
            * (0.5 * y0 + params.protocol.misalignment_error * eta),
            "e1": (0.5 * y0 + params.protocol.misalignment_error * eta) / y1}


@pytest.mark.parametrize(("params", "pulses"), [
    (BOARON.with_length(200.0), 10**12), (BOARON.with_length(405.0), 10**14),
    (RECORD, 10**9), (RECORD, 10**11), (RECORD.with_length(60.0), 10**10)])
def test_bounds_hold_against_the_true_photon_number_statistics(params: LinkParameters,
                                                               pulses: int) -> None:
    counts = expected_one_decoy_counts(params, pulses)
    src = params.source
    mus = (src.signal_intensity, src.decoy_intensity)
    ps = (src.signal_probability, src.decoy_probability)
    bounds = one_decoy_bounds(counts, mus, ps, params.protocol.eps_sec)
    true = _true_counts(params, pulses)
    assert bounds.vacuum_lower <= true["s0_z"] <= bounds.vacuum_upper
    assert 0.0 < bounds.single_photon_lower <= true["s1_z"]
    assert 0.0 < bounds.test_single_photon_lower <= true["s1_x"]
    assert bounds.test_single_photon_errors_upper >= true["v1_x"]
    assert true["e1"] <= bounds.phase_error_upper <= 0.5


def test_key_grows_with_the_block_and_stays_below_the_asymptotic_rate() -> None:
    link = RECORD.with_length(50.0)
    blocks = [10**8, 10**9, 10**10, 10**11, 10**12]
    rates = [one_decoy_finite_key_rate(link, n) for n in blocks]
    assert rates[0] >= 0.0
    assert all(a < b for a, b in itertools.pairwise(rates))
    assert rates[-1] < secret_key_rate(link, "infinite")


def test_too_small_a_block_has_no_key() -> None:
    assert one_decoy_finite_key_rate(BOARON, 10**10) == 0.0


def test_boaron_2018_at_405_km_gives_its_published_rate() -> None:
    """Boaron et al., PRL 121, 190502 (2018): 6.5 bit/s at 405 km (one-decoy finite
    key, 2.5 GHz). Ours: 5.7 bit/s for blocks of 1e14 pulses (11 h)."""
    rate = one_decoy_finite_key_rate(BOARON, BOARON_BLOCK) * BOARON.source.pulse_rate_hz
    assert rate == pytest.approx(6.5, rel=TOLERANCE)
    # 421 km, the published maximum distance, is the finite-key edge: 16 km further the
    # rate is a small fraction of the 405 km one (0 here, with 11 h blocks).
    far = one_decoy_finite_key_rate(BOARON.with_length(421.0), BOARON_BLOCK)
    assert far * BOARON.source.pulse_rate_hz < 0.25 * rate


def test_grunenfelder_2023_at_10_km_gives_its_published_rate() -> None:
    """Grünenfelder et al., Nat. Photon. 17, 422 (2023): 64 Mbit/s at 10.0 km with
    14-pixel SNSPDs. Ours: 68 Mbit/s for blocks of 1e10 pulses (4 s)."""
    rate = one_decoy_finite_key_rate(RECORD, 10**10) * RECORD.source.pulse_rate_hz
    assert rate == pytest.approx(64e6, rel=TOLERANCE)
    # Without the dead time the same closed form would promise far more: saturation is
    # what brings it down to the record.
    free = RECORD.override({"dead_time_s": 0.0})
    assert one_decoy_finite_key_rate(free, 10**10) * 2.5e9 > 1.1 * rate


def test_bad_settings_are_named() -> None:
    with pytest.raises(ParameterError, match="vacuum_probability"):
        one_decoy_finite_key_rate(preset("modern-snspd"), 10**10)
    counts = OneDecoyCounts((100, 50), (1, 1), (10, 5), (1, 0))
    with pytest.raises(ParameterError, match="intensities"):
        one_decoy_bounds(counts, (0.1, 0.5), (0.5, 0.5), 1e-9)
    with pytest.raises(ParameterError, match="class probabilities"):
        one_decoy_bounds(counts, (0.5, 0.1), (0.7, 0.7), 1e-9)
    with pytest.raises(ParameterError, match="key_basis_errors"):
        OneDecoyCounts((1, 1), (2, 0), (1, 1), (0, 0))
    with pytest.raises(ParameterError, match="error_correction_bits"):
        one_decoy_key_length(counts, (0.5, 0.1), (0.5, 0.5), 1e-9, 1e-15, -1.0)
    with pytest.raises(ParameterError, match="pulses"):
        expected_one_decoy_counts(BOARON, 0)
