"""Warnings that repeat while a condition lasts, logged once per window with a count.

A corridor starting up retries what cannot work yet (a hybrid session whose pool is
still empty, an RSU stream waiting for its first QKD key) several times a second; a
warning per try buried everything else on stderr. :class:`WarningThrottle` logs the
first warning of each *kind* (a hashable the caller names: the SAE pair and the
reason), hides the same kind for ``window_s``, and then logs the next one with the
number it hid: ``... (12 more like this not shown since the last such line)``. A
different kind is never hidden, errors are never throttled, and what was hidden stays
counted wherever the caller also counts or audits it (this class only thins stderr).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_WINDOW_S = 60.0
_MAX_KINDS = 4096  # kinds remembered at once; the least recently shown go first


class WarningThrottle:
    """``warning(kind, msg, *args)``: :meth:`logging.Logger.warning`, at most once per
    ``window_s`` for each ``kind``, with the count of those it did not show."""

    def __init__(self, logger: logging.Logger, window_s: float = DEFAULT_WINDOW_S, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s = {window_s!r}: must be above 0")
        self.logger = logger
        self.window_s = float(window_s)
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> (shown at, hidden), oldest shown first
        self._kinds: collections.OrderedDict[Hashable, tuple[float, int]] = \
            collections.OrderedDict()

    def warning(self, kind: Hashable, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` as a warning unless ``kind`` was shown less than
        ``window_s`` ago; returns whether it was logged."""
        now = self._clock()
        with self._lock:
            shown_at, hidden = self._kinds.get(kind, (None, 0))
            if shown_at is not None and now - shown_at < self.window_s:
                self._kinds[kind] = (shown_at, hidden + 1)
                return False
            self._kinds[kind] = (now, 0)
            self._kinds.move_to_end(kind)
            while len(self._kinds) > _MAX_KINDS:  # forgetting a kind only shows it again
                self._kinds.popitem(last=False)
        if hidden:
            msg += " (%d more like this not shown since the last such line)"
            args = (*args, hidden)
        self.logger.warning(msg, *args, stacklevel=2)
        return True


__all__ = ["DEFAULT_WINDOW_S", "WarningThrottle"]
