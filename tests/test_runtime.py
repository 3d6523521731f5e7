"""Tests of corridor.runtime: the collector's schedule for serving processes."""

from __future__ import annotations

import gc

from corridor.runtime import SERVING_GC_THRESHOLDS, tune_gc_for_serving


def test_tuning_freezes_start_up_objects_and_spaces_out_collections() -> None:
    before = gc.get_threshold()
    try:
        kept = [[index] for index in range(1000)]  # start-up state the service keeps
        tune_gc_for_serving()
        assert gc.get_threshold() == SERVING_GC_THRESHOLDS
        assert gc.get_freeze_count() >= len(kept)
        # Cycles are still collected: the collector is spaced out, not switched off.
        assert gc.isenabled()
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
