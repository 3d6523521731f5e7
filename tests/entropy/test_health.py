"""SP 800-90B section 4.4 health tests: cutoffs against the standard, stuck, biased and
good sources, and continuity across batches."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from corridor.entropy.health import HealthTests, apt_cutoff, rct_cutoff
from corridor.errors import ParameterError

# SP 800-90B (January 2018), section 4.4.2, Table 2: APT cutoffs for alpha = 2^-20.
TABLE_2_NON_BINARY_W512 = {0.5: 410, 1: 311, 2: 177, 4: 62, 8: 13}
TABLE_2_BINARY_W1024_H1 = 589


@pytest.mark.parametrize(("h", "expected"), sorted(TABLE_2_NON_BINARY_W512.items()))
def test_apt_cutoff_matches_table_2_for_w512(h: float, expected: int) -> None:
    assert apt_cutoff(h, window=512) == expected


def test_apt_cutoff_matches_table_2_binary_window() -> None:
    assert apt_cutoff(1, window=1024, bits_per_sample=1) == TABLE_2_BINARY_W1024_H1


@pytest.mark.parametrize(("h", "expected"), [(0.5, 41), (1, 21), (2, 11), (6, 5), (7, 4),
                                             (8, 4)])
def test_rct_cutoff_is_one_plus_ceil_20_over_h(h: float, expected: int) -> None:
    assert rct_cutoff(h) == expected


@settings(max_examples=60, deadline=None)
@given(h=st.floats(min_value=0.05, max_value=8.0), window=st.sampled_from([64, 512, 1024]))
def test_apt_cutoff_is_the_critical_binomial_value(h: float, window: int) -> None:
    cutoff = apt_cutoff(h, window=window)
    q = 1 - 2.0 ** -20
    # C - 1 is the smallest k with P(X <= k) >= 1 - alpha (CRITBINOM)
    assert binom.cdf(cutoff - 1, window, 2.0 ** -h) >= q
    assert cutoff - 2 < 0 or binom.cdf(cutoff - 2, window, 2.0 ** -h) < q


@settings(max_examples=60, deadline=None)
@given(h1=st.floats(min_value=0.05, max_value=8.0), h2=st.floats(min_value=0.05, max_value=8.0))
def test_cutoffs_fall_as_claimed_entropy_rises(h1: float, h2: float) -> None:
    low, high = sorted((h1, h2))
    assert rct_cutoff(low) >= rct_cutoff(high)
    assert apt_cutoff(low) >= apt_cutoff(high)


@pytest.mark.parametrize("h", [0, -1, 8.5, math.nan])
def test_claimed_entropy_outside_range_is_refused(h: float) -> None:
    with pytest.raises(ParameterError, match="min_entropy_bits_per_sample"):
        HealthTests(h)


def test_stuck_source_fails_rct_at_the_cutoff() -> None:
    tests = HealthTests(6.0)
    failure = tests.feed(bytes([0x5A]) * 2048)
    assert failure is not None and failure.test == "repetition_count"
    assert failure.cutoff == 5 and failure.sample_index == 4
    assert tests.rct_failures == 1 and tests.apt_failures == 0
    # The longest run counts the samples tested (up to the failure), not the 2048
    # discarded untested after it.
    assert tests.longest_run == 5 and tests.samples_tested == 5


def test_rct_run_split_over_two_batches_is_caught() -> None:
    tests = HealthTests(6.0)
    head = bytes(range(1, 100)) + bytes([0]) * 3
    assert tests.feed(head) is None
    failure = tests.feed(bytes([0]) * 2 + bytes(range(1, 50)) + bytes([7]) * 40)
    assert failure is not None and failure.test == "repetition_count"
    assert failure.sample_index == len(head) + 1
    assert tests.longest_run == 5   # 3 + 2 across the batches; the 40 sevens untested


def test_run_one_short_of_the_cutoff_passes() -> None:
    tests = HealthTests(6.0)
    data = b"".join(bytes([v]) * 4 for v in range(256))  # runs of C - 1 = 4
    assert tests.feed(data) is None
    assert tests.longest_run == 4


def _biased(windows: int, share_every: int) -> bytes:
    """Windows that start with 0 and hold 0 every ``share_every`` samples, no runs."""
    window = np.tile(np.arange(1, 256, dtype=np.uint8), 3)[:512]
    window[::share_every] = 0
    return np.tile(window, windows).tobytes()


def test_biased_source_fails_apt_not_rct() -> None:
    tests = HealthTests(6.0)  # APT cutoff 25 of 512
    data = _biased(4, share_every=16)  # 32 zeros per window
    failure = tests.feed(data)
    assert failure is not None and failure.test == "adaptive_proportion"
    assert failure.count >= failure.cutoff == 25
    assert tests.apt_failures == 1 and tests.rct_failures == 0


def test_proportion_just_under_the_cutoff_passes() -> None:
    tests = HealthTests(6.0)
    data = _biased(8, share_every=22)  # 24 zeros per window: C - 1
    assert tests.feed(data) is None
    assert tests.max_window_count == 24 and tests.windows_completed == 8


def test_apt_window_split_over_batches_is_caught() -> None:
    tests = HealthTests(6.0)
    data = _biased(1, share_every=16)
    assert tests.feed(data[:300]) is None  # 19 zeros so far
    failure = tests.feed(data[300:])
    assert failure is not None and failure.test == "adaptive_proportion"


def test_good_source_passes_many_windows() -> None:
    # False-alarm rate for a full-entropy source at H = 6 claimed: RCT 2^-32 per
    # sample (a run of 5), APT P(1 + Binomial(511, 1/256) >= 25) ~ 2^-58.5 per window; over
    # 2^20 samples the chance of a false alarm here is about 2^-12.
    tests = HealthTests(6.0)
    for _ in range(16):
        assert tests.feed(os.urandom(65536)) is None
    assert tests.windows_completed == 2048
    assert tests.samples_tested == 1 << 20
    assert tests.rct_failures == tests.apt_failures == 0


def test_false_alarm_rate_of_a_source_at_the_claimed_entropy_is_at_most_alpha() -> None:
    # A source of exactly 1 bit of min-entropy per byte (values 0 and 1), tested with
    # alpha = 2^-6 so that false alarms are frequent enough to count.
    rng = np.random.Generator(np.random.PCG64(2024))
    tests = HealthTests(1.0, alpha_exponent=6)
    samples = rng.integers(0, 2, size=400_000, dtype=np.uint8)
    data = memoryview(samples.tobytes())
    while tests.samples_tested < len(data):  # go on after each failure, as a source would
        tests.feed(data[tests.samples_tested:tests.samples_tested + 4096])
    rate = tests.rct_failures / samples.size
    assert 2.0 ** -6 / 8 < rate <= 2.0 ** -6


def test_summary_reports_cutoffs_and_counts_only() -> None:
    tests = HealthTests(7.0)
    tests.feed(os.urandom(1024))
    summary = tests.summary()
    assert summary["rct_cutoff"] == 4 and summary["apt_cutoff"] == 18
    assert summary["samples_tested"] == 1024 and summary["windows_completed"] == 2
    assert tests.feed(b"") is None
