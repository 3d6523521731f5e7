"""Continuous health tests of a noise source: NIST SP 800-90B section 4.4.

This module owns the two approved continuous tests for 8-bit samples (one byte of the
QRNG is one sample) and their cutoffs:

* the Repetition Count Test (section 4.4.1): a run of ``C`` identical samples fails,
  with ``C = 1 + ceil(-log2(alpha) / H)``;
* the Adaptive Proportion Test (section 4.4.2): in each window of ``W`` samples (512
  for non-binary samples), the first sample of the window occurring ``C`` times or more
  fails, with ``C = 1 + CRITBINOM(W, 2^-H, 1 - alpha)``.

``H`` is the min-entropy per sample that the source is claimed to have and ``alpha``
the false-positive probability per sample, ``2^-20`` as section 4.4 recommends. The
tests are continuous: their state carries over from one :meth:`HealthTests.feed` to
the next, so a stuck run split over two batches is still caught. Nothing here keeps or
reports sample values, only counts, positions and cutoffs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from corridor.errors import CorridorError, ParameterError

# SP 800-90B section 4.4: alpha = 2^-20 is the recommended false-positive probability.
DEFAULT_ALPHA_EXPONENT = 20
# SP 800-90B section 4.4.2: W = 1024 for binary samples, 512 for all others.
APT_WINDOW_NON_BINARY = 512
APT_WINDOW_BINARY = 1024
BITS_PER_SAMPLE = 8


def _check_entropy(min_entropy_bits_per_sample: float, bits_per_sample: int) -> float:
    value = float(min_entropy_bits_per_sample)
    if not (0.0 < value <= bits_per_sample) or math.isnan(value):
        raise ParameterError("min_entropy_bits_per_sample", min_entropy_bits_per_sample,
                             f"a number in (0, {bits_per_sample}]")
    return value


def rct_cutoff(min_entropy_bits_per_sample: float, *,
               alpha_exponent: int = DEFAULT_ALPHA_EXPONENT,
               bits_per_sample: int = BITS_PER_SAMPLE) -> int:
    """Repetition Count Test cutoff (SP 800-90B section 4.4.1).

    ``C = 1 + ceil(-log2(alpha) / H)`` with ``alpha = 2^-alpha_exponent``: a run of ``C``
    identical samples has probability at most ``alpha`` for a source of min-entropy ``H``.
    """
    h = _check_entropy(min_entropy_bits_per_sample, bits_per_sample)
    return 1 + math.ceil(alpha_exponent / h)


def apt_cutoff(min_entropy_bits_per_sample: float, *, window: int = APT_WINDOW_NON_BINARY,
               alpha_exponent: int = DEFAULT_ALPHA_EXPONENT,
               bits_per_sample: int = BITS_PER_SAMPLE) -> int:
    """Adaptive Proportion Test cutoff (SP 800-90B section 4.4.2).

    ``C = 1 + CRITBINOM(W, 2^-H, 1 - alpha)``, where CRITBINOM(n, p, q) is the smallest
    ``k`` with ``P(Binomial(n, p) <= k) >= q``: scipy's ``binom.ppf(q, n, p)``.
    """
    h = _check_entropy(min_entropy_bits_per_sample, bits_per_sample)
    if window < 2:
        raise ParameterError("window", window, "an integer of at least 2")
    quantile = binom.ppf(1.0 - 2.0 ** -alpha_exponent, window, 2.0 ** -h)
    return 1 + int(quantile)


@dataclass(frozen=True)
class HealthFailure:
    """One failed test: which, where in the tested stream, and the count it reached.

    Attributes:
        test: ``"repetition_count"`` or ``"adaptive_proportion"``.
        sample_index: 0-based index, in all samples fed so far, of the sample at which
            the failure was detected (the last of the run, or the end of the window).
        count: the run length (RCT) or the number of occurrences in the window (APT).
        cutoff: the cutoff that ``count`` reached.
    """

    test: str
    sample_index: int
    count: int
    cutoff: int


class HealthTestFailed(CorridorError):
    """The noise source failed a continuous health test; its output was discarded."""

    def __init__(self, failure: HealthFailure) -> None:
        self.failure = failure
        super().__init__(f"QRNG health test failed: {failure.test} count {failure.count} "
                         f"reached cutoff {failure.cutoff} at sample {failure.sample_index}")


class HealthTests:
    """The RCT and the APT run together, continuously, over a stream of byte samples.

    Args:
        min_entropy_bits_per_sample: the claimed min-entropy ``H`` per byte.
        window: the APT window ``W`` (512 for 8-bit samples).
        alpha_exponent: ``alpha = 2^-alpha_exponent`` (20 recommended).

    Counters (public, never sample values): ``samples_tested``, ``windows_completed``,
    ``rct_failures``, ``apt_failures``, ``longest_run`` and ``max_window_count`` (the
    highest APT count seen in a completed window).
    """

    def __init__(self, min_entropy_bits_per_sample: float, *,
                 window: int = APT_WINDOW_NON_BINARY,
                 alpha_exponent: int = DEFAULT_ALPHA_EXPONENT) -> None:
        self.min_entropy_bits_per_sample = _check_entropy(min_entropy_bits_per_sample,
                                                          BITS_PER_SAMPLE)
        self.window = window
        self.alpha_exponent = alpha_exponent
        self.rct_cutoff = rct_cutoff(self.min_entropy_bits_per_sample,
                                     alpha_exponent=alpha_exponent)
        self.apt_cutoff = apt_cutoff(self.min_entropy_bits_per_sample, window=window,
                                     alpha_exponent=alpha_exponent)
        self.samples_tested = 0
        self.windows_completed = 0
        self.rct_failures = 0
        self.apt_failures = 0
        self.longest_run = 0
        self.max_window_count = 0
        self.reset()

    def reset(self) -> None:
        """Restart both tests (after a failure, the next sample starts afresh)."""
        self._run_value = -1
        self._run_length = 0
        self._apt_value = -1
        self._apt_count = 0
        self._apt_filled = 0

    def feed(self, samples: bytes | memoryview) -> HealthFailure | None:
        """Test ``samples``; the first failure, or None when both tests passed.

        On a failure the state is reset, the failure counted, and the samples after it
        left untested (``samples_tested`` stops at the failing sample); the caller must
        discard the batch (SP 800-90B section 4.3: output of a failed source is not used).
        """
        data = np.frombuffer(samples, dtype=np.uint8)
        if data.size == 0:
            return None
        base = self.samples_tested
        carried = (self._run_value, self._run_length)
        failure = self._repetition_count(data, base)
        if failure is not None:  # the APT sees only the samples up to the RCT failure
            data = data[:failure.sample_index - base + 1]
        apt = self._adaptive_proportion(data, base)
        if apt is not None:
            failure = apt
        tested = data if failure is None else data[:failure.sample_index - base + 1]
        # Over the samples tested only: a stuck source reads C, not the batch's length.
        self.longest_run = max(self.longest_run, _longest_run(tested, *carried))
        self.samples_tested += int(data.size)
        if failure is not None:
            # samples after the failure are discarded untested
            self.samples_tested = failure.sample_index + 1
            if failure.test == "repetition_count":
                self.rct_failures += 1
            else:
                self.apt_failures += 1
            self.reset()
        return failure

    def _repetition_count(self, data: np.ndarray, base: int) -> HealthFailure | None:
        """SP 800-90B section 4.4.1, vectorised over the runs of ``data``."""
        starts_effective, lengths = _runs(data, self._run_value, self._run_length)
        self._run_value = int(data[-1])
        self._run_length = int(lengths[-1])
        over = np.flatnonzero(lengths >= self.rct_cutoff)
        if over.size == 0:
            return None
        first = int(over[0])
        # the sample at which the run reached C
        index = int(starts_effective[first]) + self.rct_cutoff - 1
        return HealthFailure("repetition_count", base + index, self.rct_cutoff,
                             self.rct_cutoff)

    def _adaptive_proportion(self, data: np.ndarray, base: int) -> HealthFailure | None:
        """SP 800-90B section 4.4.2 over non-overlapping windows of ``W`` samples.

        ``B`` counts the window's first sample ``A`` itself and every later sample of the
        window equal to it; ``B >= C`` fails. A failure is reported at the end of the
        window (or of the data, for a window still open), which changes when it is seen,
        not whether.
        """
        position = 0
        n = int(data.size)
        while position < n:
            if self._apt_filled == 0:
                self._apt_value = int(data[position])
            take = min(self.window - self._apt_filled, n - position)
            chunk = data[position:position + take]
            self._apt_count += int(np.count_nonzero(chunk == self._apt_value))
            self._apt_filled += take
            position += take
            if self._apt_count >= self.apt_cutoff:
                return HealthFailure("adaptive_proportion", base + position - 1,
                                     self._apt_count, self.apt_cutoff)
            if self._apt_filled == self.window:
                self.windows_completed += 1
                self.max_window_count = max(self.max_window_count, self._apt_count)
                self._apt_count = 0
                self._apt_filled = 0
        return None

    def summary(self) -> dict[str, int | float]:
        """Cutoffs and counters, enough for a reader to recompute the verdict."""
        return {
            "min_entropy_bits_per_sample": self.min_entropy_bits_per_sample,
            "alpha_exponent": self.alpha_exponent,
            "rct_cutoff": self.rct_cutoff,
            "apt_window": self.window,
            "apt_cutoff": self.apt_cutoff,
            "samples_tested": self.samples_tested,
            "windows_completed": self.windows_completed,
            "rct_failures": self.rct_failures,
            "apt_failures": self.apt_failures,
            "longest_run": self.longest_run,
            "max_window_count": self.max_window_count,
        }


def _runs(data: np.ndarray, carried_value: int, carried_length: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal samples in ``data`` starts and how long it is; the first
    continues the previous batch's last run (``carried_value`` repeated
    ``carried_length`` times), so its start may be negative. ``data`` is not empty."""
    starts = np.flatnonzero(np.concatenate(([True], data[1:] != data[:-1])))
    lengths = np.diff(np.append(starts, data.size))
    if int(data[0]) == carried_value:  # the run from the previous batch goes on
        lengths[0] += carried_length
        starts[0] -= carried_length
    return starts, lengths


def _longest_run(data: np.ndarray, carried_value: int, carried_length: int) -> int:
    """The longest run in ``data`` (continuing the previous batch's, see :func:`_runs`)."""
    return int(_runs(data, carried_value, carried_length)[1].max()) if data.size else 0
