"""Finite-key length of decoy-state BB84 after Lim, Curty, Walenta, Xu, Zbinden,
"Concise security bounds for practical decoy-state quantum key distribution",
PRA 89, 022307 (2014).

This module owns the three-intensity decoy-state bounds with Hoeffding corrections,
the phase-error bound, the key length formula, the choice between the published and
the tightened bound, and the expected counts of a block of N pulses from the
closed-form model (:mod:`corridor.link.rates`), also for a block given as n_Z
key-basis detections with eps_sec = kappa l as in the paper's Fig. 1
(:func:`key_block_rate`). The distillation layer calls :func:`finite_key_bounds` and
:func:`finite_key_length` on observed counts.

Mapping to the paper. Lim et al. extract the key from the X basis and test in Z;
Corridor extracts it from Z (``BASIS_Z`` in :mod:`corridor.link.records`) and tests in
X, so every subscript is swapped: the paper's ``n_X, s_X0, s_X1, phi_X`` are our
``n_Z, s_Z0, s_Z1, phi_Z``, its ``s_Z1, v_Z1`` are our ``s_X1, v_X1``.

Symbols (intensity classes k = 1 signal, 2 decoy, 3 vacuum, mean photon numbers
mu1 > mu2 + mu3, mu2 > mu3 >= 0, chosen with probabilities p_k):

- ``n_{B,k}`` / ``m_{B,k}``: sifted detections / errors in basis B with intensity k;
  ``n_B``, ``m_B`` their sums over k.
- Hoeffding-corrected counts (defined with Eqs. (2) and (4); Appendix A, Eqs. A7-A10):
  ``n^{+-}_{B,k} = e^{mu_k}/p_k (n_{B,k} +- delta(n_B))`` with
  ``delta(n) = sqrt(n/2 ln(21/eps_sec))``, and the same for errors with ``delta(m_B)``.
- ``tau_n = sum_k p_k e^{-mu_k} mu_k^n / n!``: probability that a pulse holds n photons.
- Eq. (2), vacuum events: ``s_{B,0} >= tau_0 (mu2 n^-_{B,3} - mu3 n^+_{B,2}) / (mu2 - mu3)``.
- Eq. (3), single-photon events: ``s_{B,1} >= tau_1 mu1 [n^-_{B,2} - n^+_{B,3}
  - (mu2^2 - mu3^2)/mu1^2 (n^+_{B,1} - s_{B,0}/tau_0)] / (mu1 (mu2 - mu3) - mu2^2 + mu3^2)``.
- Eq. (4), single-photon errors in the test basis:
  ``v_{X,1} <= tau_1 (m^+_{X,2} - m^-_{X,3}) / (mu2 - mu3)``.
- Eq. (5), phase error of the key basis: ``phi_Z <= v_{X,1}/s_{X,1} +
  gamma(eps_sec/21, v_{X,1}/s_{X,1}, s_{X,1}, s_{Z,1})`` with
  ``gamma(a, b, c, d) = sqrt((c+d)(1-b) b / (c d ln 2) * log2((c+d) / (c d (1-b) b a^2)))``.
- Eq. (1), key length: ``l = s_{Z,0} + s_{Z,1} (1 - H2(phi_Z)) - lambda_EC - 6 log2(21/eps_sec)
  - log2(2/eps_cor)``; ``lambda_EC`` counts every bit disclosed by reconciliation
  and verification.

Two bounds (``bound=``, names in :data:`FINITE_KEY_BOUNDS`; docs/finite-key.md):

- ``"lim2014"`` (the default): Eqs. (1)-(5) exactly as published. The only additions
  are the clamps that keep a bound a bound: s_{B,0}, s_{B,1} and v_{X,1} are clamped
  at 0 (a count is never negative, and Eq. (3) may use the clamped s_{B,0}, itself a
  valid lower bound); phi_Z is 1/2 when s_{X,1} or s_{Z,1} is 0 or when
  v_{X,1}/s_{X,1} >= 1/2, and never above 1/2 (h(1/2) = 1 is the largest entropy a
  bit can carry, so the clamp can only lower the key); gamma is 0 where its
  logarithm's argument is below 1 (there the published expression has no real
  value and its limit is 0); and gamma is evaluated at b >= 1/s_{X,1}. That last
  floor is kept for soundness: Eq. (5) evaluates gamma at the estimated error rate
  b, and gamma vanishes at b = 0, so a test sample with no observed errors would
  certify phi_Z = 0, which no finite sample can. The floor changes nothing once the
  bound on v_{X,1} reaches one error.
- ``"tightened"``: the same, plus caps that use what was observed: v_{X,1} <= m_X
  (single-photon test errors are among the observed test errors), which can raise
  the key, and s_{B,0} <= n_B, s_{B,1} <= n_B - s_{B,0}, which can only lower it.
  Each cap holds whenever the uncapped bound holds, so the failure probability and
  eps_sec are unchanged (argument in docs/finite-key.md).

Afterpulses: :func:`expected_counts` and the optimiser's expected counts follow the
detection model of Lim et al.'s evaluation (Sec. IV): with afterpulse probability
p_ap, R_k = Q_k (1 + p_ap) clicks and E_k Q_k + p_ap Q_k / 2 errors per pulse of
intensity k (an afterpulse carries a random bit). With p_ap = 0 (every preset but
``lim-2014``) these are the closed-form Q_k and E_k Q_k of :mod:`corridor.link.rates`.
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

#: The finite-key bounds this module computes (module docstring, docs/finite-key.md).
FINITE_KEY_BOUNDS: tuple[str, ...] = ("lim2014", "tightened")
#: The published bound, unless a caller chooses the tightened one.
DEFAULT_FINITE_KEY_BOUND = "lim2014"

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


def check_bound(bound: str, field: str = "finite_key_bound") -> str:
    """Return ``bound`` if it names one of :data:`FINITE_KEY_BOUNDS`, else raise."""
    if not isinstance(bound, str) or bound not in FINITE_KEY_BOUNDS:
        raise ParameterError(field, bound, "must be one of " + ", ".join(FINITE_KEY_BOUNDS),
                             "docs/finite-key.md")
    return bound


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


def _vacuum_and_single(counts: Triple, mus: Triple, ps: Triple, eps_sec: float,
                       tightened: bool) -> tuple[float, float]:
    """Eqs. (2) and (3): lower bounds (s_0, s_1) in one basis, clamped at 0 (and capped
    by the observed n_B when ``tightened``)."""
    mu1, mu2, mu3 = mus
    lower, upper = _corrected(counts, mus, ps, eps_sec)
    tau0 = _tau(0, mus, ps)
    tau1 = _tau(1, mus, ps)
    s0 = max(0.0, tau0 * (mu2 * lower[2] - mu3 * upper[1]) / (mu2 - mu3))
    s1 = tau1 * mu1 * (lower[1] - upper[2] - (mu2 ** 2 - mu3 ** 2) / mu1 ** 2
                       * (upper[0] - s0 / tau0)) / (mu1 * (mu2 - mu3) - mu2 ** 2 + mu3 ** 2)
    if not tightened:
        return s0, max(0.0, s1)
    # The true counts satisfy s_0 + s_1 <= n_B, so lowering a lower bound to it keeps
    # it a lower bound; the cap can only shorten the key.
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
            eps_sec: float, bound: str) -> FiniteKeyBounds:
    tightened = bound == "tightened"
    s_z0, s_z1 = _vacuum_and_single(key_n, mus, ps, eps_sec, tightened)
    _, s_x1 = _vacuum_and_single(test_n, mus, ps, eps_sec, tightened)
    mu2, mu3 = mus[1], mus[2]
    m_lower, m_upper = _corrected(test_m, mus, ps, eps_sec)
    # Eq. (4), clamped at 0.
    v_x1 = max(0.0, _tau(1, mus, ps) * (m_upper[1] - m_lower[2]) / (mu2 - mu3))
    if tightened:
        # Single-photon test errors are among the observed test errors: v_X1 <= m_X.
        v_x1 = min(v_x1, sum(test_m))
    if s_x1 <= 0.0 or s_z1 <= 0.0:
        phi = 0.5
    else:
        ratio = v_x1 / s_x1
        if ratio >= 0.5:
            phi = 0.5
        else:
            # Eq. (5); gamma at no less than one error in the test sample (docstring).
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
                      eps_sec: float, bound: str = DEFAULT_FINITE_KEY_BOUND
                      ) -> FiniteKeyBounds:
    """Bounds on vacuum and single-photon events and on the phase error (Lim et al.).

    Args:
        counts: sifted detections and errors per intensity class and basis.
        intensities: (mu1, mu2, mu3) = (signal, decoy, vacuum) mean photon numbers,
            mu1 > mu2 + mu3 and mu2 > mu3 >= 0.
        probabilities: (p1, p2, p3), the probabilities Alice chose each class with.
        eps_sec: secrecy parameter; each of the 21 estimation events fails with at
            most eps_sec/21.
        bound: ``"lim2014"`` (as published) or ``"tightened"`` (module docstring).

    Raises:
        ParameterError: counts negative or errors above detections, an intensity
            ordering Lim et al. do not cover, probabilities not summing to 1, an
            unknown bound.
    """
    check_bound(bound)
    _check_counts(counts)
    _check_setting(intensities, probabilities)
    _check_epsilon("eps_sec", eps_sec)
    mus = tuple(float(x) for x in intensities)
    ps = tuple(float(x) for x in probabilities)
    return _bounds(tuple(float(x) for x in counts.key_basis_detections),  # type: ignore[arg-type]
                   tuple(float(x) for x in counts.test_basis_detections),  # type: ignore[arg-type]
                   tuple(float(x) for x in counts.test_basis_errors),  # type: ignore[arg-type]
                   mus, ps, eps_sec, bound)  # type: ignore[arg-type]


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
    afterpulse_probability: float = 0.0
    dead_gates: int = 0
    detector_pixels: int = 1

    @classmethod
    def of(cls, params: LinkParameters) -> LinkConstants:
        return cls(params.transmittance, params.background_yield,
                   params.protocol.misalignment_error,
                   params.protocol.reconciliation_efficiency,
                   params.protocol.eps_sec, params.protocol.eps_cor,
                   params.detector.afterpulse_probability, rates.dead_gates(params),
                   params.detector.detector_pixels)


def _clicks_and_errors(link: LinkConstants, mus: Triple, ps: Triple
                       ) -> list[tuple[float, float]]:
    """Per pulse of each class: (R, errors) = (Q (1 + p_ap), E Q + p_ap Q / 2), with Q and
    E the closed-form gain and error rate with detector saturation
    (:func:`corridor.link.rates.saturated_gains_and_errors`: every yield times the
    availability of the receiver at this class mix) and Lim et al.'s afterpulses (an
    afterpulse carries a random bit)."""
    gains, errors = rates.saturated_gains_and_errors(
        link.transmittance, link.background_yield, link.misalignment_error, mus, ps,
        link.dead_gates, link.detector_pixels)
    p_ap = link.afterpulse_probability
    return [(float(q) * (1.0 + p_ap), float(q) * float(e) + BACKGROUND_ERROR_RATE * p_ap * float(q))
            for q, e in zip(gains, errors, strict=True)]


def expected_gain_and_qber(params: LinkParameters, intensity: float) -> tuple[float, float]:
    """Click probability per pulse and QBER of one intensity as the finite-key model
    sees them: the closed form with saturation at the link's own class mix, plus
    afterpulses (module docstring)."""
    src = params.source
    mus = (float(intensity), *src.intensities)
    ps = (0.0, *src.class_probabilities)  # the pulse of interest does not change the mix
    clicks, errors = _clicks_and_errors(LinkConstants.of(params), mus, ps)[0]  # type: ignore[arg-type]
    return clicks, (errors / clicks if clicks > 0.0 else BACKGROUND_ERROR_RATE)


def _expected_real(link: LinkConstants, mus: Triple, ps: Triple, z_basis_probability: float,
                   pulses: float) -> tuple[Triple, Triple, Triple, Triple]:
    """Expected (n_Z, m_Z, n_X, m_X) per class from R_k and the errors of
    :func:`_clicks_and_errors` (detector saturation and afterpulses included)."""
    n_z: list[float] = []
    m_z: list[float] = []
    n_x: list[float] = []
    m_x: list[float] = []
    sift_z = z_basis_probability ** 2
    sift_x = (1.0 - z_basis_probability) ** 2
    for p, (q, eq) in zip(ps, _clicks_and_errors(link, mus, ps), strict=True):
        n_z.append(pulses * p * sift_z * q)
        m_z.append(pulses * p * sift_z * eq)
        n_x.append(pulses * p * sift_x * q)
        m_x.append(pulses * p * sift_x * eq)
    return tuple(n_z), tuple(m_z), tuple(n_x), tuple(m_x)  # type: ignore[return-value]


def raw_finite_key_rate(link: LinkConstants, mus: Triple, ps: Triple, z_basis_probability: float,
                        pulses: float, bound: str = DEFAULT_FINITE_KEY_BOUND,
                        eps_sec: float | None = None) -> float:
    """Unfloored, unclamped l / N for expected counts: what the optimiser climbs.

    ``eps_sec`` replaces ``link.eps_sec`` when given (the fixed point of
    :func:`key_block_rate` needs it).
    """
    eps = link.eps_sec if eps_sec is None else eps_sec
    n_z, m_z, n_x, m_x = _expected_real(link, mus, ps, z_basis_probability, pulses)
    bounds = _bounds(n_z, n_x, m_x, mus, ps, eps, bound)
    total_z = sum(n_z)
    qber_z = sum(m_z) / total_z if total_z > 0 else BACKGROUND_ERROR_RATE
    ec = link.reconciliation_efficiency * total_z * binary_entropy(min(qber_z, 0.5))
    return _length_real(bounds, ec, eps, link.eps_cor) / pulses


def key_basis_detection_probability(link: LinkConstants, mus: Triple, ps: Triple,
                                    z_basis_probability: float) -> float:
    """Expected sifted key-basis detections per pulse, p_Z^2 sum_k p_k R_k."""
    n_z, _, _, _ = _expected_real(link, mus, ps, z_basis_probability, 1.0)
    return float(sum(n_z))


#: Iterations of the eps_sec = kappa * l fixed point; l moves by a few bits per
#: decade of eps_sec, so it settles to well under a bit within a handful.
_SECRECY_FIXED_POINT_STEPS = 30


def key_block_rate(link: LinkConstants, mus: Triple, ps: Triple, z_basis_probability: float,
                   key_basis_detections: float, bound: str = DEFAULT_FINITE_KEY_BOUND,
                   secrecy_per_key_bit: float | None = None) -> float:
    """Unfloored l / N for a block of ``key_basis_detections`` sifted key-basis detections.

    This is how Lim et al. parametrise Fig. 1: the block size is n_X (our n_Z), and
    the pulses it takes are N = n_Z / (p_Z^2 sum_k p_k R_k). With
    ``secrecy_per_key_bit`` = kappa, eps_sec is not ``link.eps_sec`` but kappa * l
    (their Sec. IV: "eps_sec = kappa l"). l(eps_sec) grows with eps_sec, so iterating
    l <- l(kappa l) from l = n_Z falls to the largest fixed point; a key needs one at
    l >= 1 bit. Where there is none, l(kappa) < 1 and (l(kappa) - 1) / N < 0 is
    returned, so that the optimiser sees how far from a key the settings are.
    """
    per_pulse = key_basis_detection_probability(link, mus, ps, z_basis_probability)
    if not per_pulse > 0.0:
        return -math.inf
    pulses = key_basis_detections / per_pulse
    if secrecy_per_key_bit is None:
        return raw_finite_key_rate(link, mus, ps, z_basis_probability, pulses, bound)

    def bits(length: float) -> float:
        eps = min(secrecy_per_key_bit * length, 0.5)
        return raw_finite_key_rate(link, mus, ps, z_basis_probability, pulses, bound,
                                   eps) * pulses

    length = float(key_basis_detections)
    for _ in range(_SECRECY_FIXED_POINT_STEPS):
        following = bits(length)
        if following < 1.0:
            return (bits(1.0) - 1.0) / pulses
        if length - following < 0.5:
            return following / pulses
        length = following
    return length / pulses


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


def finite_key_rate(params: LinkParameters, pulses: int,
                    bound: str = DEFAULT_FINITE_KEY_BOUND) -> float:
    """Expected finite-key rate in bits per pulse for a block of ``pulses`` pulses.

    The counts are the closed-form expectations; lambda_EC = f n_Z H2(E_Z);
    eps_sec and eps_cor come from ``params.protocol``; ``bound`` is ``"lim2014"`` or
    ``"tightened"``. The key length is floored and never negative, as
    :func:`finite_key_length`.
    """
    check_bound(bound)
    _check_pulses(pulses)
    src = params.source
    _check_setting(src.intensities, src.class_probabilities)
    link = LinkConstants.of(params)
    raw_bits = raw_finite_key_rate(link, src.intensities, src.class_probabilities,
                                   src.z_basis_probability, float(pulses), bound) * pulses
    return max(0, math.floor(raw_bits)) / pulses
