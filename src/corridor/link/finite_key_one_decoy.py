"""Finite-key bound of the one-decoy protocol (signal + one decoy, no vacuum).

This module owns the key length of Rusca, Boaron, Grünenfelder, Martin, Zbinden,
"Finite-key analysis for the 1-decoy state QKD protocol", Appl. Phys. Lett. 112,
171104 (2018) (arXiv:1801.03443), the bound behind the 421 km experiment of Boaron et
al., PRL 121, 190502 (2018). Two intensities mu1 > mu2 sent with probabilities p1,
p2 (p1 + p2 = 1); Z is the key basis, X the test basis; counts are sifted detections
n and errors m per basis and intensity. Equation numbers are those of the paper's
appendix A.

- Hoeffding corrections (A2, A4, A18 with the e^k / p_k factor of Lim et al. 2014):
  ``n^±_k = e^k / p_k (n_k ± delta(n, eps))``, ``delta(n, eps) = sqrt(n ln(1/eps) / 2)``,
  every failure probability eps_1 = eps_2 = eps_sec / 19 (A24).
- tau_n = sum_k p_k e^-k k^n / n!: probability that Alice sends n photons (A5).
- Vacuum detections, upper bound from the decoy's errors (A16, route 2 of the paper):
  ``s0^u = 2 (tau_0 e^mu2 / p2 (m_mu2 + delta(m, eps)) + delta(n, eps))``.
- Vacuum detections, lower bound (A19): ``s0^l = tau_0 / (mu1 - mu2) (mu1 n^-_mu2 - mu2 n^+_mu1)``.
- Single-photon detections (A17):
  ``s1^l = tau_1 mu1 / (mu2 (mu1 - mu2)) (n^-_mu2 - mu2^2/mu1^2 n^+_mu1
  - (mu1^2 - mu2^2)/mu1^2 s0^u / tau_0)``.
- Single-photon errors in the test basis (A22): ``v1^u = tau_1 / (mu1 - mu2) (m^+_mu1 - m^-_mu2)``.
- Phase error (A20, A21, A23): ``phi^u = v1^u / s1^l_X + gamma(eps_sec, v1^u / s1^l_X,
  s1^l_Z, s1^l_X)``, gamma as in Lim et al. 2014.
- Key length (A25): ``l = floor(s0^l_Z + s1^l_Z (1 - H2(phi^u)) - lambda_EC
  - 6 log2(19 / eps_sec) - log2(2 / eps_cor))``, never negative.

The expected counts of a link come from the closed form with detector saturation
(:func:`corridor.link.rates.saturated_gains_and_errors`), as in the paper's own
appendix B (its c_dt = 1 / (1 + R P_det t_DT) is our availability A).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corridor.errors import ParameterError
from corridor.link import rates
from corridor.link.params import LinkParameters
from corridor.link.rates import binary_entropy

#: eps_sec = 19 eps when every failure probability of the proof is eps (A24).
EPS_SPLIT = 19.0
#: gamma's own failure term, as printed in A21 (Lim et al. 2014's 21^2 / eps_sec^2).
_GAMMA_SPLIT = 21.0

Pair = tuple[float, float]


@dataclass(frozen=True)
class OneDecoyCounts:
    """Sifted detections and errors per intensity (signal mu1, decoy mu2) and basis.

    Attributes:
        key_basis_detections: n_{Z,mu1}, n_{Z,mu2}.
        key_basis_errors: m_{Z,mu1}, m_{Z,mu2}.
        test_basis_detections: n_{X,mu1}, n_{X,mu2}.
        test_basis_errors: m_{X,mu1}, m_{X,mu2}.
    """

    key_basis_detections: Pair
    key_basis_errors: Pair
    test_basis_detections: Pair
    test_basis_errors: Pair

    def __post_init__(self) -> None:
        for name in ("key_basis_detections", "key_basis_errors", "test_basis_detections",
                     "test_basis_errors"):
            values = getattr(self, name)
            if len(values) != 2 or any(isinstance(v, bool) or not math.isfinite(float(v))
                                       or v < 0 for v in values):
                raise ParameterError(name, values, "must be two counts >= 0 (mu1, mu2)")
        for n, m, basis in ((self.key_basis_detections, self.key_basis_errors, "key"),
                            (self.test_basis_detections, self.test_basis_errors, "test")):
            if any(e > d for d, e in zip(n, m, strict=True)):
                raise ParameterError(f"{basis}_basis_errors", m,
                                     f"must not exceed the detections {n}")

    @property
    def key_basis_qber(self) -> float:
        """E_Z = m_Z / n_Z over both intensities (1/2 with no detection)."""
        n = sum(self.key_basis_detections)
        return sum(self.key_basis_errors) / n if n else rates.BACKGROUND_ERROR_RATE


@dataclass(frozen=True)
class OneDecoyBounds:
    """What the one-decoy analysis certifies about a block (Rusca et al. 2018)."""

    vacuum_lower: float            # s^l_{Z,0} (A19)
    vacuum_upper: float            # s^u_{Z,0} (A16)
    single_photon_lower: float     # s^l_{Z,1} (A17)
    test_single_photon_lower: float  # s^l_{X,1}
    test_single_photon_errors_upper: float  # v^u_{X,1} (A22)
    phase_error_upper: float       # phi^u_Z (A23), in [0, 1/2]


def _delta(total: float, eps_sec: float) -> float:
    """Hoeffding deviation sqrt(n ln(1/eps) / 2) with eps = eps_sec / 19 (A2, A24)."""
    return math.sqrt(total / 2.0 * math.log(EPS_SPLIT / eps_sec))


def _tau(n: int, mus: Pair, ps: Pair) -> float:
    """tau_n: probability that Alice sends n photons (A5)."""
    return sum(p * math.exp(-mu) * mu ** n / math.factorial(n)
               for mu, p in zip(mus, ps, strict=True))


def _corrected(counts: Pair, mus: Pair, ps: Pair, eps_sec: float, sign: float
               ) -> tuple[float, float]:
    """e^k / p_k (x_k ± delta(sum x, eps)) per intensity (A18, Lim et al.'s form)."""
    d = _delta(sum(counts), eps_sec)
    return tuple(math.exp(mu) / p * (x + sign * d)  # type: ignore[return-value]
                 for x, mu, p in zip(counts, mus, ps, strict=True))


def _gamma(eps_sec: float, b: float, c: float, d: float) -> float:
    """gamma(a, b, c, d) of A21: the sampling correction of the phase error."""
    if c <= 0.0 or d <= 0.0 or b <= 0.0 or b >= 1.0:
        return 0.5
    argument = (c + d) / (c * d * (1.0 - b) * b) * _GAMMA_SPLIT ** 2 / eps_sec ** 2
    return math.sqrt((c + d) * (1.0 - b) * b / (c * d * math.log(2.0))
                     * math.log2(max(argument, 1.0)))


def _check_setting(mus: Pair, ps: Pair) -> None:
    mu1, mu2 = (float(x) for x in mus)
    if not (math.isfinite(mu1) and math.isfinite(mu2)) or not mu1 > mu2 > 0.0:
        raise ParameterError("intensities", mus, "one-decoy needs mu1 > mu2 > 0")
    if any(not 0.0 < p < 1.0 for p in ps) or abs(sum(ps) - 1.0) > 1e-9:
        raise ParameterError("class probabilities", ps,
                             "one-decoy needs p1, p2 in (0, 1) with p1 + p2 = 1")


def one_decoy_bounds(counts: OneDecoyCounts, mus: Pair, ps: Pair, eps_sec: float
                     ) -> OneDecoyBounds:
    """Vacuum, single-photon and phase-error bounds of a block (A16-A23)."""
    _check_setting(mus, ps)
    if not 0.0 < eps_sec < 1.0:
        raise ParameterError("eps_sec", eps_sec, "must be in (0, 1)")
    mu1, mu2 = mus
    tau0, tau1 = _tau(0, mus, ps), _tau(1, mus, ps)

    def vacuum_upper(n: Pair, m: Pair) -> float:
        errors = m[1] + _delta(sum(m), eps_sec)
        return 2.0 * (tau0 * math.exp(mu2) / ps[1] * errors + _delta(sum(n), eps_sec))

    def single_photon_lower(n: Pair, s0_upper: float) -> float:
        minus = _corrected(n, mus, ps, eps_sec, -1.0)
        plus = _corrected(n, mus, ps, eps_sec, +1.0)
        value = tau1 * mu1 / (mu2 * (mu1 - mu2)) * (
            minus[1] - mu2 ** 2 / mu1 ** 2 * plus[0]
            - (mu1 ** 2 - mu2 ** 2) / mu1 ** 2 * s0_upper / tau0)
        return max(value, 0.0)

    n_z, m_z = counts.key_basis_detections, counts.key_basis_errors
    n_x, m_x = counts.test_basis_detections, counts.test_basis_errors
    s0_upper_z = vacuum_upper(n_z, m_z)
    s0_upper_x = vacuum_upper(n_x, m_x)
    minus_z = _corrected(n_z, mus, ps, eps_sec, -1.0)
    plus_z = _corrected(n_z, mus, ps, eps_sec, +1.0)
    s0_lower = max(tau0 / (mu1 - mu2) * (mu1 * minus_z[1] - mu2 * plus_z[0]), 0.0)
    s1_z = single_photon_lower(n_z, s0_upper_z)
    s1_x = single_photon_lower(n_x, s0_upper_x)
    m_plus = _corrected(m_x, mus, ps, eps_sec, +1.0)
    m_minus = _corrected(m_x, mus, ps, eps_sec, -1.0)
    v1_x = max(tau1 / (mu1 - mu2) * (m_plus[0] - m_minus[1]), 0.0)
    if s1_z <= 0.0 or s1_x <= 0.0:
        phase = 0.5
    else:
        ratio = min(v1_x / s1_x, 0.5)
        phase = min(ratio + _gamma(eps_sec, ratio, s1_z, s1_x), 0.5)
    return OneDecoyBounds(vacuum_lower=s0_lower, vacuum_upper=s0_upper_z,
                          single_photon_lower=s1_z, test_single_photon_lower=s1_x,
                          test_single_photon_errors_upper=v1_x, phase_error_upper=phase)


def one_decoy_key_length(counts: OneDecoyCounts, mus: Pair, ps: Pair, eps_sec: float,
                         eps_cor: float, error_correction_bits: float) -> int:
    """Secret key length l of Eq. (A25), floored and never negative.

    ``error_correction_bits`` is lambda_EC, every bit disclosed by reconciliation and
    verification.
    """
    if not 0.0 < eps_cor < 1.0:
        raise ParameterError("eps_cor", eps_cor, "must be in (0, 1)")
    if not math.isfinite(error_correction_bits) or error_correction_bits < 0:
        raise ParameterError("error_correction_bits", error_correction_bits,
                             "must be a number of bits >= 0")
    return max(0, math.floor(_length_real(counts, mus, ps, eps_sec, eps_cor,
                                          error_correction_bits)))


def _length_real(counts: OneDecoyCounts, mus: Pair, ps: Pair, eps_sec: float,
                 eps_cor: float, error_correction_bits: float) -> float:
    bounds = one_decoy_bounds(counts, mus, ps, eps_sec)
    return (bounds.vacuum_lower
            + bounds.single_photon_lower * (1.0 - binary_entropy(bounds.phase_error_upper))
            - error_correction_bits
            - 6.0 * math.log2(EPS_SPLIT / eps_sec) - math.log2(2.0 / eps_cor))


def _one_decoy_setting(params: LinkParameters) -> tuple[Pair, Pair]:
    src = params.source
    if src.vacuum_probability != 0.0:
        raise ParameterError(
            "vacuum_probability", src.vacuum_probability,
            "must be 0 for the one-decoy protocol (signal and one decoy only)",
            "the boaron-2018 preset is set up for it")
    mus = (src.signal_intensity, src.decoy_intensity)
    ps = (src.signal_probability, src.decoy_probability)
    _check_setting(mus, ps)
    return mus, ps


def expected_one_decoy_counts(params: LinkParameters, pulses: int) -> OneDecoyCounts:
    """Expected counts of a block of ``pulses`` pulses (not rounded).

    n_{Z,k} = N p_k p_Z^2 Q_k, m_{Z,k} = E_k n_{Z,k} (X with (1 - p_Z)^2), Q_k and E_k
    the closed-form gain and error rate with the receiver's dead time and pixels.
    """
    if isinstance(pulses, bool) or not isinstance(pulses, int) or pulses <= 0:
        raise ParameterError("pulses", pulses, "must be a whole number of pulses above 0")
    mus, ps = _one_decoy_setting(params)
    gains, errors = rates.saturated_gains_and_errors(
        params.transmittance, params.background_yield, params.protocol.misalignment_error,
        mus, ps, rates.dead_gates(params), params.detector.detector_pixels)
    p_z = params.source.z_basis_probability
    n_z = tuple(pulses * p * p_z ** 2 * q for p, q in zip(ps, gains, strict=True))
    n_x = tuple(pulses * p * (1.0 - p_z) ** 2 * q for p, q in zip(ps, gains, strict=True))
    return OneDecoyCounts(
        key_basis_detections=(n_z[0], n_z[1]),
        key_basis_errors=(n_z[0] * errors[0], n_z[1] * errors[1]),
        test_basis_detections=(n_x[0], n_x[1]),
        test_basis_errors=(n_x[0] * errors[0], n_x[1] * errors[1]))


def one_decoy_finite_key_rate(params: LinkParameters, pulses: int) -> float:
    """Expected one-decoy finite-key rate in bits per pulse for blocks of ``pulses``.

    lambda_EC = f n_Z H2(E_Z) with f = ``reconciliation_efficiency``; eps_sec and
    eps_cor from ``params.protocol``. The length is floored and never negative.
    """
    counts = expected_one_decoy_counts(params, pulses)
    mus, ps = _one_decoy_setting(params)
    protocol = params.protocol
    ec = (protocol.reconciliation_efficiency * sum(counts.key_basis_detections)
          * binary_entropy(min(counts.key_basis_qber, 0.5)))
    return one_decoy_key_length(counts, mus, ps, protocol.eps_sec, protocol.eps_cor,
                                ec) / pulses
