"""Process-wide settings for the long-running services (``corridor kme serve``,
``corridor up``): the garbage collector's schedule.

A KME under load allocates a few container objects per key it serves (reservations,
delivered keys, the dicts of its JSON answers). With CPython's default thresholds
(700, 10, 10) that starts a young collection every few hundred keys and a full one,
which walks every object the process holds, every hundred young ones: on
``bench_kme_serve.sh`` the collector took about 10 % of the master KME's CPU and its
full passes put 190-210 ms into the 99th percentile of ``number=100`` requests
(docs/benchmarks.md). :func:`tune_gc_for_serving` moves everything built at start-up
into the permanent generation (:func:`gc.freeze`, never scanned again) and runs young
collections every 50,000 allocations; reference counting still frees nearly
everything the request path allocates at once, and cycles are still collected.
"""

from __future__ import annotations

import gc

#: Young-generation threshold, and how many collections of each generation start one of
#: the next: (allocations, young per middle, middle per full).
SERVING_GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc_for_serving() -> None:
    """Freeze what exists now and space out collections (module docstring). Call once,
    after the service has started and before it takes load."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
