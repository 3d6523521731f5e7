"""Finite-key length of decoy-state BB84 after Lim, Curty, Walenta, Xu, Zbinden,
"Concise security bounds for practical decoy-state quantum key distribution",
PRA 89, 022307 (2014).

This module owns the three-intensity decoy-state bounds with Hoeffding corrections,
the phase-error bound, the key length formula, and the expected counts of a block of
N pulses from the closed-form model (:mod:`corridor.link.rates`). The distillation
layer calls :func:`finite_key_bounds` and :func:`finite_key_length` on observed counts.

Mapping to the paper. Lim et al. extract the key from the X basis and test in Z;
Corridor extracts it from Z (``BASIS_Z`` in :mod:`corridor.link.records`) and tests in
X, so every subscript is swapped: the paper's ``n_X, s_X0, s_X1, phi_X`` are our
``n_Z, s_Z0, s_Z1, phi_Z``, its ``s_Z1, v_Z1`` are our ``s_X1, v_X1``.

Symbols (intensity classes k = 1 signal, 2 decoy, 3 vacuum, mean photon numbers
mu1 > mu2 + mu3, mu2 > mu3 >= 0, chosen with probabilities p_k):

- ``n_{B,k}`` / ``m_{B,k}``: sifted detections / errors in basis B with intensity k;
  ``n_B``, ``m_B`` their sums over k.
- Hoeffding-corrected counts (Eq. 1 context): ``n^{+-}_{B,k} = e^{mu_k}/p_k *
  (n_{B,k} +- delta(n_B))`` with ``delta(n) = sqrt(n/2 ln(21/eps_sec))``, and the same
  for errors with ``delta(m_B)``.
- ``tau_n = sum_k p_k e^{-mu_k} mu_k^n / n!``: probability that a pulse holds n photons.
- Eq. (2), vacuum events: ``s_{B,0} >= tau_0 (mu2 n^-_{B,3} - mu3 n^+_{B,2}) / (mu2 - mu3)``.
- Eq. (3), single-photon events: ``s_{B,1} >= tau_1 mu1 [n^-_{B,2} - n^+_{B,3}
  - (mu2^2 - mu3^2)/mu1^2 (n^+_{B,1} - s_{B,0}/tau_0)] / (mu1 (mu2 - mu3) - mu2^2 + mu3^2)``.
- Eq. (4), single-photon errors in the test basis:
  ``v_{X,1} <= tau_1 (m^+_{X,2} - m^-_{X,3}) / (mu2 - mu3)``.
- Eq. (5), phase error of the key basis: ``phi_Z <= v_{X,1}/s_{X,1} +
  gamma(eps_sec/21, v_{X,1}/s_{X,1}, s_{X,1}, s_{Z,1})`` with
  ``gamma(a, b, c, d) = sqrt((c+d)(1-b) b / (c d ln 2) * log2((c+d) / (c d (1-b) b a^2)))``.
- Key length: ``l = s_{Z,0} + s_{Z,1} (1 - H2(phi_Z)) - lambda_EC - 6 log2(21/eps_sec)
  - log2(2/eps_cor)``; ``lambda_EC`` counts every bit disclosed by reconciliation
  and verification.

Fail-closed choices (documented deviations): every lower bound is clamped at 0 and
phi_Z into [0, 1/2]; s_{B,0} + s_{B,1} is capped at the observed n_B and v_{X,1} at the
observed m_X (valid: those events are among the observed ones); gamma vanishes at
b = 0, which would certify a zero phase error from a test sample with no observed
errors, so it is evaluated at no less than one error in the test sample
(b >= 1/s_{X,1}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corridor.errors import ParameterError
from corridor.link import rates
from corridor.link.params import LinkParameters
from corridor.link.rates import BACKGROUND_ERROR_RATE, binary_entropy

#: Number of failure events in Lim et al.'s security statement; eps_sec is split so.
_EPS_SPLIT = 21.0

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class DecoyCounts:
    """Sifted counts of one block, per intensity class (signal, decoy, vacuum).

    Only pulses where Alice and Bob chose the same basis count.

    Attributes:
        key_basis_detections: n_{Z,k}, Z-basis detections per class.
        key_basis_errors: m_{Z,k}, Z-basis bit errors per class.
        test_basis_detections: n_{X,k}, X-basis detections per class.
        test_basis_errors: m_{X,k}, X-basis bit errors per class.
    """

    key_basis_detections: tuple[int, int, int]
    key_basis_errors: tuple[int, int, int]
    test_basis_detections: tuple[int, int, int]
    test_basis_errors: tuple[int, int, int]

    @property
    def key_basis_total(self) -> int:
        """n_Z: sifted key-basis detections, all classes."""
        return int(sum(self.key_basis_detections))

    @property
    def key_basis_qber(self) -> float:
        """E_Z = m_Z / n_Z (1/2 when there are no detections)."""
        n = self.key_basis_total
        return sum(self.key_basis_errors) / n if n else BACKGROUND_ERROR_RATE


@dataclass(frozen=True)
class FiniteKeyBounds:
    """Bounds of Lim et al. 2014 for one block (our key basis Z = their X).

    Attributes:
        vacuum_events_lower: s_{Z,0}, key-basis detections caused by vacuum pulses.
        single_photon_events_lower: s_{Z,1}, key-basis detections of single photons.
        single_photon_phase_error_upper: phi_Z, phase error rate of those, in [0, 1/2].
        test_single_photon_events_lower: s_{X,1}, test-basis single-photon detections.
        test_single_photon_errors_upper: v_{X,1}, bit errors among those.
    """

    vacuum_events_lower: float
    single_photon_events_lower: float
    single_photon_phase_error_upper: float
    test_single_photon_events_lower: float
    test_single_photon_errors_upper: float


def _hoeffding(total: float, eps_sec: float) -> float:
    """delta(n) = sqrt(n/2 ln(21/eps_sec)), the Hoeffding deviation of Lim et al."""
    return math.sqrt(total / 2.0 * math.log(_EPS_SPLIT / eps_sec))


def _corrected(counts: Triple, mus: Triple, ps: Triple, eps_sec: float
               ) -> tuple[Triple, Triple]:
    """(n^-_k, n^+_k) for k = 1, 2, 3."""
    delta = _hoeffding(sum(counts), eps_sec)
    scale = tuple(math.exp(mu) / p for mu, p in zip(mus, ps, strict=True))
    lower = tuple(s * (n - delta) for s, n in zip(scale, counts, strict=True))
    upper = tuple(s * (n + delta) for s, n in zip(scale, counts, strict=True))
    return lower, upper  # type: ignore[return-value]


def _tau(n: int, mus: Triple, ps: Triple) -> float:
    return sum(p * math.exp(-mu) * mu ** n / math.factorial(n)
               for mu, p in zip(mus, ps, strict=True))


def _vacuum_and_single(counts: Triple, mus: Triple, ps: Triple, eps_sec: float
                       ) -> tuple[float, float]:
    """Eqs. (2) and (3): lower bounds (s_0, s_1) in one basis, clamped at 0."""
    mu1, mu2, mu3 = mus
    lower, upper = _corrected(counts, mus, ps, eps_sec)
    tau0 = _tau(0, mus, ps)
    tau1 = _tau(1, mus, ps)
    s0 = max(0.0, tau0 * (mu2 * lower[2] - mu3 * upper[1]) / (mu2 - mu3))
    s1 = tau1 * mu1 * (lower[1] - upper[2] - (mu2 ** 2 - mu3 ** 2) / mu1 ** 2
                       * (upper[0] - s0 / tau0)) / (mu1 * (mu2 - mu3) - mu2 ** 2 + mu3 ** 2)
    # Counts of events are also bounded by what was observed: s_0 + s_1 <= n_B. Noisy
    # or tampered observations can push Eq. (3) past it; the cap keeps bounds physical.
    total = sum(counts)
    s0 = min(s0, total)
    return s0, min(max(0.0, s1), total - s0)


def _gamma(a: float, b: float, c: float, d: float) -> float:
    """gamma(a, b, c, d) of Lim et al. Eq. (5) (a: failure probability, b: error rate,
    c, d: sizes of the two samples)."""
    argument = (c + d) / (c * d * (1.0 - b) * b * a * a)
    # Below 1 (enormous samples against a loose eps_sec) the published expression has
    # no real value; gamma's limit there is 0.
    return math.sqrt((c + d) * (1.0 - b) * b / (c * d * math.log(2.0))
                     * math.log2(max(argument, 1.0)))


def _bounds(key_n: Triple, test_n: Triple, test_m: Triple, mus: Triple, ps: Triple,
            eps_sec: float) -> FiniteKeyBounds:
    s_z0, s_z1 = _vacuum_and_single(key_n, mus, ps, eps_sec)
    _, s_x1 = _vacuum_and_single(test_n, mus, ps, eps_sec)
    mu2, mu3 = mus[1], mus[2]
    m_lower, m_upper = _corrected(test_m, mus, ps, eps_sec)
    v_x1 = max(0.0, _tau(1, mus, ps) * (m_upper[1] - m_lower[2]) / (mu2 - mu3))
    v_x1 = min(v_x1, sum(test_m))  # single-photon errors are among the observed errors
    if s_x1 <= 0.0 or s_z1 <= 0.0:
        phi = 0.5
    else:
        v_x1 = min(v_x1, s_x1)
        ratio = v_x1 / s_x1
        if ratio >= 0.5:
            phi = 0.5
        else:
            b = min(max(ratio, 1.0 / s_x1), 0.5)
            phi = min(0.5, ratio + _gamma(eps_sec / _EPS_SPLIT, b, s_x1, s_z1))
    return FiniteKeyBounds(vacuum_events_lower=s_z0, single_photon_events_lower=s_z1,
                           single_photon_phase_error_upper=phi,
                           test_single_photon_events_lower=s_x1,
                           test_single_photon_errors_upper=v_x1)


def _check_epsilon(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ParameterError(name, value, "must be in (0, 1)")


def _check_setting(intensities: tuple[float, float, float],
                   probabilities: tuple[float, float, float]) -> None:
    if len(intensities) != 3 or len(probabilities) != 3:
        raise ParameterError("intensities/probabilities", (intensities, probabilities),
                             "need three values each: signal, decoy, vacuum")
    mu1, mu2, mu3 = (float(x) for x in intensities)
    if not all(math.isfinite(x) for x in (mu1, mu2, mu3)) or mu3 < 0.0:
        raise ParameterError("intensities", intensities, "must be finite and >= 0")
    if not mu2 > mu3:
        raise ParameterError("decoy_intensity", mu2, f"must be above vacuum_intensity = {mu3!r}")
    if not mu1 > mu2 + mu3:
        raise ParameterError("signal_intensity", mu1,
                             f"must be above decoy + vacuum intensity = {mu2 + mu3!r} "
                             "(Lim et al. 2014 require mu1 > mu2 + mu3)")
    if not all(0.0 < float(p) <= 1.0 for p in probabilities) or \
            abs(sum(probabilities) - 1.0) > 1e-9:
        raise ParameterError("probabilities", probabilities,
                             "each must be in (0, 1] and they must sum to 1")


def _check_counts(counts: DecoyCounts) -> None:
    for name in ("key_basis_detections", "key_basis_errors", "test_basis_detections",
                 "test_basis_errors"):
        values = getattr(counts, name)
        if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                   or not math.isfinite(v) or v < 0 for v in values):
            raise ParameterError(name, values, "must be three counts >= 0")
    for det, err, label in ((counts.key_basis_detections, counts.key_basis_errors, "key"),
                            (counts.test_basis_detections, counts.test_basis_errors, "test")):
        if any(e > n for n, e in zip(det, err, strict=True)):
            raise ParameterError(f"{label}_basis_errors", err,
                                 f"must not exceed {label}_basis_detections = {det!r}")


def finite_key_bounds(counts: DecoyCounts, intensities: tuple[float, float, float],
                      probabilities: tuple[float, float, float],
                      eps_sec: float) -> FiniteKeyBounds:
    """Bounds on vacuum and single-photon events and on the phase error (Lim et al.).

    Args:
        counts: sifted detections and errors per intensity class and basis.
        intensities: (mu1, mu2, mu3) = (signal, decoy, vacuum) mean photon numbers,
            mu1 > mu2 + mu3 and mu2 > mu3 >= 0.
        probabilities: (p1, p2, p3), the probabilities Alice chose each class with.
        eps_sec: secrecy parameter; each of the 21 estimation events fails with at
            most eps_sec/21.

    Raises:
        ParameterError: counts negative or errors above detections, an intensity
            ordering Lim et al. do not cover, probabilities not summing to 1.
    """
    _check_counts(counts)
    _check_setting(intensities, probabilities)
    _check_epsilon("eps_sec", eps_sec)
    mus = tuple(float(x) for x in intensities)
    ps = tuple(float(x) for x in probabilities)
    return _bounds(tuple(float(x) for x in counts.key_basis_detections),  # type: ignore[arg-type]
                   tuple(float(x) for x in counts.test_basis_detections),  # type: ignore[arg-type]
                   tuple(float(x) for x in counts.test_basis_errors),  # type: ignore[arg-type]
                   mus, ps, eps_sec)  # type: ignore[arg-type]


def security_cost_bits(eps_sec: float, eps_cor: float) -> float:
    """6 log2(21/eps_sec) + log2(2/eps_cor): bits the key pays for its epsilons."""
    return 6.0 * math.log2(_EPS_SPLIT / eps_sec) + math.log2(2.0 / eps_cor)


def _length_real(bounds: FiniteKeyBounds, error_correction_bits: float, eps_sec: float,
                 eps_cor: float) -> float:
    return (bounds.vacuum_events_lower
            + bounds.single_photon_events_lower
            * (1.0 - binary_entropy(min(max(bounds.single_photon_phase_error_upper, 0.0), 0.5)))
            - error_correction_bits - security_cost_bits(eps_sec, eps_cor))


def finite_key_length(bounds: FiniteKeyBounds, error_correction_bits: float, eps_sec: float,
                      eps_cor: float) -> int:
    """Secret key length l (bits) of Lim et al., floored, never below 0.

    ``l = s_Z0 + s_Z1 (1 - H2(phi_Z)) - lambda_EC - 6 log2(21/eps_sec) - log2(2/eps_cor)``,
    where ``error_correction_bits`` is lambda_EC: every bit disclosed by reconciliation
    and verification.
    """
    _check_epsilon("eps_sec", eps_sec)
    _check_epsilon("eps_cor", eps_cor)
    if not math.isfinite(error_correction_bits) or error_correction_bits < 0:
        raise ParameterError("error_correction_bits", error_correction_bits,
                             "must be a number of bits >= 0")
    return max(0, math.floor(_length_real(bounds, error_correction_bits, eps_sec, eps_cor)))


@dataclass(frozen=True)
class LinkConstants:
    """Physical constants of a link that the optimiser does not vary."""

    transmittance: float
    background_yield: float
    misalignment_error: float
    reconciliation_efficiency: float
    eps_sec: float
    eps_cor: float
    dead_gates: int = 0
    detector_pixels: int = 1

    @classmethod
    def of(cls, params: LinkParameters) -> LinkConstants:
        return cls(params.transmittance, params.background_yield,
                   params.protocol.misalignment_error,
                   params.protocol.reconciliation_efficiency,
                   params.protocol.eps_sec, params.protocol.eps_cor,
                   rates.dead_gates(params), params.detector.detector_pixels)


def _expected_real(link: LinkConstants, mus: Triple, ps: Triple, z_basis_probability: float,
                   pulses: float) -> tuple[Triple, Triple, Triple, Triple]:
    """Expected (n_Z, m_Z, n_X, m_X) per class from Q_k and E_k (rates.py formulas,
    detector saturation included)."""
    n_z: list[float] = []
    m_z: list[float] = []
    n_x: list[float] = []
    m_x: list[float] = []
    sift_z = z_basis_probability ** 2
    sift_x = (1.0 - z_basis_probability) ** 2
    gains, errors = rates.saturated_gains_and_errors(
        link.transmittance, link.background_yield, link.misalignment_error, mus, ps,
        link.dead_gates, link.detector_pixels)
    for p, q, e in zip(ps, gains, errors, strict=True):
        eq = q * e
        n_z.append(pulses * p * sift_z * q)
        m_z.append(pulses * p * sift_z * eq)
        n_x.append(pulses * p * sift_x * q)
        m_x.append(pulses * p * sift_x * eq)
    return tuple(n_z), tuple(m_z), tuple(n_x), tuple(m_x)  # type: ignore[return-value]


def raw_finite_key_rate(link: LinkConstants, mus: Triple, ps: Triple, z_basis_probability: float,
                        pulses: float) -> float:
    """Unfloored, unclamped l / N for expected counts: what the optimiser climbs."""
    n_z, m_z, n_x, m_x = _expected_real(link, mus, ps, z_basis_probability, pulses)
    bounds = _bounds(n_z, n_x, m_x, mus, ps, link.eps_sec)
    total_z = sum(n_z)
    qber_z = sum(m_z) / total_z if total_z > 0 else BACKGROUND_ERROR_RATE
    ec = link.reconciliation_efficiency * total_z * binary_entropy(min(qber_z, 0.5))
    return _length_real(bounds, ec, link.eps_sec, link.eps_cor) / pulses


def _check_pulses(pulses: int) -> None:
    if isinstance(pulses, bool) or not isinstance(pulses, int) or pulses <= 0:
        raise ParameterError("pulses", pulses, "must be a whole number of pulses above 0")


def expected_counts(params: LinkParameters, pulses: int) -> DecoyCounts:
    """Expected sifted counts of a block of ``pulses`` pulses, rounded to integers.

    n_{Z,k} = N p_k p_Z^2 Q_k and m_{Z,k} = N p_k p_Z^2 E_k Q_k (X with (1 - p_Z)^2),
    with Q_k and E_k the closed-form gains and error rates.
    """
    _check_pulses(pulses)
    src = params.source
    n_z, m_z, n_x, m_x = _expected_real(LinkConstants.of(params), src.intensities,
                                        src.class_probabilities, src.z_basis_probability,
                                        float(pulses))

    def rounded(values: Triple) -> tuple[int, int, int]:
        return tuple(round(v) for v in values)  # type: ignore[return-value]

    return DecoyCounts(rounded(n_z), rounded(m_z), rounded(n_x), rounded(m_x))


def finite_key_rate(params: LinkParameters, pulses: int) -> float:
    """Expected finite-key rate in bits per pulse for a block of ``pulses`` pulses.

    The counts are the closed-form expectations; lambda_EC = f n_Z H2(E_Z);
    eps_sec and eps_cor come from ``params.protocol``. The key length is floored and
    never negative, as :func:`finite_key_length`.
    """
    _check_pulses(pulses)
    src = params.source
    _check_setting(src.intensities, src.class_probabilities)
    link = LinkConstants.of(params)
    raw_bits = raw_finite_key_rate(link, src.intensities, src.class_probabilities,
                                   src.z_basis_probability, float(pulses)) * pulses
    return max(0, math.floor(raw_bits)) / pulses
