"""The feeder that drives a key source's blocks into the two KMEs of a link.

This module owns :class:`LinkFeeder` (with :class:`FeederStats` and :class:`FeedError`).
It takes blocks from a :class:`~corridor.kms.sources.base.KeySource` and drives them
into the KeyManagers:

1. every block (key or abort) is reported once to the
   :class:`~corridor.kms.alarms.LinkMonitor`, whose ``link_block`` event carries the
   QBER, secret bits and acquisition time to the audit log and the metrics; a block is
   stored only if the verdict says ``ingest`` (a quarantined link feeds nothing);
2. both or neither: before a block is stored the feeder checks each direction's half
   against the pool capacity at *both* KMEs; a half that would not fit at either end is
   kept by neither (its stream position is not used at either end, so the two streams
   stay identical). Pools only shrink between the check and the write (reservations),
   and the feeder is the link's only writer, so a half that fits at the check fits at
   the write;
3. block IDs continue across restarts: :meth:`LinkFeeder.start` reads each KME's last
   block ID and stream end offsets from its store, re-aligns the two streams if a crash
   fell between the two writes of one block (the lagging KME's stream advances over the
   missing bytes, which it never holds: reservations over them are refused at the slave
   and burned at the master, fail closed), and asks the source to start after the
   highest block ID either KME has seen. A block ID is never reused.

With only one side present (``corridor kme serve`` at one site, fed from its own key
file or its own party of a simulated link) the both-or-neither check covers that side
only, and a :class:`~corridor.kms.sources.party.SimulatedLinkPartySource` lines up the
two sites' streams at session start
(:meth:`~corridor.kms.sources.party.SimulatedLinkPartySource.align_store`); the store's
rule keeps offsets aligned (a half that does not fit is dropped but its stream position
is used, see docs/kms-store.md), and reservations over bytes only one end holds are
refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.alarms import LinkMonitor
from corridor.kms.config import DIRECTIONS, split_block
from corridor.kms.interface import EventSink, NullEventSink
from corridor.kms.manager import KeyManager
from corridor.kms.sources.base import (
    SIDE_ALICE,
    SIDE_BOB,
    KeySource,
    SourceBlock,
    check_positive,
)
from corridor.kms.sources.party import SimulatedLinkPartySource

_log = logging.getLogger(__name__)


@dataclass
class FeederStats:
    """Public counters of a feeder (for status displays and tests)."""

    blocks_seen: int = 0
    blocks_stored: int = 0
    blocks_aborted: int = 0
    blocks_quarantined: int = 0
    halves_dropped_full: int = 0
    bytes_stored: int = 0
    secret_bits_produced: int = 0
    last_block_id: int | None = None
    last_qber: float | None = None
    last_key_rate_bits_per_second: float | None = None
    last_outcome: str | None = None
    last_abort_reason: str | None = None
    started_at_monotonic_s: float = field(default_factory=time.monotonic)
    last_block_at_monotonic_s: float | None = None
    stopped_reason: str | None = None
    paused_full: bool = False
    pauses_full: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain data (no key material is ever held here)."""
        return {name: getattr(self, name) for name in (
            "blocks_seen", "blocks_stored", "blocks_aborted", "blocks_quarantined",
            "halves_dropped_full", "bytes_stored", "secret_bits_produced", "last_block_id",
            "last_qber", "last_key_rate_bits_per_second", "last_outcome", "last_abort_reason",
            "stopped_reason", "paused_full", "pauses_full")}


class FeedError(ParameterError):
    """The two KMEs' streams of a link cannot be brought into line."""


class LinkFeeder:
    """Drives a KeySource's blocks into the KMEs of its link (module docstring rules).

    Args:
        source: the link's blocks.
        alice_side: the KeyManager that receives Alice's copy (None at Bob's site).
        bob_side: the KeyManager that receives Bob's copy (None at Alice's site).
        monitor: judges every block (quarantine) and emits ``link_block`` events.
        events: where the feeder's own events go (``link_feed_dropped``,
            ``link_streams_aligned``, ``link_source_stopped``); usually both KMEs' sinks.
        poll_s: how long one wait for a block lasts before checking for stop.
        full_backoff_s: with one side only, the pause after a block dropped for capacity.

    With both sides here (``corridor up``), a block dropped whole for capacity pauses the
    feed: no further block is taken from the source until, in some direction, both KMEs
    have room for a half of that block's size again (checked every ``poll_s``). A
    simulated source holds a few finished blocks and then waits, so a corridor whose
    SAEs fetch nothing stops simulating instead of distilling blocks only to drop them.
    While paused, ``stats.paused_full`` is true and the link reads ``pool_full``, not
    ``dead`` (:func:`corridor.kms.operator.link_state`); ``link_feed_paused`` and
    ``link_feed_resumed`` events mark the pause. With one side only the feeder keeps
    taking blocks after ``full_backoff_s``: the other site's party of a simulated link
    runs the protocol with this one and must not be left waiting.
    """

    def __init__(self, source: KeySource, alice_side: KeyManager | None,
                 bob_side: KeyManager | None, monitor: LinkMonitor,
                 events: EventSink | None = None, *, poll_s: float = 0.25,
                 full_backoff_s: float = 1.0) -> None:
        self.source = source
        self.link_id = source.link_id
        self.sides: dict[str, KeyManager] = {
            side: manager for side, manager in ((SIDE_ALICE, alice_side), (SIDE_BOB, bob_side))
            if manager is not None}
        if not self.sides:
            raise ParameterError("alice_side/bob_side", None, "at least one KeyManager")
        for side, manager in self.sides.items():
            link = manager.directory.link(self.link_id)
            if link is None or manager.kme_id not in (link.kme_a, link.kme_b):
                raise ParameterError(f"{side}_side", manager.kme_id,
                                     f"must be a KME of link {self.link_id!r}")
        if len(self.sides) == 2 and \
                self.sides[SIDE_ALICE].kme_id == self.sides[SIDE_BOB].kme_id:
            raise ParameterError("bob_side", self.sides[SIDE_BOB].kme_id,
                                 "must be the other KME of the link, not Alice's")
        self.monitor = monitor
        self.events: EventSink = events if events is not None else NullEventSink()
        self.poll_s = float(check_positive("poll_s", poll_s))
        self.full_backoff_s = float(check_positive("full_backoff_s", full_backoff_s,
                                                   allow_zero=True))
        self.stats = FeederStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.on_block: Callable[[SourceBlock, str], None] | None = None
        self.error: Exception | None = None
        # Bytes per direction of the last block dropped whole for capacity.
        self._dropped_sizes: dict[str, int] = {}

    # -- restart -------------------------------------------------------------------------

    def align(self) -> int:
        """Bring the KMEs' streams into line after a crash; return the next block ID.

        Reads each KME's last block ID and stream end offsets. If one KME holds a block
        the other lacks (a crash between the two writes), the lagging stream is advanced
        over the missing bytes without storing anything, so offsets agree again.
        """
        last: dict[str, int | None] = {side: m.store.last_block_id(self.link_id)
                                       for side, m in self.sides.items()}
        known = [value for value in last.values() if value is not None]
        next_id = max(known) + 1 if known else 0
        if len(self.sides) < 2:
            return next_id
        ends = {side: {d: m.pool_state(self.link_id, d).stream_end_offset for d in DIRECTIONS}
                for side, m in self.sides.items()}
        for side, manager in self.sides.items():
            other = SIDE_BOB if side == SIDE_ALICE else SIDE_ALICE
            gaps = {d: ends[other][d] - ends[side][d] for d in DIRECTIONS}
            if not any(gap > 0 for gap in gaps.values()):
                continue
            # The hole stands for the block this KME missed: the other one's last block.
            hole_block_id = max(known) if known else 0
            own_last = last[side]
            if own_last is not None and hole_block_id <= own_last:
                hole_block_id = own_last + 1
            # Capacity 0: the placeholder bytes are never stored, only their stream
            # positions are used up, exactly as a half dropped for a full pool.
            manager.store.append_block(
                self.link_id, hole_block_id,
                {d: bytes(gap) for d, gap in gaps.items() if gap > 0}, 0)
            for direction, gap in gaps.items():
                if gap > 0:
                    self.events.emit("link_streams_aligned", kme_id=manager.kme_id,
                                     link_id=self.link_id, direction=direction,
                                     block_id=hole_block_id, hole_bytes=gap)
            next_id = max(next_id, hole_block_id + 1)
        after = {side: {d: m.pool_state(self.link_id, d).stream_end_offset for d in DIRECTIONS}
                 for side, m in self.sides.items()}
        if after[SIDE_ALICE] != after[SIDE_BOB]:
            raise FeedError("link streams", self.link_id,
                            "the two KMEs' stream offsets still differ after alignment")
        return next_id

    def _stream_ends(self) -> dict[str, int]:
        """This (single) KME's stream end offsets of the link."""
        manager = next(iter(self.sides.values()))
        return {d: manager.pool_state(self.link_id, d).stream_end_offset for d in DIRECTIONS}

    def _fill_hole(self, block_id: int, gaps: Mapping[str, int]) -> None:
        """Advance this KME's streams by ``gaps`` bytes (a block the other site stored and
        this one never did) without storing anything; ``block_id`` names the hole."""
        manager = next(iter(self.sides.values()))
        last = manager.store.last_block_id(self.link_id)
        if last is not None and block_id <= last:
            raise FeedError("link streams", self.link_id,
                            f"the other site is ahead in offsets but not in block IDs "
                            f"(hole {block_id}, last stored {last})")
        # Capacity 0: only the stream positions are used, as for a half dropped when full.
        manager.store.append_block(self.link_id, block_id,
                                   {d: bytes(gap) for d, gap in gaps.items()}, 0)
        for direction, gap in gaps.items():
            self.events.emit("link_streams_aligned", kme_id=manager.kme_id,
                             link_id=self.link_id, direction=direction, block_id=block_id,
                             hole_bytes=gap)

    # -- one block -----------------------------------------------------------------------

    def _room_for(self, direction: str, size: int) -> bool:
        """True when every KME here could take ``size`` more bytes in ``direction``."""
        return all(m.pool_state(self.link_id, direction).available_bytes + size
                   <= m.config.pool_capacity_bytes for m in self.sides.values())

    def _fits(self, halves: Mapping[str, bytes]) -> dict[str, bool]:
        return {d: bool(half) and self._room_for(d, len(half)) for d, half in halves.items()}

    def feed(self, block: SourceBlock) -> str:
        """Judge and store one block; return its outcome.

        Outcomes: ``stored``, ``stored_partly`` (one direction's half kept by neither
        end for capacity), ``dropped_full``, ``aborted``, ``quarantined``,
        ``empty``.
        """
        if block.link_id != self.link_id:
            raise ParameterError("block.link_id", block.link_id, f"must be {self.link_id!r}")
        stats = self.stats
        stats.blocks_seen += 1
        stats.last_block_id = block.block_id
        stats.last_block_at_monotonic_s = time.monotonic()
        if block.qber is not None:
            stats.last_qber = block.qber
        keys = {side: block.key_for(side) for side in self.sides}
        if block.aborted_reason is None and not all(keys.values()):
            outcome = "empty"
            verdict = self.monitor.observe_block(self.link_id, block.block_id,
                                                 aborted_reason=None, qber=block.qber,
                                                 secret_bits=0, duration_s=block.duration_s)
        else:
            verdict = self.monitor.observe_block(
                self.link_id, block.block_id, aborted_reason=block.aborted_reason,
                qber=block.qber, secret_bits=block.secret_bits, duration_s=block.duration_s)
            stats.secret_bits_produced += block.secret_bits
            if block.duration_s:
                # The modelled link's rate: bits over the block's acquisition time.
                stats.last_key_rate_bits_per_second = block.secret_bits / block.duration_s
            if block.aborted_reason is not None:
                outcome = "aborted"
                stats.blocks_aborted += 1
                stats.last_abort_reason = block.aborted_reason
            elif not verdict.ingest:
                outcome = "quarantined"
                stats.blocks_quarantined += 1
                if len(self.sides) == 1:
                    # The other site's monitor may judge this block differently (after a
                    # one-site restart its history differs): use the block's stream
                    # positions without storing it, so both sites' offsets stay aligned
                    # whatever each decides.
                    key = next(iter(keys.values()))
                    self._fill_hole(block.block_id,
                                    {d: len(half) for d, half in split_block(key).items()})
            else:
                outcome = self._store(block, keys)
        if outcome in ("aborted", "empty", "dropped_full") or (outcome == "quarantined"
                                                               and len(self.sides) > 1):
            self._use_block_id(block.block_id)
        stats.last_outcome = outcome
        if self.on_block is not None:
            self.on_block(block, outcome)
        return outcome

    def _use_block_id(self, block_id: int) -> None:
        """Record a block that stores nothing, so that its ID is never given to another
        block after a restart (the stream positions do not move)."""
        for manager in self.sides.values():
            last = manager.store.last_block_id(self.link_id)
            if last is None or block_id > last:
                manager.store.append_block(self.link_id, block_id, {}, 0)

    def _store(self, block: SourceBlock, keys: Mapping[str, bytes]) -> str:
        lengths = {len(key) for key in keys.values()}
        if len(lengths) != 1:
            raise FeedError("block", block.block_id,
                            "Alice's and Bob's copies must have the same length")
        if len(self.sides) == 1:
            # One site alone cannot know what the other end decides: the store's rule
            # (a half that does not fit is dropped, its stream position used all the
            # same) keeps the two ends' offsets aligned whatever each decides.
            side, manager = next(iter(self.sides.items()))
            accepted = manager.ingest_block(self.link_id, block.block_id, keys[side],
                                            self._meta(block))
            if accepted == 0:
                return "dropped_full"
            self.stats.blocks_stored += 1
            self.stats.bytes_stored += accepted
            return "stored" if accepted == len(keys[side]) else "stored_partly"
        halves = split_block(next(iter(keys.values())))
        fits = self._fits(halves)
        dropped = [d for d, ok in fits.items() if not ok and halves[d]]
        for direction in dropped:
            self.stats.halves_dropped_full += 1
            self.events.emit("link_feed_dropped", link_id=self.link_id, block_id=block.block_id,
                             direction=direction, dropped_bytes=len(halves[direction]),
                             reason="pool_full")
        if not any(fits.values()):
            self._dropped_sizes = {d: len(h) for d, h in halves.items() if h}
            return "dropped_full"
        meta = self._meta(block)
        done: list[KeyManager] = []
        try:
            for side, manager in self.sides.items():
                if not dropped:
                    manager.ingest_block(self.link_id, block.block_id, keys[side], meta)
                else:
                    self._ingest_parts(manager, block.block_id, keys[side], fits, meta)
                done.append(manager)
        except BaseException:
            if done and len(done) < len(self.sides):
                # One end holds the block, the other not: re-align before anything else.
                self.align()
            raise
        stored_bytes = sum(len(h) for d, h in halves.items() if fits[d])
        self.stats.blocks_stored += 1
        self.stats.bytes_stored += stored_bytes
        return "stored" if not dropped else "stored_partly"

    @staticmethod
    def _meta(block: SourceBlock) -> dict[str, float]:
        """Public numeric figures of a block for the ``block_ingested`` event."""
        meta = dict(block.meta)
        if block.qber is not None:
            meta["qber"] = block.qber
        return meta

    def _ingest_parts(self, manager: KeyManager, block_id: int, key: bytes,
                      fits: Mapping[str, bool], meta: Mapping[str, Any]) -> None:
        """Store only the halves that fit at both ends; the others use no stream position
        at either end. The KeyManager's ``ingest_block`` stores whole blocks only, so this
        goes to the store and emits the same ``block_ingested`` event."""
        parts = {d: half if fits[d] else b"" for d, half in split_block(key).items()}
        result = manager.store.append_block(self.link_id, block_id, parts,
                                            manager.config.pool_capacity_bytes)
        public_meta = {name: value for name, value in meta.items()
                       if isinstance(value, int | float)}
        manager.events.emit("block_ingested", kme_id=manager.kme_id, link_id=self.link_id,
                            block_id=block_id, length_bytes=sum(map(len, parts.values())),
                            accepted_bytes=result.accepted_bytes, **public_meta)

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """Align the streams, start the source after the last known block, run the loop."""
        if self._thread is not None:
            raise ParameterError("feeder", "started", "a LinkFeeder starts once")
        first = self.align()
        if isinstance(self.source, SimulatedLinkPartySource) and len(self.sides) == 1:
            self.source.align_store(self._stream_ends, self._fill_hole)
            self.source.events = self.events
        self.source.start(first)
        self._thread = threading.Thread(target=self._run, name=f"corridor-feed-{self.link_id}",
                                         daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                block = self.source.next_block(self.poll_s)
                if block is None:
                    if self.source.finished:
                        self._stopped("source_finished")
                        return
                    continue
                outcome = self.feed(block)
                if outcome == "dropped_full":
                    if len(self.sides) == 2 and self._dropped_sizes:
                        self._pause_until_room(self._dropped_sizes)
                    else:
                        self._stop.wait(self.full_backoff_s)
        except Exception as exc:
            # Fail closed: no further block enters any pool; the operator sees why.
            self.error = exc
            _log.error("key feed of link %s stopped: %s", self.link_id, type(exc).__name__)
            self._stopped("error")
            return
        self._stopped("stopped")

    def _has_room(self, sizes: Mapping[str, int]) -> bool:
        """True when, in some direction, every KME here could take ``sizes[d]`` bytes."""
        return any(self._room_for(d, size) for d, size in sizes.items())

    def _pause_until_room(self, sizes: Mapping[str, int]) -> None:
        """Take no block until :meth:`_has_room` (class docstring), or until stopped."""
        if self._has_room(sizes):
            return
        began = time.monotonic()
        self.stats.paused_full = True
        self.stats.pauses_full += 1
        self.events.emit("link_feed_paused", link_id=self.link_id, reason="pool_full")
        _log.info("key feed of link %s paused: its pools are full", self.link_id)
        try:
            while not self._stop.wait(self.poll_s):
                if self._has_room(sizes):
                    break
        finally:
            self.stats.paused_full = False
        if not self._stop.is_set():
            self.events.emit("link_feed_resumed", link_id=self.link_id,
                             paused_s=round(time.monotonic() - began, 3))
            _log.info("key feed of link %s resumed", self.link_id)

    def _stopped(self, reason: str) -> None:
        if self.stats.stopped_reason is None:
            self.stats.stopped_reason = reason
            try:
                self.events.emit("link_source_stopped", link_id=self.link_id, reason=reason,
                                 blocks_seen=self.stats.blocks_seen)
            except Exception as exc:  # the audit volume that stopped the feed, often
                _log.error("key feed of link %s stopped (%s); the stop could not be "
                           "audited: %s", self.link_id, reason, type(exc).__name__)

    @property
    def running(self) -> bool:
        """True while the feed loop runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the loop after the block in progress, close the source, join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.source.close()

    def wait(self, timeout_s: float) -> bool:
        """Wait until the loop ends by itself (finite source); True if it did."""
        if self._thread is None:
            return False
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def __repr__(self) -> str:
        ends = {side: m.kme_id for side, m in self.sides.items()}
        return f"LinkFeeder(link_id={self.link_id!r}, sides={ends})"
