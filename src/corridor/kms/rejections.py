"""Aggregated audit entries for floods of refused requests.

A refused request changes nothing, yet with an fsync per audit line a flood of them
(a misbehaving SAE, a quota hit in a loop) costs one disk flush each and drowns the
trail. :class:`RejectionAggregator` sits in front of the audit log (an
:class:`~corridor.kms.interface.EventSink` wrapping another) and, per
``(kme_id, endpoint, sae_id, reason, status_code, quota)`` (``quota`` only on
quota refusals):

- writes the first ``request_rejected`` at once, unchanged (its write may fail, and the
  KME then answers 503 as before);
- counts the next ones for ``interval_s`` without writing them, then writes one
  ``requests_rejected_summary`` entry with those fields, ``count`` (rejections since
  the last line of that key) and ``interval_s``; a key whose interval passed without a
  rejection is forgotten, so its next rejection is written at once again.

So each key costs at most one line per interval, and the lines' counts add up to every
rejection: ``1`` for each ``request_rejected`` plus each summary's ``count``. Summaries
are written by :meth:`flush` (call it periodically; :meth:`close` writes every pending
count, as at shutdown) and by the next event that finds an interval over. Every other
event, and a ``request_rejected`` that closes a delivery's write-ahead intent (it carries
a ``delivery_id``, see :mod:`corridor.kms.manager`), passes through untouched. Metrics
do not go through this sink: they count every rejection.

At most ``max_keys`` keys are tracked; beyond that a rejection is written at once
(no unbounded memory whatever the callers send). After a write to the wrapped sink
failed, nothing is held back until one succeeds again: a held-back rejection would
look written to the KeyManager, which would then clear its storage alarm although the
audit trail still cannot be written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from corridor.kms.interface import EventSink

EVENT_REJECTED = "request_rejected"
EVENT_SUMMARY = "requests_rejected_summary"
_KEY_FIELDS = ("kme_id", "endpoint", "sae_id", "reason", "status_code", "quota")


class _Pending:
    __slots__ = ("count", "fields", "since_s")

    def __init__(self, fields: dict[str, Any], since_s: float) -> None:
        self.fields = fields
        self.since_s = since_s
        self.count = 0


class RejectionAggregator:
    """An event sink that aggregates ``request_rejected`` entries (module docstring).

    Args:
        sink: where entries go (the audit log).
        interval_s: most one line per key per interval.
        clock: monotonic seconds (injected in tests).
        max_keys: keys tracked at once.
    """

    def __init__(self, sink: EventSink, *, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.sink = sink
        self.interval_s = interval_s
        self._clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._keys: dict[tuple[Any, ...], _Pending] = {}
        self._last_scan_s = -float("inf")
        self._sink_failing = False

    def emit(self, event: str, **fields: Any) -> None:
        """Forward ``event``, or count it if it is a repeated rejection."""
        if event == EVENT_REJECTED and "delivery_id" not in fields:
            key = tuple(fields.get(name) for name in _KEY_FIELDS)
            with self._lock:
                pending = self._keys.get(key)
                if pending is not None and not self._sink_failing \
                        and self._clock() - pending.since_s < self.interval_s:
                    pending.count += 1
                    return
            self.flush()
            self._forward(event, fields)
            with self._lock:
                if key not in self._keys and len(self._keys) < self.max_keys:
                    self._keys[key] = _Pending(
                        {name: fields[name] for name in _KEY_FIELDS if name in fields},
                        self._clock())
            return
        self.flush()
        self._forward(event, fields)

    def _forward(self, event: str, fields: dict[str, Any]) -> None:
        try:
            self.sink.emit(event, **fields)
        except BaseException:
            self._sink_failing = True
            raise
        self._sink_failing = False

    def flush(self, *, force: bool = False) -> int:
        """Write the summaries whose interval is over (all of them with ``force``);
        returns how many lines were written."""
        now = self._clock()
        due: list[tuple[Any, _Pending]] = []
        with self._lock:
            # Scanning every key on every event would cost O(keys) per line; a summary
            # may be written up to a second (or an interval, if shorter) late.
            if not force and now - self._last_scan_s < min(1.0, self.interval_s):
                return 0
            self._last_scan_s = now
            for key, pending in list(self._keys.items()):
                if force or now - pending.since_s >= self.interval_s:
                    if pending.count:
                        summary = _Pending(pending.fields, pending.since_s)
                        summary.count = pending.count
                        due.append((key, summary))
                        pending.count, pending.since_s = 0, now
                        if force:
                            del self._keys[key]
                    else:
                        del self._keys[key]
        for index, (_, pending) in enumerate(due):
            try:
                self._forward(EVENT_SUMMARY, {**pending.fields, "count": pending.count,
                                              "interval_s": self.interval_s})
            except BaseException:
                # Not written: the counts go back, to be summarised later, so that the
                # summaries still add up to every rejection.
                with self._lock:
                    for key, unwritten in due[index:]:
                        kept = self._keys.setdefault(key, _Pending(unwritten.fields,
                                                                   unwritten.since_s))
                        kept.count += unwritten.count
                        kept.since_s = min(kept.since_s, unwritten.since_s)
                raise
        return len(due)

    def close(self) -> None:
        """Write every pending count (at shutdown, before the audit log closes)."""
        self.flush(force=True)

    def __repr__(self) -> str:
        return f"RejectionAggregator(keys={len(self._keys)}, interval_s={self.interval_s})"
