"""Published figures the finite-key and decoy-state models must reproduce.

Sources, each number's origin next to it:

- Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Sec. IV and Fig. 1 (dedicated
  fibre). Set-up: preset ``lim-2014``; block size n_X (our n_Z) fixed, mu1, mu2, q_x,
  p_mu1, p_mu2 optimised per point, eps_sec = kappa * l with kappa = 1e-15
  (:func:`corridor.link.optimize.optimise_key_block`). The text states two numbers:
  keys reach "a fiber length of up to 135 km" with n_X = 1e4, and at 100 km the rate
  with n_X = 1e9 is "about 1.75 times" the one with n_X = 1e7.
- Curve values of Fig. 1 at n_X = 1e7 and 1e9: a third party's digitisation of the
  figure (found through the search index in an open-source project's documentation;
  its repository could not be identified). Secondary and approximate, so the
  tolerance is wider and only the large blocks are used, where finite-size terms
  are small (docs/finite-key.md lists what the small blocks give).
- Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), GYS parameters: the infinite-decoy key
  rate vanishes at 142.05 km (as quoted, with the paper's arXiv version named, in
  another project's validation notes; the paper's text was not reachable here), and
  the paper's claim that vacuum + weak decoy approaches the infinite-decoy rate as
  the weak decoy's intensity goes to 0.
"""

from __future__ import annotations

import pytest

from corridor.link.optimize import max_distance_km, optimise_key_block
from corridor.link.params import preset
from corridor.link.rates import secret_key_rate

LIM = preset("lim-2014")
#: Lim et al.'s kappa: eps_sec = kappa * l.
KAPPA = 1e-15


def _fig1_rate(n_x: int, length_km: float, bound: str) -> float:
    _, rate = optimise_key_block(LIM.with_length(length_km), n_x, bound, KAPPA)
    return rate


def test_the_preset_carries_the_published_set_up() -> None:
    assert LIM.detector.efficiency == 0.1
    assert LIM.detector.dark_count_probability == 6e-7
    assert LIM.detector.afterpulse_probability == 0.04
    assert LIM.protocol.misalignment_error == 0.005
    assert LIM.protocol.reconciliation_efficiency == 1.16
    assert LIM.protocol.eps_cor == 1e-15
    assert LIM.source.vacuum_intensity == 2e-4
    assert LIM.fibre.attenuation_db_per_km == 0.2


@pytest.mark.parametrize("bound", ["lim2014", "tightened"])
def test_lim2014_small_blocks_reach_135_km(bound: str) -> None:
    # "up to 135 km" with n_X = 1e4, a figure read off their curve; tolerance +-5 %
    # (+-6.75 km). Measured: 130.2 km (a key of at least one bit) with either bound:
    # near the cut-off the cap v_X1 <= m_X does not bind, so this check cannot tell
    # the bounds apart. The rate itself is below the published curve at n_X = 1e4
    # (docs/finite-key.md), which is why the reach falls short by 3.6 %.
    assert _fig1_rate(10**4, 135.0 * 0.95, bound) > 0.0
    assert _fig1_rate(10**4, 135.0 * 1.05, bound) <= 0.0


def _ratio_at_100_km(bound: str) -> float:
    return _fig1_rate(10**9, 100.0, bound) / _fig1_rate(10**7, 100.0, bound)


def test_lim2014_block_size_gain_at_100_km_is_the_published_one() -> None:
    # "about 1.75 times": tolerance +-0.05 (the two digits printed). Measured 1.791.
    assert _ratio_at_100_km("lim2014") == pytest.approx(1.75, abs=0.05)


def test_the_tightened_bound_does_not_reproduce_the_published_gain() -> None:
    # The same tolerance fails the tightened bound (measured 1.660): it gains more at
    # n_X = 1e7 than the published curves, so the check above can tell them apart.
    assert _ratio_at_100_km("tightened") != pytest.approx(1.75, abs=0.05)


#: (n_X, length_km, bits per pulse) digitised from Fig. 1 (secondary, see docstring).
DIGITISED_FIG1 = [
    (10**7, 0.0, 5.19e-3), (10**7, 50.0, 4.99e-4), (10**7, 100.0, 4.64e-5),
    (10**9, 0.0, 8.85e-3), (10**9, 50.0, 8.54e-4), (10**9, 100.0, 8.17e-5),
]
#: Relative tolerance against the digitised curves. Measured lim2014: +2.7 % to +4.5 %.
DIGITISED_TOLERANCE = 0.06


@pytest.mark.parametrize(("n_x", "length_km", "published"), DIGITISED_FIG1)
def test_lim2014_matches_the_digitised_fig1_curves(n_x: int, length_km: float,
                                                   published: float) -> None:
    assert _fig1_rate(n_x, length_km, "lim2014") == pytest.approx(
        published, rel=DIGITISED_TOLERANCE)


@pytest.mark.parametrize(("n_x", "length_km", "published"),
                         [row for row in DIGITISED_FIG1 if row[0] == 10**7])
def test_the_tightened_bound_falls_outside_the_fig1_tolerance(n_x: int, length_km: float,
                                                              published: float) -> None:
    # Measured +12 % to +16 % at n_X = 1e7 (at 1e9 the two bounds differ by 1-4 %,
    # inside the digitisation's accuracy, so those points cannot tell them apart).
    assert _fig1_rate(n_x, length_km, "tightened") > published * (1 + DIGITISED_TOLERANCE)


def test_afterpulses_enter_as_in_lim_et_al() -> None:
    # Without the 4 % afterpulses (2 % more QBER, 4 % more clicks) the same set-up
    # gives clearly more key: the detection model is not a no-op.
    without = LIM.override({"afterpulse_probability": 0.0})
    with_ap = optimise_key_block(LIM.with_length(50.0), 10**7, "lim2014", KAPPA)[1]
    no_ap = optimise_key_block(without.with_length(50.0), 10**7, "lim2014", KAPPA)[1]
    assert no_ap > 1.1 * with_ap


GYS = preset("gys-2004")


def test_mqzl_gys_infinite_decoy_cut_off() -> None:
    # 142.05 km (Ma et al. 2005, GYS, infinite decoys); tolerance +-0.5 km. The preset
    # gives 142.21 km (f = 1.22 flat; the paper's f may depend on the QBER).
    assert max_distance_km(GYS, "infinite") == pytest.approx(142.05, abs=0.5)


@pytest.mark.parametrize("length_km", [0.0, 50.0, 100.0, 130.0])
def test_mqzl_vacuum_weak_decoy_approaches_infinite_decoys(length_km: float) -> None:
    # Ma et al.'s result: vacuum + one weak decoy asymptotically reaches the
    # infinite-decoy rate as the decoy's intensity nu -> 0. At the GYS signal
    # intensity mu = 0.48: within 3 % at nu = 0.01 up to 130 km (measured 1.1 % at 0 km,
    # 2.8 % at 130 km, where the rate is near its cut-off), and below it at nu = 0.1.
    at = GYS.with_length(length_km)
    infinite = secret_key_rate(at, "infinite")
    weak = secret_key_rate(at.with_intensities(0.48, 0.01), "vacuum-weak")
    coarse = secret_key_rate(at.with_intensities(0.48, 0.1), "vacuum-weak")
    assert infinite > 0.0
    assert weak == pytest.approx(infinite, rel=0.03)
    assert coarse < weak <= infinite
