"""Eavesdropping attacks on the simulated link, as exact changes to Bob's click law.

An attack never touches pulses one by one. It replaces the simulator's pattern table
T[c, a, b, k] (probability of detector pattern k given intensity class c, Alice basis
a and Bob basis b; see :mod:`corridor.link.simulator`) by the table that holds when
Eve acts, computed analytically from photon-number yields. The simulator then still
draws only click positions and the details of clicked pulses.

Two attacks are provided (PHYSICS.md, "Attacks worth simulating"):

* :class:`InterceptResend`: on a fraction f of pulses Eve measures one photon in a
  random basis and resends the same number of photons prepared in the state she
  found (an idealised, loss-free intercept-resend that keeps the gain unchanged).
  Half the time she picks the wrong basis, and then a sifted photon hits the wrong
  detector with probability 1/2, so the QBER of sifted bits rises by
  f (1/4 - e_d / 2), about f/4.
* :class:`PhotonNumberSplitting`: Eve measures the photon number non-destructively
  at Alice's output, blocks single-photon pulses, keeps one photon of every
  multi-photon pulse and forwards the rest over a lossless line to Bob with a
  forwarding probability chosen so that the signal gain equals the honest one
  (Brassard, Lütkenhaus, Mor, Sanders, PRL 85, 1330 (2000); Hwang, PRL 91, 057901
  (2003) for why decoys expose it). The signal gain and QBER look normal; the decoy
  gain drops and the vacuum + weak decoy lower bound on the single-photon yield
  collapses to 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln

from corridor.errors import ParameterError
from corridor.link.params import LinkParameters
from corridor.link.patterns import (
    alice_bit_fraction,
    fixed_photon_patterns,
    honest_pattern_table,
    poisson_patterns,
)

ATTACK_NAMES = ("none", "intercept-resend", "pns")


class Attack(ABC):
    """An eavesdropper, described by the click law it imposes on Bob's detectors."""

    name: str = "attack"

    @abstractmethod
    def pattern_table(self, params: LinkParameters) -> NDArray[np.float64]:
        """T[c, a, b, k]: P(pattern k | class c, Alice basis a, Bob basis b) under attack.

        Patterns k: 0 only the detector of Alice's bit clicks, 1 only the other one,
        2 both. Shape (3, 2, 2, 3).
        """

    @abstractmethod
    def describe(self, params: LinkParameters) -> dict[str, Any]:
        """Public description of the attack on this link (for reports and metadata)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class InterceptResend(Attack):
    """Intercept-resend on a fraction of the pulses, in a uniformly random basis.

    Eve sits at Alice's output. On each attacked pulse that is not empty she measures
    one photon in a random basis (she learns Alice's bit when the bases agree and a
    random bit otherwise) and sends on the same number of photons prepared in the
    state she obtained, so Bob's gain is unchanged and only the errors show her.
    """

    name = "intercept-resend"

    def __init__(self, fraction: float) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
            raise ParameterError("attack_fraction", fraction,
                                 "must be a number in [0, 1] (the fraction of pulses attacked)")
        self.fraction = float(fraction)

    def pattern_table(self, params: LinkParameters) -> NDArray[np.float64]:
        """Mixture of the honest law and the law after a wrong-basis measurement."""
        eta = params.transmittance
        dark = params.detector.dark_count_probability
        honest = honest_pattern_table(params)
        table = np.empty_like(honest)
        e_d = params.protocol.misalignment_error
        for c, intensity in enumerate(params.source.intensities):
            mean = eta * intensity
            for a in range(2):
                for b in range(2):
                    if a == b:
                        # Eve's state is in the other basis: 50/50 at Bob's detectors.
                        wrong_basis = poisson_patterns(mean, 0.5, dark)
                    else:
                        # Eve's state is in Bob's basis with a random bit.
                        wrong_basis = 0.5 * (poisson_patterns(mean, 1.0 - e_d, dark)
                                             + poisson_patterns(mean, e_d, dark))
                    table[c, a, b] = ((1.0 - self.fraction / 2.0) * honest[c, a, b]
                                      + self.fraction / 2.0 * wrong_basis)
        return table

    def expected_qber_rise(self, params: LinkParameters) -> float:
        """First-order rise of the sifted QBER: f (1/4 - e_d / 2)."""
        return self.fraction * (0.25 - params.protocol.misalignment_error / 2.0)

    def describe(self, params: LinkParameters) -> dict[str, Any]:
        """Name, fraction attacked and the expected first-order QBER rise."""
        return {"name": self.name, "fraction": self.fraction,
                "expected_qber_rise": self.expected_qber_rise(params)}

    def __repr__(self) -> str:
        return f"InterceptResend(fraction={self.fraction!r})"


def _photon_number_pmf(intensity: float) -> NDArray[np.float64]:
    """Poisson photon-number distribution, truncated where the tail is below 1e-17."""
    cutoff = int(intensity + 12.0 * math.sqrt(intensity) + 40.0)
    n = np.arange(cutoff + 1, dtype=np.float64)
    # exp(n ln(mu) - mu - ln n!), with 0^0 = 1 so that intensity 0 gives the vacuum.
    log_mu = math.log(intensity) if intensity > 0 else -math.inf
    n_log_mu = np.zeros_like(n)
    np.multiply(n, log_mu, out=n_log_mu, where=n > 0)
    log_pmf = n_log_mu - intensity - gammaln(n + 1.0)
    return np.exp(log_pmf)


class PhotonNumberSplitting(Attack):
    """Photon-number splitting with loss replacement (lossless line to Bob).

    Eve blocks every single-photon pulse, keeps one photon of each multi-photon pulse
    and forwards the other n - 1 photons, undisturbed, straight to Bob's receiver with
    probability ``phi``, chosen so that the signal class clicks exactly as often as on
    the honest fibre. Where even forwarding every multi-photon pulse falls short (short
    links), she lets a fraction of single-photon pulses through as well; where it
    cannot match at all, she forwards everything and ``signal_gain_matched`` is False.
    """

    name = "pns"

    def strategy(self, params: LinkParameters) -> tuple[float, float, bool]:
        """Eve's forwarding choice on this link.

        Returns (probability of forwarding a multi-photon pulse, probability of letting a
        single-photon pulse through, whether the honest signal gain is matched). With
        H = 1 - exp(-eta mu) the honest excess click probability of the signal class,
        S = sum_{n >= 2} P_mu(n) (1 - (1 - eta_bob)^(n - 1)) and P1 = P_mu(1) eta_bob,
        the multi-photon probability is H / S when S >= H; otherwise every multi-photon
        pulse goes through and a fraction (H - S) / P1 of single photons too.
        """
        eta_bob = params.detector.efficiency
        mu = params.source.signal_intensity
        honest_excess = -math.expm1(-params.transmittance * mu)
        pmf = _photon_number_pmf(mu)
        n = np.arange(pmf.shape[0])
        # Excess click probability (over dark counts) from the n - 1 forwarded photons.
        multi = float(np.sum(pmf[2:] * -np.expm1((n[2:] - 1) * math.log1p(-eta_bob)))) \
            if eta_bob < 1.0 else float(pmf[2:].sum())
        single = float(pmf[1]) * eta_bob
        if multi >= honest_excess:
            return honest_excess / multi, 0.0, True
        # Tolerance: with a perfect receiver at 0 km forwarding everything is exactly
        # the honest gain, and rounding must not call that a mismatch.
        if multi + single >= honest_excess * (1.0 - 1e-12):
            return 1.0, min((honest_excess - multi) / single, 1.0), True
        return 1.0, 1.0, False

    def pattern_table(self, params: LinkParameters) -> NDArray[np.float64]:
        """Average over photon number of the patterns Eve's forwarding produces."""
        forward_multi, forward_single, _ = self.strategy(params)
        dark = params.detector.dark_count_probability
        eta_bob = params.detector.efficiency
        table = np.empty((3, 2, 2, 3))
        for c, intensity in enumerate(params.source.intensities):
            pmf = _photon_number_pmf(intensity)
            photons = np.arange(pmf.shape[0])
            forward = np.where(photons >= 2, forward_multi,
                               np.where(photons == 1, forward_single, 0.0))
            # Photons Bob receives when Eve forwards: n - 1 of a multi-photon pulse,
            # the single photon itself when she lets one through.
            received = np.where(photons >= 2, photons - 1, photons)
            for a in range(2):
                for b in range(2):
                    r = alice_bit_fraction(params, a, b)
                    sent = fixed_photon_patterns(received, eta_bob, r, dark)
                    nothing = fixed_photon_patterns(np.zeros(1, dtype=np.int64), eta_bob,
                                                    r, dark)[0]
                    mixed = (forward[:, None] * sent
                             + (1.0 - forward[:, None]) * nothing[None, :])
                    table[c, a, b] = (pmf[:, None] * mixed).sum(axis=0)
        return table

    def describe(self, params: LinkParameters) -> dict[str, Any]:
        """Name and Eve's forwarding probabilities on this link."""
        forward_multi, forward_single, matched = self.strategy(params)
        return {"name": self.name,
                "multi_photon_forwarding_probability": forward_multi,
                "single_photon_forwarding_probability": forward_single,
                "signal_gain_matched": matched}


def make_attack(name: str, fraction: float | None = None) -> Attack | None:
    """The attack called ``name`` (one of :data:`ATTACK_NAMES`); ``none`` gives None.

    ``fraction`` is the attacked fraction for intercept-resend (default 1).
    """
    if name == "none":
        return None
    if name == "intercept-resend":
        return InterceptResend(1.0 if fraction is None else fraction)
    if name == "pns":
        return PhotonNumberSplitting()
    raise ParameterError("attack", name, "must be one of " + ", ".join(ATTACK_NAMES))
