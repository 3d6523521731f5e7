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
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from corridor.errors import ParameterError
from corridor.link.finite_key import LinkConstants, finite_key_rate, raw_finite_key_rate
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


def _rate(params: LinkParameters, decoy: str, block_pulses: int | None) -> float:
    if block_pulses is None:
        return secret_key_rate(params, decoy)
    return finite_key_rate(params, block_pulses)


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
                     warm_only: bool = False) -> LinkParameters:
    """Nelder-Mead over (mu1, mu2, p_Z, p1, p2), infeasible points penalised.

    Starts from the given settings and from typical optima, unless ``warm_only``
    (the given settings are already the optimum of a nearby distance). The key basis
    Z is chosen at least as often as the test basis X (p_Z >= 1/2).
    """
    link = LinkConstants.of(params)
    mu3 = params.source.vacuum_intensity
    # The finite-key rate scales like eta; dividing by it keeps tolerances meaningful
    # from 0 km to the cutoff.
    scale = max(params.transmittance, 1e-300)
    infeasible = 1e6

    def objective(x: np.ndarray) -> float:
        mu1, mu2, p_z, p1, p2 = (float(v) for v in x)
        p3 = 1.0 - p1 - p2
        if (mu2 <= mu3 or mu1 <= mu2 + mu3 or mu1 > MAX_SIGNAL_INTENSITY
                or not 0.5 <= p_z <= 1.0 - _MIN_PROBABILITY
                or min(p1, p2, p3) < _MIN_PROBABILITY):
            return infeasible
        return -raw_finite_key_rate(link, (mu1, mu2, mu3), (p1, p2, p3), p_z,
                                    float(block_pulses)) / scale

    best_x: np.ndarray | None = None
    best_value = math.inf
    starts = _finite_start_points(params)
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
             warm_start: bool = False) -> tuple[LinkParameters, float]:
    """The best settings at ``params.fibre.length_km`` and the rate they give.

    Args:
        params: the link; its source settings are the starting point.
        decoy: ``"infinite"`` or ``"vacuum-weak"`` for the asymptotic rate. The finite
            key always uses signal + decoy + vacuum (Lim et al. 2014).
        block_pulses: N for the finite-key rate; None for the asymptotic rate.
        warm_start: the given settings are the optimum of a nearby link (the last
            distance of a sweep): search from them only, not also from a typical start.

    Returns:
        (optimised parameters, secret key rate in bits per pulse). The rate is never
        below that of the given settings.
    """
    _check(decoy, block_pulses)
    return _optimise(params, decoy, block_pulses, warm_only=warm_start)


def _optimise(params: LinkParameters, decoy: str, block_pulses: int | None,
              warm_only: bool) -> tuple[LinkParameters, float]:
    if block_pulses is None:
        candidate = _optimise_signal(params, decoy)
    else:
        candidate = _optimise_finite(params, block_pulses, warm_only)
    given_rate = _rate(params, decoy, block_pulses)
    candidate_rate = _rate(candidate, decoy, block_pulses)
    if candidate_rate > given_rate:
        return candidate, candidate_rate
    return params, given_rate


def max_distance_km(params: LinkParameters, decoy: str = "infinite",
                    block_pulses: int | None = None, optimise_settings: bool = True
                    ) -> float:
    """Fibre length at which the (optimised) secret key rate reaches zero, in km.

    Bisection on "rate > 0" to 10 m, each step re-optimising the settings (warm-started
    from the last distance that still gave key) unless ``optimise_settings`` is False.
    Returns 0.0 when there is no key even at 0 km, and ``math.inf`` when the rate is
    still positive at 10 000 km (a lossless or noiseless link).
    """
    _check(decoy, block_pulses)

    def best_at(length_km: float, start: LinkParameters,
                warm_only: bool = True) -> LinkParameters | None:
        at = start.with_length(length_km)
        if optimise_settings:
            at, rate = _optimise(at, decoy, block_pulses, warm_only)
        else:
            rate = _rate(at, decoy, block_pulses)
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
