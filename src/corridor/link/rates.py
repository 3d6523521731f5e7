"""Closed-form asymptotic model of a decoy-state BB84 link over fibre.

This module owns the expected gains and error rates per intensity, the decoy-state
bounds on single-photon pulses (infinite decoys and vacuum + one weak decoy), the
asymptotic secret key rate, the PLOB bound of the fibre and the QBER threshold.

Notation (Lo, Ma, Chen, PRL 94, 230504 (2005); Ma, Qi, Zhao, Lo, PRA 72, 012326
(2005)):

- ``eta``: total transmittance eta_ch * eta_bob (:attr:`LinkParameters.transmittance`);
- ``Y0``: background yield, the click probability with no signal photon;
- ``e_d``: misalignment error; ``e0 = 1/2``: error rate of background clicks;
- ``Q_l = Y0 + 1 - exp(-eta * l)``: gain of intensity ``l`` (mean photon number);
- ``E_l Q_l = e0 Y0 + e_d (1 - exp(-eta * l))``: its quantum bit error rate (QBER);
- ``Y1``, ``e1``, ``Q1``: yield, error rate and gain of single-photon pulses;
- ``q = p_Z^2 + (1 - p_Z)^2``: sifting factor (1/2 for standard BB84, -> 1 for
  efficient BB84 with ``p_Z -> 1``, each basis estimated on its own);
- ``f``: reconciliation efficiency (disclosed bits over the Shannon limit).

The key rate per pulse is GLLP's (Gottesman, Lo, Luetkenhaus, Preskill 2004) in the
decoy-state form of Lo-Ma-Chen::

    R = q * ( -Q_mu f H2(E_mu) + Q1 (1 - H2(e1)) ),

clamped to 0 where it would be negative (no key, not a negative key).

Detectors that saturate
-----------------------
With a dead time tau at pulse rate f, a click blinds its receiver lane for the
``D = ceil(tau f) - 1`` gates that follow (:func:`dead_gates`). Bob's receiver has
``N = detector_pixels`` lanes (pixel i of both detectors) and the light of each gate
lands on one lane chosen uniformly at random. Dead time never depends on the pulse
in the current gate, so every gate sees its lane free with the same probability, the
renewal availability (:func:`detector_availability`)::

    A = 1 / (1 + D P / N),        P = sum_k p_k Q_k  (click probability of a free gate)

and every yield is multiplied by A: Q_k -> A Q_k for all intensity classes, Y0 -> A Y0,
Y1 -> A Y1, while every error rate stays what it was. The decoy bounds are linear in
the yields, so the key rate per pulse is exactly A times the unsaturated one; at short
distance P grows with eta and the rate per second bends towards ``N f / D`` clicks per
second instead of growing like eta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from corridor.errors import ParameterError
from corridor.link.params import LinkParameters

#: Error rate of a background click (dark count or stray light): a random bit.
BACKGROUND_ERROR_RATE = 0.5

DecoyMode = Literal["infinite", "vacuum-weak"]
DECOY_MODES: tuple[str, ...] = ("infinite", "vacuum-weak")


@overload
def binary_entropy(p: float) -> float: ...
@overload
def binary_entropy(p: NDArray[np.float64]) -> NDArray[np.float64]: ...
def binary_entropy(p: float | NDArray[np.float64]) -> float | NDArray[np.float64]:
    """H2(p) = -p log2 p - (1 - p) log2(1 - p), with H2(0) = H2(1) = 0.

    Accepts a float or a numpy array (element-wise). Values outside [0, 1] raise
    :class:`ParameterError`.
    """
    if isinstance(p, (float, int, np.floating)) and not isinstance(p, bool):
        # Scalar path in plain math: the optimisers call this hundreds of thousands
        # of times, and numpy's per-call overhead would dominate.
        x = float(p)
        if not 0.0 <= x <= 1.0:  # also catches NaN
            raise ParameterError("p", p, "binary entropy is defined for probabilities in [0, 1]")
        if x == 0.0 or x == 1.0:
            return 0.0
        return -x * math.log2(x) - (1.0 - x) * math.log2(1.0 - x)
    arr = np.asarray(p, dtype=np.float64)
    if np.any(~np.isfinite(arr)) or np.any(arr < 0.0) or np.any(arr > 1.0):
        raise ParameterError("p", p if np.ndim(p) == 0 else "array",
                             "binary entropy is defined for probabilities in [0, 1]")
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -arr * np.log2(arr) - (1.0 - arr) * np.log2(1.0 - arr)
    h = np.where((arr <= 0.0) | (arr >= 1.0), 0.0, h)
    if np.ndim(p) == 0:
        return float(h)
    return h


def _h2_clamped(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """H2 of error rates already known to be bounds: clamp into [0, 1/2] first.

    An error-rate upper bound above 1/2 carries no more information than 1/2 (the
    pulse is useless for key either way), and H2 would otherwise start to fall.
    """
    return binary_entropy(np.clip(p, 0.0, 0.5))


def sifting_factor(z_basis_probability: float) -> float:
    """q = p_Z^2 + (1 - p_Z)^2: fraction of pulses where Alice's and Bob's bases agree.

    Both bases give key (each with its own error estimate, Lo-Chau-Ardehali 2005), so
    standard BB84 (p_Z = 1/2) has q = 1/2 and efficient BB84 tends to q = 1.
    """
    return z_basis_probability ** 2 + (1.0 - z_basis_probability) ** 2


def gain(params: LinkParameters, intensity: float) -> float:
    """Q_l = Y0 + 1 - exp(-eta * l): probability that a pulse of mean photon number
    ``intensity`` gives a click (Lo-Ma-Chen 2005, Eq. for Q_mu).
    """
    return float(_gain(params.transmittance, params.background_yield,
                       _check_intensity(intensity)))


def error_rate(params: LinkParameters, intensity: float) -> float:
    """E_l = (e0 Y0 + e_d (1 - exp(-eta * l))) / Q_l: QBER of pulses of intensity ``l``.

    For the vacuum (l = 0) this is e0 = 1/2.
    """
    return float(_error_rate(params.transmittance, params.background_yield,
                             params.protocol.misalignment_error, _check_intensity(intensity)))


def _check_intensity(intensity: float) -> np.float64:
    value = float(intensity)
    if not math.isfinite(value) or value < 0.0:
        raise ParameterError("intensity", intensity, "must be a mean photon number >= 0")
    return np.float64(value)


def _gain(eta: float, y0: float, intensity: ArrayLike) -> NDArray[np.float64]:
    mu = np.asarray(intensity, dtype=np.float64)
    return y0 - np.expm1(-eta * mu)


def _error_rate(eta: float, y0: float, e_d: float, intensity: ArrayLike) -> NDArray[np.float64]:
    mu = np.asarray(intensity, dtype=np.float64)
    signal_clicks = -np.expm1(-eta * mu)
    total = y0 + signal_clicks
    with np.errstate(divide="ignore", invalid="ignore"):
        e = (BACKGROUND_ERROR_RATE * y0 + e_d * signal_clicks) / total
    # No clicks at all (Y0 = 0, l = 0): the rate is undefined; 1/2 is what a click
    # would carry and keeps every caller away from a NaN.
    return np.where(total > 0.0, e, BACKGROUND_ERROR_RATE)


def dead_gates(params: LinkParameters) -> int:
    """D: gates after a click that fall inside the dead time (j / f < dead_time_s, j >= 1).

    ``ceil(dead_time_s * pulse_rate_hz) - 1``, never negative; a gate exactly one dead
    time after the click is live again. The 1e-9 guard keeps 50 ns at 1 GHz at 49 gates
    despite the rounding of 50e-9 * 1e9.
    """
    gates = params.detector.dead_time_s * params.source.pulse_rate_hz
    return max(math.ceil(gates - 1e-9) - 1, 0)


def detector_availability(dead_gate_count: int, detector_pixels: int,
                          click_probability: ArrayLike) -> NDArray[np.float64]:
    """A = 1 / (1 + D P / N): probability that a gate finds its receiver lane live.

    Renewal argument: a lane receives a gate's light with probability 1/N and then
    clicks with probability P (the click probability of an unsaturated receiver,
    averaged over intensity classes), independently of its past; after a click it is
    dead for D gates. Its clicks therefore follow a renewal process with mean gap
    D + N / P gates, live a fraction (N / P) / (D + N / P) of the time. The lane a gate
    lands on is independent of the past, so this is the probability that any gate is
    counted; exact in the stationary regime, and what the simulator samples
    (:func:`corridor.link.simulator.class_statistics`).
    """
    p = np.asarray(click_probability, dtype=np.float64)
    return np.asarray(1.0 / (1.0 + dead_gate_count * p / detector_pixels))


def saturated_gains_and_errors(transmittance: float, background_yield: float,
                               misalignment_error: float, intensities: ArrayLike,
                               class_probabilities: ArrayLike, dead_gate_count: int = 0,
                               detector_pixels: int = 1
                               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-class gains A Q_k and error rates E_k of a receiver with dead time.

    ``intensities`` and ``class_probabilities`` are the classes' l_k and p_k (any
    number of classes; the probabilities sum to 1). Q_k and E_k are the closed forms
    of :func:`gain` and :func:`error_rate`; A is :func:`detector_availability` of the
    mean click probability sum_k p_k Q_k. Dead time scales every class by the same A
    and leaves the error rates unchanged. With ``dead_gate_count = 0`` this is the
    textbook model.
    """
    mus = np.asarray(intensities, dtype=np.float64)
    ps = np.asarray(class_probabilities, dtype=np.float64)
    gains = _gain(transmittance, background_yield, mus)
    errors = _error_rate(transmittance, background_yield, misalignment_error, mus)
    availability = detector_availability(dead_gate_count, detector_pixels,
                                         float(np.dot(ps, gains)))
    return gains * availability, errors


def class_gains_and_errors(params: LinkParameters
                           ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(gains, error rates) of the signal, decoy and vacuum classes, saturation included."""
    gains, errors = saturated_gains_and_errors(
        params.transmittance, params.background_yield, params.protocol.misalignment_error,
        params.source.intensities, params.source.class_probabilities, dead_gates(params),
        params.detector.detector_pixels)
    return ((float(gains[0]), float(gains[1]), float(gains[2])),
            (float(errors[0]), float(errors[1]), float(errors[2])))


def availability(params: LinkParameters) -> float:
    """A of the link at its own settings (1 without dead time)."""
    src = params.source
    p = float(np.dot(src.class_probabilities,
                     _gain(params.transmittance, params.background_yield, src.intensities)))
    return float(detector_availability(dead_gates(params), params.detector.detector_pixels, p))


@dataclass(frozen=True)
class DecoyEstimate:
    """What the decoy-state method says about single-photon pulses.

    Attributes:
        single_photon_yield_lower: lower bound on Y1, the click probability of a
            single-photon pulse (exact value for infinite decoys).
        single_photon_error_upper: upper bound on e1, the error rate of single-photon
            clicks, within [0, 1/2].
        single_photon_gain_lower: lower bound on Q1 = Y1 mu exp(-mu), the fraction of
            signal pulses that are single photons and click.
    """

    single_photon_yield_lower: float
    single_photon_error_upper: float
    single_photon_gain_lower: float


def decoy_bounds_infinite(params: LinkParameters) -> DecoyEstimate:
    """Infinitely many decoys (GLLP / Lo-Ma-Chen): Y1, e1 and Q1 are known exactly.

    Y1 = A (Y0 + eta - Y0 eta), e1 = (e0 Y0 + e_d eta) / (Y0 + eta - Y0 eta),
    Q1 = Y1 mu exp(-mu) with mu = ``params.source.signal_intensity`` and A the
    availability of the receiver (:func:`availability`, 1 without dead time): a dead
    receiver misses single photons as often as any other pulse.
    """
    eta = params.transmittance
    y0 = params.background_yield
    mu = params.source.signal_intensity
    y1 = y0 + eta - y0 * eta
    e1 = (BACKGROUND_ERROR_RATE * y0 + params.protocol.misalignment_error * eta) / y1
    y1 *= availability(params)
    return DecoyEstimate(single_photon_yield_lower=y1,
                         single_photon_error_upper=min(e1, 0.5),
                         single_photon_gain_lower=y1 * mu * math.exp(-mu))


def _check_observation(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ParameterError(name, value, "must be a number in [0, 1]")
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or value > 1.0:
        raise ParameterError(name, value, "must be a probability in [0, 1]")
    return value


def decoy_bounds_vacuum_weak(signal_gain: float, decoy_gain: float, signal_qber: float,
                             decoy_qber: float, background_yield: float,
                             signal_intensity: float, decoy_intensity: float) -> DecoyEstimate:
    """Vacuum + one weak decoy: Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005).

    With signal intensity mu, decoy intensity nu < mu and a true vacuum whose gain is
    Y0 (``background_yield``)::

        Y1 >= Y1^L = mu / (mu nu - nu^2)
                     * ( Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2 - nu^2)/mu^2 Y0 )   (Eq. 34)
        e1 <= e1^U = ( E_nu Q_nu e^nu - e0 Y0 ) / ( Y1^L nu )                       (Eq. 37)
        Q1 >= Q1^L = Y1^L mu e^-mu

    The inputs may be observed frequencies (the simulator calls this on them), so the
    results are clamped to the physical ranges rather than trusted: Y1^L into [0, 1],
    e1^U into [0, 1/2]. A yield bound that collapses to 0 or below (as under a
    photon-number-splitting attack, or with too few decoy clicks) gives Y1^L = 0,
    e1^U = 1/2 and Q1^L = 0: no single-photon pulse can be vouched for, so no key.
    Never NaN.

    Raises:
        ParameterError: a gain, QBER or background yield outside [0, 1], a decoy
            intensity not in (0, signal_intensity).
    """
    q_mu = _check_observation("signal_gain", signal_gain)
    q_nu = _check_observation("decoy_gain", decoy_gain)
    e_mu = _check_observation("signal_qber", signal_qber)
    e_nu = _check_observation("decoy_qber", decoy_qber)
    y0 = _check_observation("background_yield", background_yield)
    mu = float(signal_intensity)
    nu = float(decoy_intensity)
    if not math.isfinite(mu) or mu <= 0.0:
        raise ParameterError("signal_intensity", signal_intensity, "must be above 0")
    if not math.isfinite(nu) or nu <= 0.0 or nu >= mu:
        raise ParameterError("decoy_intensity", decoy_intensity,
                             f"must be in (0, signal_intensity = {mu!r})")
    del e_mu  # the bound uses the decoy's errors only; the signal QBER enters the EC term
    y1 = mu / (mu * nu - nu * nu) * (
        q_nu * math.exp(nu) - q_mu * math.exp(mu) * nu * nu / (mu * mu)
        - (mu * mu - nu * nu) / (mu * mu) * y0)
    if not y1 > 0.0:
        return DecoyEstimate(0.0, 0.5, 0.0)
    y1 = min(y1, 1.0)
    e1 = (e_nu * q_nu * math.exp(nu) - BACKGROUND_ERROR_RATE * y0) / (y1 * nu)
    e1 = min(max(e1, 0.0), 0.5)
    return DecoyEstimate(single_photon_yield_lower=y1, single_photon_error_upper=e1,
                         single_photon_gain_lower=y1 * mu * math.exp(-mu))


def _validate_decoy(decoy: str) -> None:
    if decoy not in DECOY_MODES:
        raise ParameterError("decoy", decoy, "must be one of " + ", ".join(DECOY_MODES))


def raw_key_rate(params: LinkParameters, decoy: str = "infinite") -> float:
    """The GLLP expression before clamping: negative below threshold.

    Used by the optimiser, which needs to see how far below zero a setting is;
    everything user-facing calls :func:`secret_key_rate`.
    """
    _validate_decoy(decoy)
    src = params.source
    mu = src.signal_intensity
    # Saturated gains: every yield carries the receiver's availability A.
    (q_mu, q_nu, _), (e_mu, e_nu, _) = class_gains_and_errors(params)
    if decoy == "infinite":
        estimate = decoy_bounds_infinite(params)
    else:
        estimate = decoy_bounds_vacuum_weak(
            signal_gain=q_mu, decoy_gain=q_nu, signal_qber=e_mu, decoy_qber=e_nu,
            background_yield=params.background_yield * availability(params),
            signal_intensity=mu, decoy_intensity=src.decoy_intensity)
    q = sifting_factor(src.z_basis_probability)
    f = params.protocol.reconciliation_efficiency
    return q * (-q_mu * f * binary_entropy(e_mu)
                + estimate.single_photon_gain_lower
                * (1.0 - binary_entropy(estimate.single_photon_error_upper)))


def secret_key_rate(params: LinkParameters, decoy: str = "infinite") -> float:
    """Asymptotic secret key rate in bits per pulse, never negative.

    Args:
        params: the link; ``source.signal_intensity`` is mu and, for
            ``decoy="vacuum-weak"``, ``source.decoy_intensity`` is nu.
        decoy: ``"infinite"`` (GLLP with Y1, e1 known exactly) or ``"vacuum-weak"``
            (Ma et al. 2005 bounds from the vacuum and one weak decoy; the vacuum
            class is taken as a true vacuum whose gain is Y0; a nonzero
            ``vacuum_intensity`` is handled by the finite-key analysis).
    """
    return max(0.0, raw_key_rate(params, decoy))


def infinite_decoy_rate_array(params: LinkParameters, signal_intensity: ArrayLike
                              ) -> NDArray[np.float64]:
    """Unclamped infinite-decoy rate for many signal intensities at once (optimiser grid).

    The receiver's availability is recomputed for each signal intensity (a stronger
    signal saturates the detectors sooner).
    """
    mu = np.asarray(signal_intensity, dtype=np.float64)
    src = params.source
    eta = params.transmittance
    y0 = params.background_yield
    e_d = params.protocol.misalignment_error
    q_mu = _gain(eta, y0, mu)
    e_mu = _error_rate(eta, y0, e_d, mu)
    y1 = y0 + eta - y0 * eta
    e1 = (BACKGROUND_ERROR_RATE * y0 + e_d * eta) / y1
    others = (src.decoy_probability * float(_gain(eta, y0, src.decoy_intensity))
              + src.vacuum_probability * float(_gain(eta, y0, src.vacuum_intensity)))
    available = detector_availability(dead_gates(params), params.detector.detector_pixels,
                                      src.signal_probability * q_mu + others)
    q = sifting_factor(src.z_basis_probability)
    f = params.protocol.reconciliation_efficiency
    return q * available * (-q_mu * f * _h2_clamped(e_mu)
                            + y1 * mu * np.exp(-mu) * (1.0 - binary_entropy(min(e1, 0.5))))


def plob_bound(transmittance: float) -> float:
    """PLOB bound -log2(1 - eta) secret bits per channel use (Pirandola, Laurenza,
    Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017)) of a pure-loss channel.

    ``transmittance`` is the channel's eta in [0, 1]; eta = 1 gives infinity.
    """
    eta = float(transmittance)
    if not math.isfinite(eta) or eta < 0.0 or eta > 1.0:
        raise ParameterError("transmittance", transmittance, "must be in [0, 1]")
    if eta == 1.0:
        return math.inf
    return -math.log1p(-eta) / math.log(2.0)


def fibre_plob_bits_per_pulse(params: LinkParameters) -> float:
    """PLOB bound of the fibre (eta_ch, insertion loss included; Bob's detectors are
    not part of the channel) in bits per channel use."""
    return plob_bound(params.fibre.transmittance)


def one_way_key_fraction(qber: float, reconciliation_efficiency: float = 1.0) -> float:
    """1 - H2(e) - f H2(e): BB84 key fraction per sifted bit of a single-photon source
    with one-way post-processing (Shor-Preskill 2000); negative above threshold."""
    h = binary_entropy(min(max(float(qber), 0.0), 1.0))
    return 1.0 - h - reconciliation_efficiency * h


def qber_threshold(reconciliation_efficiency: float = 1.0) -> float:
    """QBER at which :func:`one_way_key_fraction` reaches 0.

    With f = 1 this is the Shor-Preskill threshold 1 - 2 H2(e) = 0, e = 11.00 %.
    """
    f = float(reconciliation_efficiency)
    if not math.isfinite(f) or f < 1.0:
        raise ParameterError("reconciliation_efficiency", reconciliation_efficiency,
                             "must be a number >= 1")
    from scipy.optimize import brentq  # only here: keeps `import corridor.link.rates` light

    return float(brentq(one_way_key_fraction, 1e-12, 0.5, args=(f,), xtol=1e-14))
