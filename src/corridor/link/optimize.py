"""Optimisation of the source settings per distance, and the maximum distance.

What is optimised, and why only that:

- Asymptotic models (``decoy="infinite"`` or ``"vacuum-weak"``): the signal intensity
  mu only. The other settings have no interior optimum asymptotically: the sifting
  factor q = p_Z^2 + (1 - p_Z)^2 grows monotonically towards 1 as p_Z -> 1, and the
  vacuum + weak decoy bound of Ma et al. (2005) tightens monotonically as nu -> 0.
  They are device settings, kept as given.
- Finite key (``block_pulses=N``, Lim et al. 2014): signal and decoy intensities,
  the Z-basis probability and the three class probabilities, because with finite
  statistics each of them trades key-basis counts against estimation precision.
  The vacuum intensity stays as given (a real vacuum is not tunable).

Only the settings change: the link's physics (loss, detectors, f, epsilons) is fixed.
The finite-key bound (``bound``: ``"lim2014"`` or ``"tightened"``,
:mod:`corridor.link.finite_key`) is part of the question, not of the search.

:func:`optimise_key_block` answers the question of Lim et al.'s Fig. 1 instead: the
block is a number of sifted key-basis detections n_Z rather than of pulses, and
eps_sec may scale with the key length (eps_sec = kappa l).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from corridor.errors import ParameterError
from corridor.link.finite_key import (
    DEFAULT_FINITE_KEY_BOUND,
    LinkConstants,
    check_bound,
    finite_key_rate,
    key_block_rate,
    raw_finite_key_rate,
)
from corridor.link.params import LinkParameters
from corridor.link.rates import (
    DECOY_MODES,
    infinite_decoy_rate_array,
    raw_key_rate,
    secret_key_rate,
)

#: Largest signal intensity searched (rates fall as mu e^-mu beyond mu ~ 1).
MAX_SIGNAL_INTENSITY = 2.0
#: Smallest class or basis probability the finite-key search may choose.
_MIN_PROBABILITY = 1e-3
#: Fibre length beyond which the search for a rate root stops (the params limit).
MAX_SEARCH_LENGTH_KM = 10_000.0
_DISTANCE_TOLERANCE_KM = 1e-2


def _check(decoy: str, block_pulses: int | None) -> None:
    if decoy not in DECOY_MODES:
        raise ParameterError("decoy", decoy, "must be one of " + ", ".join(DECOY_MODES))
    if block_pulses is not None and (isinstance(block_pulses, bool)
                                     or not isinstance(block_pulses, int) or block_pulses <= 0):
        raise ParameterError("block_pulses", block_pulses,
                             "must be a whole number of pulses above 0")


def _rate(params: LinkParameters, decoy: str, block_pulses: int | None,
          bound: str = DEFAULT_FINITE_KEY_BOUND) -> float:
    if block_pulses is None:
        return secret_key_rate(params, decoy)
    return finite_key_rate(params, block_pulses, bound)


def _optimise_signal(params: LinkParameters, decoy: str) -> LinkParameters:
    """Best mu on a grid, refined by bounded Brent around the best grid point."""
    nu = params.source.decoy_intensity
    low = max(nu * (1.0 + 1e-6), 1e-6)
    grid = np.geomspace(low, max(MAX_SIGNAL_INTENSITY, 2.0 * low), 64)
    if decoy == "infinite":
        values = infinite_decoy_rate_array(params, grid)
    else:
        values = np.array([raw_key_rate(params.with_intensities(mu), decoy) for mu in grid])
    best = int(np.argmax(values))
    left = grid[max(best - 1, 0)]
    right = grid[min(best + 1, grid.size - 1)]

    def negative_rate(mu: float) -> float:
        if decoy == "infinite":
            return -float(infinite_decoy_rate_array(params, mu))
        return -raw_key_rate(params.with_intensities(mu), decoy)

    result = minimize_scalar(negative_rate, bounds=(left, right), method="bounded",
                             options={"xatol": 1e-7 * right})
    mu = float(result.x) if -result.fun >= values[best] else float(grid[best])
    return params.with_intensities(mu)


def _finite_start_points(params: LinkParameters) -> list[np.ndarray]:
    src = params.source
    given = np.array([src.signal_intensity, src.decoy_intensity,
                      max(src.z_basis_probability, 0.5), src.signal_probability,
                      src.decoy_probability])
    mu3 = src.vacuum_intensity
    # Typical optima: large blocks at short distance (most pulses signal, key basis),
    # and small blocks or long distances (more decoys and test-basis pulses). Beyond
    # the cut-off of a start point the landscape is flat and negative, with a spurious
    # optimum at "send nothing useful", so one start is not enough.
    short = np.array([0.5, 0.15 + mu3, 0.85, 0.7, 0.2])
    long = np.array([0.65, 0.2 + mu3, 0.65, 0.15, 0.5])
    middle = np.array([0.6, 0.1 + mu3, 0.75, 0.4, 0.3])
    return [given, short, long, middle]


def _optimise_finite(params: LinkParameters, block_pulses: int,
                     warm_only: bool = False, bound: str = DEFAULT_FINITE_KEY_BOUND,
                     ) -> LinkParameters:
    """Nelder-Mead over (mu1, mu2, p_Z, p1, p2) for a block of pulses."""
    link = LinkConstants.of(params)

    def rate(mus: tuple[float, float, float], ps: tuple[float, float, float],
             p_z: float) -> float:
        return raw_finite_key_rate(link, mus, ps, p_z, float(block_pulses), bound)

    return _search_settings(params, rate, warm_only, min_z_basis_probability=0.5)


def _search_settings(params: LinkParameters,
                     rate: Callable[[tuple[float, float, float], tuple[float, float, float],
                                     float], float],
                     warm_only: bool, min_z_basis_probability: float) -> LinkParameters:
    """Nelder-Mead over (mu1, mu2, p_Z, p1, p2), infeasible points penalised.

    Starts from the given settings and from typical optima, unless ``warm_only``
    (the given settings are already the optimum of a nearby distance). For a block
    of pulses the key basis Z is chosen at least as often as the test basis X
    (``min_z_basis_probability`` 1/2); for a block of key-basis detections (Lim et
    al.'s q_x is free) small blocks at long distances want more test pulses.
    """
    mu3 = params.source.vacuum_intensity
    # The finite-key rate scales like eta; dividing by it keeps tolerances meaningful
    # from 0 km to the cutoff.
    scale = max(params.transmittance, 1e-300)
    infeasible = 1e6

    def objective(x: np.ndarray) -> float:
        mu1, mu2, p_z, p1, p2 = (float(v) for v in x)
        p3 = 1.0 - p1 - p2
        if (mu2 <= mu3 or mu1 <= mu2 + mu3 or mu1 > MAX_SIGNAL_INTENSITY
                or not min_z_basis_probability <= p_z <= 1.0 - _MIN_PROBABILITY
                or min(p1, p2, p3) < _MIN_PROBABILITY):
            return infeasible
        return -rate((mu1, mu2, mu3), (p1, p2, p3), p_z) / scale

    best_x: np.ndarray | None = None
    best_value = math.inf
    starts = _finite_start_points(params)
    if min_z_basis_probability < 0.5:
        mu3 = params.source.vacuum_intensity
        starts.append(np.array([0.5, 0.1 + mu3, 0.3, 0.05, 0.5]))
    for start in starts[:1] if warm_only else starts:
        if objective(start) >= infeasible:
            continue
        result = minimize(objective, start, method="Nelder-Mead",
                          options={"xatol": 1e-4, "fatol": 1e-8, "maxiter": 4000,
                                   "adaptive": True})
        if result.fun < best_value:
            best_value = float(result.fun)
            best_x = np.asarray(result.x)
    if best_x is None:
        return params
    mu1, mu2, p_z, p1, p2 = (float(v) for v in best_x)
    source = replace(params.source, signal_intensity=mu1, decoy_intensity=mu2,
                     z_basis_probability=p_z, signal_probability=p1, decoy_probability=p2,
                     vacuum_probability=1.0 - p1 - p2)
    return replace(params, source=source)


def optimise(params: LinkParameters, decoy: str = "infinite",
             block_pulses: int | None = None,
             warm_start: bool = False,
             bound: str = DEFAULT_FINITE_KEY_BOUND) -> tuple[LinkParameters, float]:
    """The best settings at ``params.fibre.length_km`` and the rate they give.

    Args:
        params: the link; its source settings are the starting point.
        decoy: ``"infinite"`` or ``"vacuum-weak"`` for the asymptotic rate. The finite
            key always uses signal + decoy + vacuum (Lim et al. 2014).
        block_pulses: N for the finite-key rate; None for the asymptotic rate.
        warm_start: the given settings are the optimum of a nearby link (the last
            distance of a sweep): search from them only, not also from a typical start.
        bound: finite-key bound, ``"lim2014"`` or ``"tightened"`` (ignored by the
            asymptotic models).

    Returns:
        (optimised parameters, secret key rate in bits per pulse). The rate is never
        below that of the given settings.
    """
    _check(decoy, block_pulses)
    check_bound(bound)
    return _optimise(params, decoy, block_pulses, warm_only=warm_start, bound=bound)


def optimise_key_block(params: LinkParameters, key_basis_detections: int,
                       bound: str = DEFAULT_FINITE_KEY_BOUND,
                       secrecy_per_key_bit: float | None = None
                       ) -> tuple[LinkParameters, float]:
    """Best settings for a block of ``key_basis_detections`` sifted key-basis detections.

    The question of Lim et al. 2014, Fig. 1: n_Z (their n_X) is fixed, the pulses it
    takes follow from the settings, and R = l / N. With ``secrecy_per_key_bit``
    (their kappa) eps_sec = kappa * l instead of ``params.protocol.eps_sec``
    (:func:`corridor.link.finite_key.key_block_rate`). Returns (settings, unfloored
    rate in bits per pulse, negative where there is no key).
    """
    check_bound(bound)
    if isinstance(key_basis_detections, bool) or not isinstance(key_basis_detections, int) \
            or key_basis_detections <= 0:
        raise ParameterError("key_basis_detections", key_basis_detections,
                             "must be a whole number of detections above 0")
    if secrecy_per_key_bit is not None and not 0.0 < secrecy_per_key_bit < 1.0:
        raise ParameterError("secrecy_per_key_bit", secrecy_per_key_bit, "must be in (0, 1)")
    link = LinkConstants.of(params)

    def rate(mus: tuple[float, float, float], ps: tuple[float, float, float],
             p_z: float) -> float:
        return key_block_rate(link, mus, ps, p_z, float(key_basis_detections), bound,
                              secrecy_per_key_bit)

    best = _search_settings(params, rate, warm_only=False,
                            min_z_basis_probability=_MIN_PROBABILITY)
    src = best.source
    return best, rate(src.intensities, src.class_probabilities, src.z_basis_probability)


def _optimise(params: LinkParameters, decoy: str, block_pulses: int | None,
              warm_only: bool, bound: str = DEFAULT_FINITE_KEY_BOUND
              ) -> tuple[LinkParameters, float]:
    if block_pulses is None:
        candidate = _optimise_signal(params, decoy)
    else:
        candidate = _optimise_finite(params, block_pulses, warm_only, bound)
    given_rate = _rate(params, decoy, block_pulses, bound)
    candidate_rate = _rate(candidate, decoy, block_pulses, bound)
    if candidate_rate > given_rate:
        return candidate, candidate_rate
    return params, given_rate


def max_distance_km(params: LinkParameters, decoy: str = "infinite",
                    block_pulses: int | None = None, optimise_settings: bool = True,
                    bound: str = DEFAULT_FINITE_KEY_BOUND) -> float:
    """Fibre length at which the (optimised) secret key rate reaches zero, in km.

    Bisection on "rate > 0" to 10 m, each step re-optimising the settings (warm-started
    from the last distance that still gave key) unless ``optimise_settings`` is False.
    Returns 0.0 when there is no key even at 0 km, and ``math.inf`` when the rate is
    still positive at 10 000 km (a lossless or noiseless link).
    """
    _check(decoy, block_pulses)
    check_bound(bound)

    def best_at(length_km: float, start: LinkParameters,
                warm_only: bool = True) -> LinkParameters | None:
        at = start.with_length(length_km)
        if optimise_settings:
            at, rate = _optimise(at, decoy, block_pulses, warm_only, bound)
        else:
            rate = _rate(at, decoy, block_pulses, bound)
        return at if rate > 0.0 else None

    good = best_at(0.0, params, warm_only=False)
    if good is None:
        return 0.0
    low, high = 0.0, 50.0
    while True:
        found = best_at(high, good)
        if found is None:
            break
        good, low = found, high
        if high >= MAX_SEARCH_LENGTH_KM:
            return math.inf
        high = min(2.0 * high, MAX_SEARCH_LENGTH_KM)
    while high - low > _DISTANCE_TOLERANCE_KM:
        middle = 0.5 * (low + high)
        found = best_at(middle, good)
        if found is None:
            high = middle
        else:
            good, low = found, middle
    return low
