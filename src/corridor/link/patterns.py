"""Detector response of a BB84 receiver: the probabilities of its three click patterns.

This module owns the pattern table T[c, a, b, k] (PHYSICS.md): the probability that a
pulse of intensity class c, prepared in Alice's basis a and measured in Bob's basis b,
gives pattern k (only the detector of Alice's bit clicks, only the other one, both).
The simulator (:mod:`corridor.link.simulator`) samples from it and the attacks
(:mod:`corridor.link.attacks`) replace it; both import it from here, so neither imports
the other.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from corridor.link.params import LinkParameters

#: Detector patterns, last axis of the pattern table.
PATTERN_ALICE_BIT, PATTERN_OTHER_BIT, PATTERN_DOUBLE = 0, 1, 2


def _click(dark_count_probability: float, mean_photons: NDArray[np.float64]
           ) -> NDArray[np.float64]:
    """P(a detector clicks) = 1 - (1 - p_dark) exp(-mean_photons), via expm1 so that
    tiny probabilities keep their digits."""
    if dark_count_probability >= 1.0:
        return np.ones_like(mean_photons)
    return np.asarray(-np.expm1(math.log1p(-dark_count_probability) - mean_photons))


def poisson_patterns(mean_detected_photons: NDArray[np.float64] | float,
                     alice_bit_fraction: NDArray[np.float64] | float,
                     dark_count_probability: float) -> NDArray[np.float64]:
    """Pattern probabilities when a Poisson number of photons reaches the detectors.

    Args:
        mean_detected_photons: mean number of photons detected (eta * l).
        alice_bit_fraction: r, probability that a detected photon goes to the detector
            of Alice's bit.
        dark_count_probability: dark count probability per detector and gate.

    Returns:
        Array with a trailing axis of three: P(only Alice's-bit detector clicks),
        P(only the other clicks), P(both click).
    """
    m = np.asarray(mean_detected_photons, dtype=np.float64)
    r = np.asarray(alice_bit_fraction, dtype=np.float64)
    a = _click(dark_count_probability, m * r)
    b = _click(dark_count_probability, m * (1.0 - r))
    silent_a = 1.0 - a
    silent_b = 1.0 - b
    return np.stack(np.broadcast_arrays(a * silent_b, b * silent_a, a * b), axis=-1)


def fixed_photon_patterns(photons: NDArray[np.int64], detection_efficiency: float,
                          alice_bit_fraction: float, dark_count_probability: float
                          ) -> NDArray[np.float64]:
    """Pattern probabilities when exactly ``photons`` photons reach Bob's receiver.

    Each photon is detected with probability ``detection_efficiency`` and then goes
    to Alice's-bit detector with probability r; photons are independent (multinomial),
    dark counts independent per detector.
    """
    k = np.asarray(photons, dtype=np.float64)
    log_keep = math.log1p(-dark_count_probability) if dark_count_probability < 1.0 else -math.inf

    def log_all_missed(probability: float) -> NDArray[np.float64]:
        # k ln(1 - probability), with 0 photons always missing (no 0 * inf).
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(k > 0, k * np.log1p(-probability), 0.0)

    # Computed through expm1 so that tiny probabilities (dark counts) keep their digits.
    click_a = -np.expm1(log_keep + log_all_missed(detection_efficiency * alice_bit_fraction))
    click_b = -np.expm1(log_keep
                        + log_all_missed(detection_efficiency * (1.0 - alice_bit_fraction)))
    click_any = -np.expm1(2.0 * log_keep + log_all_missed(detection_efficiency))
    only_a = click_any - click_b
    only_b = click_any - click_a
    both = click_a + click_b - click_any
    return np.maximum(np.stack([only_a, only_b, both], axis=-1), 0.0)


def alice_bit_fraction(params: LinkParameters, alice_basis: int, bob_basis: int) -> float:
    """r: probability that a photon prepared by Alice ends at the detector of her bit."""
    if alice_basis == bob_basis:
        return 1.0 - params.protocol.misalignment_error
    return 0.5


def honest_pattern_table(params: LinkParameters) -> NDArray[np.float64]:
    """T[c, a, b, k]: P(pattern k | class c, Alice basis a, Bob basis b) without Eve."""
    eta = params.transmittance
    table = np.empty((3, 2, 2, 3))
    for c, intensity in enumerate(params.source.intensities):
        for a in range(2):
            for b in range(2):
                table[c, a, b] = poisson_patterns(eta * intensity,
                                                  alice_bit_fraction(params, a, b),
                                                  params.detector.dark_count_probability)
    return table
