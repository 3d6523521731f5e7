"""Key sources and the feeder that drives their blocks into the two KMEs of a link.

This module owns the ``KeySource`` seam (ARCHITECTURE.md): anything that produces key
blocks for a pair of KMEs, Alice's copy for one and Bob's for the other, block after
block, with public figures (QBER, acquisition time) and, for a block that did not make
it, the abort reason.

- :class:`SimulatedLinkSource`: the simulated link (``corridor.link.simulator``) and the
  distillation (``corridor.distill.pipeline``) running continuously in background
  threads: Alice's and Bob's processors talk only over their authenticated in-process
  channel; every block that reaches AUTHENTICATED on both sides with equal output is a
  key block, every other one is reported with its reason.
- :class:`SimulatedLinkPartySource`: one party of the simulated link (Alice's or
  Bob's) and its distillation, for one KME process of a split-site deployment: the
  classical channel to the other site's party is TCP; a session agrees the next block
  ID (and lines up the two stores' streams) before its first block, every key block is
  confirmed by both parties before it is handed out, and a lost connection is
  re-established by itself with backoff (``link_channel_lost`` /
  ``link_channel_restored`` events), while an authentication failure stops the feed.
- :class:`RecordedKeyFileSource`: Alice's and Bob's key files as
  ``corridor link run --keys-out DIR`` writes them (``DIR/alice.bin``,
  ``DIR/bob.bin``), cut into blocks of a stated size; block ``k`` is bytes
  ``[k * block_bytes, (k + 1) * block_bytes)`` of each file, so a restarted KME finds
  the same block under the same ID. Either side may be opened alone (a KME process
  that only holds its own site's file).

:class:`LinkFeeder` takes blocks from a source and drives them into the KeyManagers:

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
only, and a :class:`SimulatedLinkPartySource` lines up the two sites' streams at session
start (:meth:`SimulatedLinkPartySource.align_store`); the store's rule keeps offsets
aligned (a half that does not fit is dropped but its stream position is used, see
docs/kms-store.md), and reservations over bytes only one end holds are refused.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from numpy.random import PCG64, Generator, SeedSequence

from corridor.distill.auth import PAD_BYTES
from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.channel import in_process_pair
from corridor.distill.pipeline import (
    DistillConfig,
    PartyOutcome,
    make_processor,
    run_party,
)
from corridor.distill.transport import CONNECTION_LOSS_REASONS, peer_abort_reason
from corridor.errors import ParameterError, ProtocolAbort
from corridor.kms.alarms import LinkMonitor
from corridor.kms.config import DIRECTIONS, check_id, split_block
from corridor.kms.interface import EventSink, NullEventSink
from corridor.kms.manager import KeyManager
from corridor.link.params import LinkParameters
from corridor.link.records import AliceRecords, BobRecords
from corridor.link.simulator import simulate_block
from corridor.randomness import RandomSource

SIDE_ALICE = "alice"
SIDE_BOB = "bob"
SIDES = (SIDE_ALICE, SIDE_BOB)
REASON_PARTIES_DISAGREE = "parties_disagree"
_POLL_S = 0.1

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceBlock:
    """One block of a link as a source delivers it: both sides' key bytes, or why not.

    ``alice_key`` and ``bob_key`` are secret and never shown by ``repr``; they are
    empty for an aborted block, and a side the source was not opened for is empty too.
    """

    link_id: str
    block_id: int
    alice_key: bytes = field(repr=False)
    bob_key: bytes = field(repr=False)
    aborted_reason: str | None = None
    qber: float | None = None
    duration_s: float | None = None
    meta: Mapping[str, float] = field(default_factory=dict)

    @property
    def secret_bits(self) -> int:
        """Key bits of the block (0 if it aborted)."""
        if self.aborted_reason is not None:
            return 0
        return 8 * max(len(self.alice_key), len(self.bob_key))

    def key_for(self, side: str) -> bytes:
        """The key bytes of ``side`` (``alice`` or ``bob``)."""
        if side == SIDE_ALICE:
            return self.alice_key
        if side == SIDE_BOB:
            return self.bob_key
        raise ParameterError("side", side, f"must be one of {list(SIDES)}")


class KeySource(Protocol):
    """Anything that produces key blocks for the two KMEs of one link."""

    link_id: str

    def start(self, first_block_id: int) -> None:
        """Begin producing; the first block gets ``first_block_id``, the next ones count up."""
        ...

    def next_block(self, timeout_s: float) -> SourceBlock | None:
        """The next block, or None if none was ready within ``timeout_s``."""
        ...

    @property
    def finished(self) -> bool:
        """True once the source will produce no further block (end of file, stopped)."""
        ...

    def close(self) -> None:
        """Stop producing and release threads and files."""
        ...


def _positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> Any:
    ok_type = (isinstance(value, int) if integer else isinstance(value, int | float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or \
            (value < 0 if allow_zero else value <= 0):
        kind = "an integer" if integer else "a number"
        raise ParameterError(name, value, f"must be {kind} {'>= 0' if allow_zero else '> 0'}")
    return value


# ---------------------------------------------------------------------------------------
# Recorded key files


class RecordedKeyFileSource:
    """Alice's and Bob's recorded key files, cut into blocks of ``block_bytes``.

    Args:
        link_id: the link the keys belong to.
        block_bytes: bytes per block (even, so each direction gets half).
        alice_file, bob_file: the two parties' files (``DIR/alice.bin``,
            ``DIR/bob.bin``); at least one. With both, they must have the same length.
        block_interval_s: wall time between blocks (0: as fast as the feeder takes
            them), to play a recording back at a link's rate.
        first_file_block_id: the block ID of the file's first block.

    A last piece shorter than ``block_bytes`` is not delivered. The source does not
    check that the two files hold the same bytes (in a deployment each site only has its
    own); a mismatch shows up as keys that differ, which is why ``corridor link run``'s
    verification stage must have passed on every block written.
    """

    def __init__(self, link_id: str, block_bytes: int, *,
                 alice_file: str | os.PathLike[str] | None = None,
                 bob_file: str | os.PathLike[str] | None = None,
                 block_interval_s: float = 0.0, first_file_block_id: int = 0) -> None:
        self.link_id = check_id("link_id", link_id)
        _positive("block_bytes", block_bytes, integer=True)
        if block_bytes % 2 or block_bytes < 2:
            raise ParameterError("block_bytes", block_bytes,
                                 "must be an even number of bytes >= 2 (half per direction)")
        self.block_bytes = block_bytes
        self.block_interval_s = float(_positive("block_interval_s", block_interval_s,
                                                allow_zero=True))
        self.first_file_block_id = _positive("first_file_block_id", first_file_block_id,
                                             integer=True, allow_zero=True)
        paths = {SIDE_ALICE: alice_file, SIDE_BOB: bob_file}
        if all(p is None for p in paths.values()):
            raise ParameterError("alice_file/bob_file", None, "at least one key file is needed")
        self._files: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        for side, path in paths.items():
            if path is None:
                continue
            try:
                handle = open(path, "rb")  # noqa: SIM115 - kept open for the source's life
            except OSError as exc:
                self.close()
                raise ParameterError(f"{side}_file", str(path), "must be a readable key file",
                                     exc.strerror) from None
            self._files[side] = handle
            sizes[side] = os.fstat(handle.fileno()).st_size
        if len(set(sizes.values())) > 1:
            self.close()
            raise ParameterError("bob_file", str(bob_file),
                                 f"must have the same length as the alice file "
                                 f"({sizes[SIDE_ALICE]} bytes), has {sizes[SIDE_BOB]}")
        size = next(iter(sizes.values()))
        self.total_blocks = size // block_bytes
        self._next: int | None = None
        self._due = 0.0
        self._closed = False

    @classmethod
    def from_directory(cls, link_id: str, directory: str | os.PathLike[str], block_bytes: int,
                       *, sides: tuple[str, ...] = SIDES,
                       **options: Any) -> RecordedKeyFileSource:
        """Open ``DIR/alice.bin`` and/or ``DIR/bob.bin`` (``sides`` picks which)."""
        root = Path(directory)
        unknown = [s for s in sides if s not in SIDES]
        if unknown or not sides:
            raise ParameterError("sides", list(sides), f"must name some of {list(SIDES)}")
        return cls(link_id, block_bytes,
                   alice_file=root / "alice.bin" if SIDE_ALICE in sides else None,
                   bob_file=root / "bob.bin" if SIDE_BOB in sides else None, **options)

    def start(self, first_block_id: int) -> None:
        """Deliver from block ``first_block_id`` on (earlier blocks of the file are skipped)."""
        _positive("first_block_id", first_block_id, integer=True, allow_zero=True)
        if first_block_id < self.first_file_block_id:
            raise ParameterError("first_block_id", first_block_id,
                                 f"must be >= first_file_block_id = {self.first_file_block_id}")
        self._next = first_block_id
        self._due = time.monotonic()

    @property
    def finished(self) -> bool:
        """True after the file's last whole block (or after close)."""
        if self._closed:
            return True
        return self._next is not None and \
            self._next - self.first_file_block_id >= self.total_blocks

    def next_block(self, timeout_s: float) -> SourceBlock | None:
        """The next whole block of the file(s), when its time has come."""
        if self._next is None:
            raise ParameterError("source", "not started", "call start(first_block_id) first")
        if self.finished:
            return None
        wait_s = self._due - time.monotonic()
        if wait_s > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            return None
        if wait_s > 0:
            time.sleep(wait_s)
        block_id = self._next
        offset = (block_id - self.first_file_block_id) * self.block_bytes
        keys = {side: os.pread(handle.fileno(), self.block_bytes, offset)
                for side, handle in self._files.items()}
        self._next = block_id + 1
        self._due = max(self._due + self.block_interval_s, time.monotonic()) \
            if self.block_interval_s else self._due
        return SourceBlock(link_id=self.link_id, block_id=block_id,
                           alice_key=keys.get(SIDE_ALICE, b""), bob_key=keys.get(SIDE_BOB, b""))

    def close(self) -> None:
        """Close the files."""
        self._closed = True
        for handle in self._files.values():
            handle.close()
        self._files = {}

    def __repr__(self) -> str:
        return (f"RecordedKeyFileSource(link_id={self.link_id!r}, block_bytes={self.block_bytes}, "
                f"sides={sorted(self._files)}, total_blocks={self.total_blocks})")


# ---------------------------------------------------------------------------------------
# The simulated link


def _block_qber(block: KeyBlock) -> float | None:
    """The block's QBER: the corrected-error rate if reconciliation ran, else the test one."""
    for name in ("qber_corrected", "test_qber"):
        value = block.meta.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
    return None


def _abort_reason(run_abort: str) -> str:
    """The reason code of a PartyOutcome.run_abort text (``reason: detail``)."""
    return run_abort.split(":", 1)[0].strip() or "session_abort"


def _link_config(params: LinkParameters, link_id: str,
                 config: DistillConfig | None) -> DistillConfig:
    """The distillation settings of a link's source: ``config``, or the defaults for
    ``params``; either way they must name the source's link."""
    resolved = config if config is not None else DistillConfig.for_link(
        params, link_id=link_id, channel_timeout_s=30.0)
    if resolved.link_id != link_id:
        raise ParameterError("config.link_id", resolved.link_id,
                             f"must be the source's link_id {link_id!r}")
    return resolved


class SimulatedLinkSource:
    """A simulated QKD link distilling key continuously in background threads.

    Args:
        params: the link's physical parameters.
        link_id: the link (also written into every distilled block).
        block_pulses: pulses per block; must be large enough for a positive finite key
            (about 1e8 at a few km for ``modern-snspd``, whose 50 ns dead time leaves
            the detectors live 10 % of the time there; 1e7 without it; docs/link.md).
        config: distillation settings (default: ``DistillConfig.for_link(params)``).
        rng: randomness of the simulation and of both parties (default:
            ``RandomSource.system()``: OS CSPRNG bytes for seeds and the pre-shared key,
            PCG64 seeded from the OS for the simulator's draws); a seeded source in tests
            only.
        psk: the pre-shared authentication key of the two parties (default: drawn from
            ``rng``; in-process simulation only: a real link's sites hold a copy each).
        attack: an attack from ``corridor.link.attacks`` applied to the channel.
        block_interval_s: least wall time between two blocks (0: as fast as the CPU
            allows), so that a demo leaves the machine usable.
        max_blocks: stop after this many blocks (None: run until closed).
        queue_blocks: finished blocks held before the simulation waits for the feeder.

    A block-level abort (QBER, estimation, verification, no key) is delivered as an
    aborted block and the run goes on. A session-level abort (authentication failure,
    malformed message, timeout) is delivered as one aborted block with that reason and
    the source stops: the authenticated channel can no longer be trusted (fail closed).
    """

    def __init__(self, params: LinkParameters, *, link_id: str,
                 block_pulses: int = 10_000_000, config: DistillConfig | None = None,
                 rng: RandomSource | None = None, psk: bytes | None = None,
                 attack: object | None = None, block_interval_s: float = 0.0,
                 max_blocks: int | None = None, queue_blocks: int = 4) -> None:
        self.link_id = check_id("link_id", link_id)
        self.params = params
        self.block_pulses = _positive("block_pulses", block_pulses, integer=True)
        self.config = _link_config(params, link_id, config)
        self.block_interval_s = float(_positive("block_interval_s", block_interval_s,
                                                allow_zero=True))
        if max_blocks is not None:
            _positive("max_blocks", max_blocks, integer=True)
        self.max_blocks = max_blocks
        _positive("queue_blocks", queue_blocks, integer=True)
        self.attack = attack
        root = rng if rng is not None else RandomSource.system()
        self._rng_simulation, self._rng_alice, self._rng_bob = (root.spawn(), root.spawn(),
                                                                  root.spawn())
        self._psk = psk if psk is not None else root.spawn().bytes(self.config.auth_pool_bytes)
        self._stop = threading.Event()
        self._feeds: dict[str, queue.Queue[tuple[int, int, Any] | None]] = {
            side: queue.Queue(maxsize=2) for side in SIDES}
        self._out: dict[str, queue.Queue[KeyBlock]] = {
            side: queue.Queue(maxsize=queue_blocks) for side in SIDES}
        self._outcomes: dict[str, PartyOutcome] = {}
        self._threads: list[threading.Thread] = []
        self._next_expected: int | None = None
        self._pending: dict[str, KeyBlock] = {}
        self._session_reported = False
        self._started = False
        self._simulation_done = threading.Event()
        self.pulse_duration_s = 1.0 / params.source.pulse_rate_hz

    # -- threads ------------------------------------------------------------------------

    def _put(self, target: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _simulate(self, first_block_id: int) -> None:
        block_id = first_block_id
        produced = 0
        try:
            while not self._stop.is_set() and any(t.is_alive() for t in self._threads[1:]):
                if self.max_blocks is not None and produced >= self.max_blocks:
                    break
                started = time.monotonic()
                records = simulate_block(self.params, self.block_pulses, self._rng_simulation,
                                         block_id=block_id,
                                         attack=self.attack)  # type: ignore[arg-type]
                if not (self._put(self._feeds[SIDE_ALICE],
                                  (block_id, records.pulses, records.alice))
                        and self._put(self._feeds[SIDE_BOB],
                                      (block_id, records.pulses, records.bob))):
                    break
                del records
                block_id += 1
                produced += 1
                rest_s = self.block_interval_s - (time.monotonic() - started)
                if rest_s > 0:
                    self._stop.wait(rest_s)
        finally:
            self._simulation_done.set()
            for side in SIDES:
                # Sentinels end the parties' block streams; never block on a full queue.
                while True:
                    try:
                        self._feeds[side].put(None, timeout=_POLL_S)
                        break
                    except queue.Full:
                        if not self._threads[1 + SIDES.index(side)].is_alive():
                            break

    def _party(self, side: str, processor: Any) -> None:
        def blocks() -> Iterator[tuple[int, int, AliceRecords | BobRecords]]:
            while True:
                item = self._feeds[side].get()
                if item is None or self._stop.is_set():
                    return
                yield item

        def progress(block: KeyBlock) -> None:
            self._put(self._out[side], block)

        outcome = run_party(processor, blocks(), progress)
        self._outcomes[side] = outcome
        if self._stop.is_set():
            # The two parties may see the stop between different blocks; the one that
            # stopped first wakes the other, which would otherwise wait for a message
            # until the channel timeout.
            processor.notify_peer("source_closed")
        # Drain so the simulator never waits on a party that has stopped.
        while not self._simulation_done.is_set():
            try:
                self._feeds[side].get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def start(self, first_block_id: int) -> None:
        """Start the simulation and both parties; the first block is ``first_block_id``."""
        _positive("first_block_id", first_block_id, integer=True, allow_zero=True)
        if self._started:
            raise ParameterError("source", "started", "a SimulatedLinkSource starts once")
        self._started = True
        self._next_expected = first_block_id
        raw_alice, raw_bob = in_process_pair()
        processors = {
            SIDE_ALICE: make_processor(SIDE_ALICE, raw_alice, self._psk, self._rng_alice,
                                       self.config, self.params),
            SIDE_BOB: make_processor(SIDE_BOB, raw_bob, self._psk, self._rng_bob,
                                     self.config, self.params)}
        self._threads = [threading.Thread(target=self._simulate, args=(first_block_id,),
                                          name=f"corridor-sim-{self.link_id}", daemon=True)]
        self._threads += [threading.Thread(target=self._party, args=(side, processors[side]),
                                           name=f"corridor-{side}-{self.link_id}", daemon=True)
                          for side in SIDES]
        for thread in self._threads[1:]:
            thread.start()
        self._threads[0].start()

    # -- consumer side -------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once both parties have stopped and every block has been handed out."""
        if not self._started:
            return False
        parties_done = not any(t.is_alive() for t in self._threads[1:])
        return parties_done and all(q.empty() for q in self._out.values()) \
            and not self._pending and self._session_reported

    def _take(self, side: str, deadline: float) -> KeyBlock | None:
        if side in self._pending:
            return self._pending.pop(side)
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._out[side].get(timeout=max(min(remaining, _POLL_S), 0.001))
            except queue.Empty:
                party_gone = not self._threads[1 + SIDES.index(side)].is_alive()
                if remaining <= 0 or (party_gone and self._out[side].empty()):
                    return None

    def next_block(self, timeout_s: float) -> SourceBlock | None:
        """The next block both parties finished, or None within ``timeout_s``.

        After a session-level abort, one aborted block carrying its reason, then None.
        """
        if not self._started or self._next_expected is None:
            raise ParameterError("source", "not started", "call start(first_block_id) first")
        deadline = time.monotonic() + timeout_s
        alice = self._take(SIDE_ALICE, deadline)
        if alice is None:
            return self._session_end()
        bob = self._take(SIDE_BOB, deadline)
        if bob is None:
            self._pending[SIDE_ALICE] = alice
            return self._session_end()
        self._next_expected = max(alice.block_id, bob.block_id) + 1
        return self._pair(alice, bob)

    def _session_end(self) -> SourceBlock | None:
        if self._session_reported or any(t.is_alive() for t in self._threads[1:]):
            return None
        if any(not q.empty() for q in self._out.values()):
            return None
        for block in self._pending.values():
            # Its peer's copy will never come: the block cannot be paired, so it is lost.
            block.discard(REASON_PARTIES_DISAGREE)
        self._pending.clear()
        self._session_reported = True
        aborts = [o.run_abort for o in self._outcomes.values() if o.run_abort]
        if not aborts or self._stop.is_set():
            return None
        assert self._next_expected is not None
        block_id = self._next_expected
        self._next_expected += 1
        return SourceBlock(link_id=self.link_id, block_id=block_id, alice_key=b"",
                           bob_key=b"", aborted_reason=_abort_reason(aborts[0]))

    def _pair(self, alice: KeyBlock, bob: KeyBlock) -> SourceBlock:
        qber = _block_qber(bob) if _block_qber(bob) is not None else _block_qber(alice)
        duration_s, meta = _public_figures(alice, self.pulse_duration_s)
        reason: str | None = None
        keys = (b"", b"")
        if alice.block_id != bob.block_id:
            reason = REASON_PARTIES_DISAGREE
        elif alice.state is BlockState.AUTHENTICATED and bob.state is BlockState.AUTHENTICATED:
            alice_key, bob_key = alice.key_bytes(), bob.key_bytes()
            # Both outputs are at hand in-process: fail closed if verification ever let a
            # mismatch through (probability <= eps_cor).
            if len(alice_key) == len(bob_key) and alice_key \
                    and hmac.compare_digest(alice_key, bob_key):
                keys = (alice_key, bob_key)
            else:
                reason = REASON_PARTIES_DISAGREE
        else:
            reason = alice.discard_reason or bob.discard_reason or REASON_PARTIES_DISAGREE
        for block in (alice, bob):
            if block.state is not BlockState.DISCARDED:
                block.discard("handed_to_key_source")  # zeroizes the party's copy
        if reason is not None:
            return SourceBlock(link_id=self.link_id, block_id=alice.block_id, alice_key=b"",
                               bob_key=b"", aborted_reason=reason, qber=qber,
                               duration_s=duration_s, meta=meta)
        return SourceBlock(link_id=self.link_id, block_id=alice.block_id, alice_key=keys[0],
                           bob_key=keys[1], qber=qber, duration_s=duration_s, meta=meta)

    def close(self) -> None:
        """Stop the simulation and the parties (after the block in progress) and join them."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=self.config.channel_timeout_s + 5.0)
        for side in SIDES:
            while not self._out[side].empty():
                self._out[side].get_nowait().discard("source_closed")
        for block in self._pending.values():
            block.discard("source_closed")
        self._pending.clear()

    def __repr__(self) -> str:
        return (f"SimulatedLinkSource(link_id={self.link_id!r}, preset={self.params.name!r}, "
                f"length_km={self.params.fibre.length_km:g}, block_pulses={self.block_pulses})")


# ---------------------------------------------------------------------------------------
# One party of a simulated link, over TCP (split-site deployment)

MESSAGE_SESSION_NONCE = "session.nonce"
MESSAGE_SESSION_RESUME = "session.resume"
MESSAGE_BLOCK_DONE = "block.done"
SESSION_NONCE_BYTES = 32
_MAX_BLOCK_ID = 2**62

#: Abort reason of a block in flight (or left unconfirmed) when the classical channel
#: was lost; :mod:`corridor.kms.alarms` counts it without an alarm.
REASON_CHANNEL_LOST = "channel_lost"
EVENT_CHANNEL_LOST = "link_channel_lost"
EVENT_CHANNEL_RESTORED = "link_channel_restored"
RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 30.0
#: Key bytes of each confirmed block that refill the authentication pool: the two
#: ``block.done`` tags' one-time pads (16 bytes each) in the long run.
CONFIRM_REFILL_BYTES = 2 * PAD_BYTES
#: What a peer's ``session.abort`` notice may say for this side to reconnect: the peer
#: stops (``source_closed``, a SIGTERM) or lost its own connection.
_PEER_GONE_REASONS = CONNECTION_LOSS_REASONS | {"source_closed", REASON_CHANNEL_LOST}


def session_auth_key(psk: bytes, alice_nonce: bytes, bob_nonce: bytes, link_id: str,
                     length_bytes: int) -> bytes:
    """The authentication key of one TCP session: HKDF-SHA256 of the pre-shared key over
    both parties' fresh nonces (RFC 5869).

    A restarted session must never reuse one-time tag keys of an earlier session (the
    Wegman-Carter pool restarts from the pre-shared key at every process start); fresh
    nonces from both sides give every session its own pool. The nonces cross the channel
    unauthenticated: a changed nonce only gives the two sides different pools, and the
    first authenticated message then fails (fail closed).
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    # HKDF output is capped at 255 hash lengths; a longer pool is the concatenation of
    # outputs whose info names their index.
    chunk_bytes = 255 * 32
    info = b"corridor split-site session|" + link_id.encode() + b"|"
    parts = [HKDF(algorithm=hashes.SHA256(), length=min(chunk_bytes, length_bytes - start),
                  salt=alice_nonce + bob_nonce, info=info + str(index).encode()).derive(psk)
             for index, start in enumerate(range(0, length_bytes, chunk_bytes))]
    return b"".join(parts)


def block_simulation_rng(seed: int, block_id: int) -> RandomSource:
    """The simulator's stream for block ``block_id`` of a link simulated from ``seed``.

    Derived from the pair (seed, block ID), so both sites simulate the same quantum
    channel for a block whatever block a session starts at.
    """
    return RandomSource(Generator(PCG64(SeedSequence([seed, block_id]))), cryptographic=False,
                        label=f"PCG64(seed={seed}, block={block_id})")


class SimulatedLinkPartySource:
    """Alice's or Bob's side of a simulated link, distilling over a TCP classical channel.

    The source of one KME process in a split-site deployment: the KME at Alice's site
    runs ``role="alice"``, the one at Bob's ``role="bob"``; one of them listens on
    ``address`` and the other connects to it. Each process simulates the same quantum
    channel (the simulator's stream for block ``k`` is :func:`block_simulation_rng`
    ``(simulation_seed, k)``) and keeps only its own party's records; only
    authenticated classical messages cross the TCP connection.

    Session start (in a background thread, so ``start`` never waits for the peer):

    1. connect (or accept one peer; the listening side keeps its port bound for the
       source's whole life);
    2. both send a fresh nonce; the session's authentication key is
       :func:`session_auth_key` of the pre-shared key and both nonces, so every session,
       first or later, authenticates afresh and never reuses a one-time pad;
    3. over the authenticated channel both send the block ID they would start at, the
       last block they delivered in this process and their store's stream ends (after
       their feeder has stored every block handed out); both start at the larger block
       ID, so a block ID is never reused at either site; a block left *unconfirmed* by
       the previous session is settled (below); the side whose store lags pads its
       streams up to the other's;
    4. the pipeline's own hello checks the settings, the simulation seed, the block size,
       the agreed first block and the stream ends on both sides;
    5. blocks are simulated and distilled in order. A block that reaches AUTHENTICATED
       is *confirmed* before it is handed out: Alice sends an authenticated
       ``block.done`` (block ID, whether hers is AUTHENTICATED), Bob answers with his.
       Bob hands his copy out once he has Alice's notice, Alice once she has Bob's; the
       first :data:`CONFIRM_REFILL_BYTES` bytes of each confirmed key refill the
       authentication pool for the two ``block.done`` tags (the long-run cost of one
       exchange), so the delivered key is the rest, identical at both sites.

    Reconnection. A session that ends because the connection is gone (the transport's
    ``CONNECTION_LOSS_REASONS``: EOF, reset, refused, silent for ``channel_timeout_s``;
    or the peer's own notice that it stops, e.g. at a SIGTERM) is not the end of the
    source: the block in flight is handed out as aborted with reason
    :data:`REASON_CHANNEL_LOST` (no key; its ID is used), a ``link_channel_lost`` event
    is emitted, and the session restarts from step 1 after an exponential backoff
    (``reconnect_initial_s`` doubling up to ``reconnect_max_s``, each wait drawn
    uniformly from its upper half), until ``close``. The first session that passes the
    hello emits ``link_channel_restored`` with the outage duration and resets the
    backoff. A block whose confirmation was cut (this side finished it, the peer's
    ``block.done`` never came) is delivered at the next session start only if the peer
    says it delivered that block (or its store's streams already hold it); otherwise it
    is handed out as aborted ``channel_lost`` on both sides. So a key never comes from a
    block that did not complete at both sites, and someone who can cut TCP connections
    can only cause reconnections (a denial of service).

    Any other session-level abort (authentication failure, malformed message,
    configuration mismatch, the peer's notice of one) is delivered as one aborted block
    with that reason and the source stops (fail closed: the alarm module latches an
    ``integrity`` alarm); restarting the KME process starts a new session.

    Args:
        params: the link's physical parameters (identical at both sites).
        link_id: the link.
        role: ``alice`` or ``bob``: which party this process runs.
        address: ``(host, port)`` the listening side binds and the other connects to.
        listen: True if this side listens, False if it connects.
        simulation_seed: seed of the simulated quantum channel, the same at both sites
            (simulation only: it determines the raw key).
        psk: the pre-shared authentication key (both sites hold a copy).
        block_pulses: pulses per block.
        config: distillation settings (default ``DistillConfig.for_link``).
        rng: this party's own randomness (default: OS CSPRNG).
        block_interval_s: least wall time between two blocks.
        max_blocks: stop once block ID ``first + max_blocks`` is reached, ``first`` being
            the first session's agreed first block (None: until closed).
        connect_timeout_s: how long one connection attempt may take (the connecting
            side's TCP connect; the listening side waits in short tries, for ever).
        queue_blocks: finished blocks held before the party waits for the feeder.
        reconnect_initial_s: first backoff after a lost connection.
        reconnect_max_s: largest backoff.
        events: where ``link_channel_lost``/``link_channel_restored`` go (a
            :class:`LinkFeeder` sets its own sink when it starts the source).
    """

    def __init__(self, params: LinkParameters, *, link_id: str, role: str,
                 address: tuple[str, int], listen: bool, simulation_seed: int, psk: bytes,
                 block_pulses: int = 10_000_000, config: DistillConfig | None = None,
                 rng: RandomSource | None = None, block_interval_s: float = 0.0,
                 max_blocks: int | None = None, connect_timeout_s: float = 300.0,
                 queue_blocks: int = 4, reconnect_initial_s: float = RECONNECT_INITIAL_S,
                 reconnect_max_s: float = RECONNECT_MAX_S,
                 events: EventSink | None = None) -> None:
        self.link_id = check_id("link_id", link_id)
        if role not in SIDES:
            raise ParameterError("role", role, f"must be one of {list(SIDES)}")
        self.role = role
        self.params = params
        host, port = address
        if not isinstance(host, str) or not host or isinstance(port, bool) or \
                not isinstance(port, int) or not 0 < port < 65536:
            raise ParameterError("address", f"{host}:{port}",
                                 "must be HOST:PORT with a port from 1 to 65535")
        self.address = (host, port)
        self.listen = bool(listen)
        self.simulation_seed = _positive("simulation_seed", simulation_seed, integer=True,
                                         allow_zero=True)
        if not isinstance(psk, bytes) or len(psk) < 64:
            raise ParameterError("psk", "(not shown)", "must be at least 64 bytes")
        self._psk = psk
        self.block_pulses = _positive("block_pulses", block_pulses, integer=True)
        self.config = _link_config(params, link_id, config)
        self._rng = rng if rng is not None else RandomSource.system()
        self.block_interval_s = float(_positive("block_interval_s", block_interval_s,
                                                allow_zero=True))
        if max_blocks is not None:
            _positive("max_blocks", max_blocks, integer=True)
        self.max_blocks = max_blocks
        self.connect_timeout_s = float(_positive("connect_timeout_s", connect_timeout_s))
        _positive("queue_blocks", queue_blocks, integer=True)
        self.reconnect_initial_s = float(_positive("reconnect_initial_s", reconnect_initial_s))
        self.reconnect_max_s = float(_positive("reconnect_max_s", reconnect_max_s))
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ParameterError("reconnect_max_s", reconnect_max_s,
                                 f"must be at least reconnect_initial_s ({reconnect_initial_s})")
        self.events: EventSink = events if events is not None else NullEventSink()
        self.pulse_duration_s = 1.0 / params.source.pulse_rate_hz
        self._stop = threading.Event()
        self._out: queue.Queue[tuple[KeyBlock, int]] = queue.Queue(maxsize=queue_blocks)
        self._thread: threading.Thread | None = None
        self._endpoint: Any = None
        self._listener: Any = None
        self._run_abort: str | None = None
        self._next_id: int | None = None
        self._session_reported = False
        self._store_ends: Callable[[], dict[str, int]] | None = None
        self._fill_hole: Callable[[int, Mapping[str, int]], None] | None = None
        self.first_block_id: int | None = None
        self._end_id: int | None = None
        # The session thread's view: the next block ID to propose, the last block handed
        # out with a key, and a finished block whose confirmation was cut.
        self._proposal = 0
        self._delivered_through: int | None = None
        self._pending: KeyBlock | None = None
        # Blocks put on the queue, and blocks the feeder has taken and finished with.
        self._queued = 0
        self._returned = 0
        self._fed = 0
        # Reconnection state (session thread only).
        self._lost_at: float | None = None
        self._loss_reason: str | None = None
        self._attempts = 0
        self._backoff_s = self.reconnect_initial_s
        #: Public counters: sessions established, connections lost.
        self.sessions = 0
        self.channel_losses = 0

    def align_store(self, stream_ends: Callable[[], dict[str, int]],
                    fill_hole: Callable[[int, Mapping[str, int]], None]) -> None:
        """Let the session keep the two sites' streams in line (set by :class:`LinkFeeder`).

        A process that stops between handing a block out and storing it leaves its
        store one block behind the other site's. At session start both sides send their
        stream end offsets; the side that lags calls ``fill_hole(block_id, gaps)``,
        which advances its streams over the missing bytes without storing them (as
        :meth:`LinkFeeder.align` does in one process); the hello then checks that both
        sides' ends agree. ``stream_ends`` is read only once the feeder has stored every
        block this source handed out.
        """
        self._store_ends = stream_ends
        self._fill_hole = fill_hole

    # -- the session thread --------------------------------------------------------------

    def _open_channel(self) -> Any:
        """One connection: accept (the listener stays bound) or one connect attempt.

        Raises ProtocolAbort ``channel_timeout`` (nobody came, listening side, checked
        every second so that ``close`` is never held up) or a connection-loss reason."""
        from corridor.distill.transport import TcpListener, connect

        host, port = self.address
        name = f"{self.link_id}:{self.role}"
        if not self.listen:
            return connect(host, port, timeout_s=min(self.connect_timeout_s,
                                                     self.config.channel_timeout_s),
                           retries=0, name=name)
        if self._listener is None:
            self._listener = TcpListener(host, port, name=name,
                                         send_timeout_s=self.config.channel_timeout_s)
        while True:
            try:
                return self._listener.accept(timeout_s=1.0)
            except ProtocolAbort as exc:
                if exc.reason != "channel_timeout":
                    raise
            if self._stop.is_set():
                raise ProtocolAbort("source_closed", "closed before the peer was reached")

    def _wait_fed(self) -> None:
        """Wait until the feeder has stored every block handed out (only with a store)."""
        if self._store_ends is None:
            return
        while self._fed < self._queued:
            if self._stop.wait(_POLL_S):
                raise ProtocolAbort("source_closed", "closed while the feeder caught up")

    def _hand_out(self, block: KeyBlock, trim_bytes: int = 0) -> None:
        """Queue one finished block for the feeder (``trim_bytes`` of its key were spent
        on the confirmation; see the class docstring)."""
        self._proposal = max(self._proposal, block.block_id + 1)
        if block.state is BlockState.AUTHENTICATED:
            self._delivered_through = block.block_id
        while not self._stop.is_set():
            try:
                self._out.put((block, trim_bytes), timeout=_POLL_S)
                self._queued += 1
                return
            except queue.Full:
                continue
        block.discard("source_closed")

    def _settle_pending(self, theirs: Mapping[str, Any], ends: dict[str, int] | None) -> None:
        """At a session start: deliver the block whose confirmation was cut if the peer
        has it, else hand it out as aborted ``channel_lost`` (both sides then agree)."""
        block, self._pending = self._pending, None
        if block is None:
            return
        their_through, their_ends = theirs["delivered_through"], theirs["stream_ends"]
        deliver = their_through is not None and their_through >= block.block_id
        if not deliver and ends is not None and their_ends is not None:
            trimmed = len(block.key_bytes()) - CONFIRM_REFILL_BYTES
            halves = split_block(bytes(max(trimmed, 0)))
            deliver = trimmed > 0 and all(their_ends[d] == ends[d] + len(halves[d])
                                          for d in DIRECTIONS)
        if deliver:
            _log.warning("party %s of link %s: block %d confirmed by the peer at session "
                         "start, delivered", self.role, self.link_id, block.block_id)
            self._hand_out(block, CONFIRM_REFILL_BYTES)
        else:
            _log.warning("party %s of link %s: block %d was not confirmed by the peer "
                         "before the connection was lost: discarded", self.role,
                         self.link_id, block.block_id)
            block.discard(REASON_CHANNEL_LOST)
            self._hand_out(block)

    def _agree_first_block(self, processor: Any, mine: int) -> int:
        """Step 3 of the session start: both sides start at the larger proposal, a block
        left unconfirmed is settled, and the side whose store lags pads its streams up
        to the other's (see ``align_store``)."""
        channel, timeout_s = processor.channel, self.config.channel_timeout_s
        self._wait_fed()
        ends = self._store_ends() if self._store_ends is not None else None
        pending = self._pending.block_id if self._pending is not None else None
        payload = json.dumps({"next_block_id": mine, "stream_ends": ends,
                              "delivered_through": self._delivered_through,
                              "pending": pending}).encode()
        if self.role == SIDE_ALICE:
            channel.send(MESSAGE_SESSION_RESUME, payload)
            theirs_raw = channel.recv(MESSAGE_SESSION_RESUME, timeout_s)
        else:
            theirs_raw = channel.recv(MESSAGE_SESSION_RESUME, timeout_s)
            channel.send(MESSAGE_SESSION_RESUME, payload)
        theirs = _parse_resume(theirs_raw)
        first = max(mine, theirs["next_block_id"])
        if self._pending is not None:
            self._settle_pending(theirs, ends)
            self._wait_fed()
            first = max(first, self._proposal)
            ends = self._store_ends() if self._store_ends is not None else None
        their_ends = theirs["stream_ends"]
        if self._fill_hole is not None and their_ends is not None and ends is not None:
            gaps = {d: their_ends[d] - ends[d] for d in DIRECTIONS}
            if any(gap > 0 for gap in gaps.values()):
                # The hole stands for the blocks this side missed; its ID is below the
                # agreed first block and above this store's last one.
                self._fill_hole(first - 1, {d: gap for d, gap in gaps.items() if gap > 0})
        return first

    def _confirm(self, processor: Any, block: KeyBlock) -> None:
        """Step 5's ``block.done`` exchange for a block that finished at both sides."""
        channel, timeout_s = processor.channel, self.config.channel_timeout_s
        ok = block.state is BlockState.AUTHENTICATED
        mine = json.dumps({"block_id": block.block_id, "ok": ok}).encode()
        if ok:
            self._pending = block
        self._proposal = max(self._proposal, block.block_id + 1)
        if self.role == SIDE_ALICE:
            if self._stop.is_set():
                # Closing: confirm nothing this side can no longer keep (Bob then holds
                # the block unconfirmed and discards it at the next session start).
                raise ProtocolAbort("source_closed", f"closed before block "
                                    f"{block.block_id} was confirmed")
            channel.send(MESSAGE_BLOCK_DONE, mine)
            theirs = _parse_done(channel.recv(MESSAGE_BLOCK_DONE, timeout_s), block.block_id)
        else:
            theirs = _parse_done(channel.recv(MESSAGE_BLOCK_DONE, timeout_s), block.block_id)
            if self._stop.is_set():
                # Closing: the feeder stores nothing more, so Bob must not confirm a
                # block he cannot keep (Alice then settles it at the next session).
                raise ProtocolAbort("source_closed", f"closed before block "
                                    f"{block.block_id} was confirmed")
        self._pending = None
        if ok and theirs:
            key = block.key_bytes()
            # Both sides refill the pool with the same first bytes of the same key.
            processor.pool.replenish(key[:CONFIRM_REFILL_BYTES])
            processor.replenished_bits += 8 * min(len(key), CONFIRM_REFILL_BYTES)
            self._hand_out(block, CONFIRM_REFILL_BYTES)
        else:
            if ok:
                block.discard(REASON_PARTIES_DISAGREE)
            self._hand_out(block)
        if self.role == SIDE_BOB:
            channel.send(MESSAGE_BLOCK_DONE, mine)

    def _session(self, proposed_first: int) -> ProtocolAbort | None:
        """One TCP session: returns None when the source is done (``max_blocks``
        reached or closed), or the ProtocolAbort that ended it."""
        processor = None
        try:
            endpoint = self._open_channel()
            self._endpoint = endpoint
            nonce = os.urandom(SESSION_NONCE_BYTES)
            endpoint.send(MESSAGE_SESSION_NONCE, nonce)
            peer_nonce = endpoint.recv(MESSAGE_SESSION_NONCE, self.config.channel_timeout_s)
            if len(peer_nonce) != SESSION_NONCE_BYTES:
                raise ProtocolAbort("malformed_message", "the peer's session nonce has "
                                    f"{len(peer_nonce)} bytes, not {SESSION_NONCE_BYTES}")
            alice_nonce, bob_nonce = (nonce, peer_nonce) if self.role == SIDE_ALICE \
                else (peer_nonce, nonce)
            key = session_auth_key(self._psk, alice_nonce, bob_nonce, self.link_id,
                                   self.config.auth_pool_bytes)
            processor = make_processor(self.role, endpoint, key, self._rng, self.config,
                                       self.params)
            first = self._agree_first_block(processor, proposed_first)
            # The pipeline's hello refuses the session unless both sides hold the same
            # stream ends after the padding above (fail closed: keys would not line up).
            self._wait_fed()
            ends_now = self._store_ends() if self._store_ends is not None else None
            info = repr((sorted(self.params.flat().items()), self.simulation_seed,
                         self.block_pulses, first, ends_now)).encode()
        except ProtocolAbort as exc:
            if processor is not None:
                processor.notify_peer(exc.reason)
            self._close_endpoint()
            return exc
        except Exception:
            if processor is not None:
                processor.notify_peer("internal_error")
            self._close_endpoint()
            raise
        if self.first_block_id is None:
            self.first_block_id = first
            if self.max_blocks is not None:
                self._end_id = first + self.max_blocks
        self._proposal = max(self._proposal, first)
        end_id = self._end_id

        def blocks() -> Iterator[tuple[int, int, AliceRecords | BobRecords]]:
            block_id = first
            while not self._stop.is_set():
                if end_id is not None and block_id >= end_id:
                    return
                started = time.monotonic()
                records = simulate_block(self.params, self.block_pulses,
                                         block_simulation_rng(self.simulation_seed, block_id),
                                         block_id=block_id)
                own = records.alice if self.role == SIDE_ALICE else records.bob
                pulses = records.pulses
                del records
                yield block_id, pulses, own
                block_id += 1
                rest_s = self.block_interval_s - (time.monotonic() - started)
                if rest_s > 0:
                    self._stop.wait(rest_s)

        def progress(block: KeyBlock) -> None:
            if block.meta.get("session_abort"):
                reason = block.discard_reason or "session_abort"
                detail = str(block.meta.get("discard_detail") or "")
                if _is_connection_loss(reason, detail):
                    self._loss_reason = reason
                    block.discard(REASON_CHANNEL_LOST)
                self._hand_out(block)
                return
            self._confirm(processor, block)

        self._on_established()
        outcome = run_party(processor, blocks(), progress, info)
        if outcome.run_abort is None and self._stop.is_set():
            # Wakes a peer that would otherwise wait for our next message until timeout.
            processor.notify_peer("source_closed")
        self._close_endpoint()
        if outcome.internal_error is not None:
            raise outcome.internal_error
        if outcome.run_abort is None:
            return None
        reason, _, detail = outcome.run_abort.partition(":")
        return ProtocolAbort(reason.strip(), detail.strip())

    def _on_established(self) -> None:
        """A session passed its start (steps 1-3): count it, report a restored channel."""
        self.sessions += 1
        if self._lost_at is not None:
            outage_s = time.monotonic() - self._lost_at
            _log.warning("party %s of link %s: classical channel restored after %.1f s "
                         "(%d attempt(s))", self.role, self.link_id, outage_s, self._attempts)
            self.events.emit(EVENT_CHANNEL_RESTORED, link_id=self.link_id, role=self.role,
                             outage_s=round(outage_s, 3), attempts=self._attempts,
                             first_block_id=self._proposal)
            self._lost_at = None
        self._attempts = 0
        self._backoff_s = self.reconnect_initial_s

    def _run(self, proposed_first: int) -> None:
        """The session thread: sessions one after another until done, closed or a fatal
        (non-connection) abort."""
        self._proposal = proposed_first
        try:
            while not self._stop.is_set():
                sessions_before = self.sessions
                ended = self._session(self._proposal)
                if ended is None or self._stop.is_set():
                    return
                if not _is_connection_loss(ended.reason, ended.detail):
                    self._run_abort = str(ended)
                    return
                self._lost(ended, established=self.sessions > sessions_before)
                if self.listen:
                    continue  # the bound port waits for the peer: nothing to back off
                wait_s = self._backoff_s * (0.5 + 0.5 * _jitter())
                self._backoff_s = min(2 * self._backoff_s, self.reconnect_max_s)
                if self._stop.wait(wait_s):
                    return
        except Exception as exc:
            # A bug, not a protocol event: stop this side (fail closed) and say so.
            self._run_abort = f"internal_error: {type(exc).__name__}"
            _log.error("party %s of link %s stopped: %s", self.role, self.link_id,
                       type(exc).__name__)
        finally:
            self._close_endpoint()
            if self._listener is not None:
                self._listener.close()
            if self._pending is not None:
                self._pending.discard("source_closed")
                self._pending = None

    def _lost(self, ended: ProtocolAbort, *, established: bool) -> None:
        """One failed attempt or one lost session: log, count, emit at the first."""
        self._attempts += 1
        reason = ended.reason
        if reason == REASON_CHANNEL_LOST and self._loss_reason is not None:
            reason = self._loss_reason  # what the transport said, for the operator
        self._loss_reason = None
        if established or (self._lost_at is None and self.sessions > 0):
            self.channel_losses += 1
            self._lost_at = time.monotonic()
            _log.warning("party %s of link %s: classical channel lost (%s); reconnecting "
                         "with backoff from %.1f s", self.role, self.link_id, reason,
                         self.reconnect_initial_s)
            self.events.emit(EVENT_CHANNEL_LOST, link_id=self.link_id, role=self.role,
                             reason=reason, next_block_id=self._proposal,
                             unconfirmed_block=self._pending is not None)
        elif self.sessions > 0 or self._attempts in (1, 10) or self._attempts % 60 == 0:
            _log.warning("party %s of link %s: peer not reached (%s, attempt %d)",
                         self.role, self.link_id, reason, self._attempts)

    def _close_endpoint(self) -> None:
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            with contextlib.suppress(Exception):
                endpoint.close()

    # -- KeySource -----------------------------------------------------------------------

    def start(self, first_block_id: int) -> None:
        """Start the session thread: propose ``first_block_id`` to the peer (see class
        docstring)."""
        _positive("first_block_id", first_block_id, integer=True, allow_zero=True)
        if self._thread is not None:
            raise ParameterError("source", "started", "a SimulatedLinkPartySource starts once")
        self._next_id = first_block_id
        self._thread = threading.Thread(target=self._run, args=(first_block_id,),
                                        name=f"corridor-{self.role}-{self.link_id}",
                                        daemon=True)
        self._thread.start()

    @property
    def finished(self) -> bool:
        """True once the session thread has ended and every block has been handed out."""
        return self._thread is not None and not self._thread.is_alive() \
            and self._out.empty() and self._session_reported

    def next_block(self, timeout_s: float) -> SourceBlock | None:
        """This party's next block (its key only), or None within ``timeout_s``.

        After a fatal session-level abort, one aborted block carrying its reason, then
        None. A caller that stores blocks calls this again only once it has stored the
        previous one (the session start waits for that; see ``align_store``).
        """
        if self._thread is None or self._next_id is None:
            raise ParameterError("source", "not started", "call start(first_block_id) first")
        self._fed = self._returned
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                block, trim = self._out.get(timeout=max(min(deadline - time.monotonic(),
                                                            _POLL_S), 0.001))
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._out.empty():
                    return self._session_end()
                if time.monotonic() >= deadline:
                    return None
        self._next_id = block.block_id + 1
        self._returned += 1
        return _party_block(self.link_id, self.role, block, self.pulse_duration_s, trim)

    def _session_end(self) -> SourceBlock | None:
        if self._session_reported:
            return None
        self._session_reported = True
        if self._run_abort is None or self._stop.is_set():
            return None
        assert self._next_id is not None
        block_id = max(self._next_id, self._proposal)
        self._next_id = block_id + 1
        return SourceBlock(link_id=self.link_id, block_id=block_id, alice_key=b"",
                           bob_key=b"", aborted_reason=_abort_reason(self._run_abort))

    def close(self) -> None:
        """Stop after the block in progress, tell the peer, join the session thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.config.channel_timeout_s + 5.0)
            if self._thread.is_alive():
                # Still waiting for a peer message: closing the socket ends the wait.
                self._close_endpoint()
                self._thread.join(timeout=5.0)
        while not self._out.empty():
            self._out.get_nowait()[0].discard("source_closed")

    def __repr__(self) -> str:
        host, port = self.address
        return (f"SimulatedLinkPartySource(link_id={self.link_id!r}, role={self.role!r}, "
                f"{'listen' if self.listen else 'connect'}={host}:{port}, "
                f"block_pulses={self.block_pulses})")


def _jitter() -> float:
    """A uniform draw in [0, 1) for the reconnection backoff (timing only, not secret)."""
    return int.from_bytes(os.urandom(4), "big") / 2**32


def _is_connection_loss(reason: str, detail: str) -> bool:
    """True if a session ended only because the connection is gone (see the class
    docstring of :class:`SimulatedLinkPartySource`); never for a tampered message."""
    if reason in CONNECTION_LOSS_REASONS or reason == REASON_CHANNEL_LOST:
        return True
    return peer_abort_reason(ProtocolAbort(reason, detail)) in _PEER_GONE_REASONS


def _parse_resume(payload: bytes) -> dict[str, Any]:
    """The peer's ``session.resume`` message: its first block ID, stream ends, the last
    block it delivered and the block it holds unconfirmed (None where it has none)."""
    def block_id(value: Any, optional: bool) -> bool:
        if value is None:
            return optional
        return isinstance(value, int) and not isinstance(value, bool) and \
            0 <= value < _MAX_BLOCK_ID

    try:
        data = json.loads(payload.decode("utf-8"))
        ends = data["stream_ends"]
        ok = isinstance(data, dict) and block_id(data["next_block_id"], False) and \
            block_id(data["delivered_through"], True) and block_id(data["pending"], True)
        if ends is not None:
            ok = ok and isinstance(ends, dict) and set(ends) == set(DIRECTIONS) and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _MAX_BLOCK_ID * 2
                for v in ends.values())
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ProtocolAbort("malformed_message", "the peer's session.resume message is not "
                            "a first block ID, stream end offsets and delivered block IDs")
    return {"next_block_id": data["next_block_id"], "delivered_through":
            data["delivered_through"], "pending": data["pending"],
            "stream_ends": dict(ends) if ends is not None else None}


def _parse_done(payload: bytes, block_id: int) -> bool:
    """The peer's ``block.done`` for ``block_id``: whether its copy is AUTHENTICATED."""
    try:
        data = json.loads(payload.decode("utf-8"))
        ok = isinstance(data, dict) and data["block_id"] == block_id and \
            isinstance(data["ok"], bool)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ProtocolAbort("malformed_message", f"the peer's block.done message is not a "
                            f"confirmation of block {block_id}")
    return bool(data["ok"])


def _public_figures(block: KeyBlock, pulse_duration_s: float
                    ) -> tuple[float | None, dict[str, float]]:
    """A distilled block's acquisition time and public counters."""
    pulses = block.meta.get("pulses")
    duration_s = pulses * pulse_duration_s if isinstance(pulses, int) and pulses > 0 else None
    meta = {name: float(block.meta[name]) for name in
            ("pulses", "sifted_bits", "disclosed_bits", "finite_key_bits")
            if isinstance(block.meta.get(name), int | float)}
    return duration_s, meta


def _party_block(link_id: str, side: str, block: KeyBlock,
                 pulse_duration_s: float, trim_bytes: int = 0) -> SourceBlock:
    """One party's finished block as a SourceBlock (its key zeroized in the KeyBlock);
    the first ``trim_bytes`` of the key went into the authentication pool."""
    duration_s, meta = _public_figures(block, pulse_duration_s)
    qber = _block_qber(block)
    key = b""
    reason: str | None = None
    if block.state is BlockState.AUTHENTICATED:
        key = block.key_bytes()[trim_bytes:]
        block.discard("handed_to_key_source")
        if trim_bytes:
            meta["confirm_refill_bits"] = float(8 * trim_bytes)
    else:
        reason = block.discard_reason or "session_abort"
    if reason is not None or not key:
        return SourceBlock(link_id=link_id, block_id=block.block_id, alice_key=b"",
                           bob_key=b"", aborted_reason=reason or "no_secret_key", qber=qber,
                           duration_s=duration_s, meta=meta)
    return SourceBlock(link_id=link_id, block_id=block.block_id,
                       alice_key=key if side == SIDE_ALICE else b"",
                       bob_key=key if side == SIDE_BOB else b"", qber=qber,
                       duration_s=duration_s, meta=meta)


# ---------------------------------------------------------------------------------------
# The feeder


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

    def as_dict(self) -> dict[str, Any]:
        """Plain data (no key material is ever held here)."""
        return {name: getattr(self, name) for name in (
            "blocks_seen", "blocks_stored", "blocks_aborted", "blocks_quarantined",
            "halves_dropped_full", "bytes_stored", "secret_bits_produced", "last_block_id",
            "last_qber", "last_key_rate_bits_per_second", "last_outcome", "last_abort_reason",
            "stopped_reason")}


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
        full_backoff_s: pause after a block dropped for capacity, so a full pool does not
            keep the simulation spinning.
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
        self.poll_s = float(_positive("poll_s", poll_s))
        self.full_backoff_s = float(_positive("full_backoff_s", full_backoff_s, allow_zero=True))
        self.stats = FeederStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.on_block: Callable[[SourceBlock, str], None] | None = None
        self.error: Exception | None = None

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

    def _fits(self, halves: Mapping[str, bytes]) -> dict[str, bool]:
        fits = {}
        for direction, half in halves.items():
            fits[direction] = bool(half) and all(
                m.pool_state(self.link_id, direction).available_bytes + len(half)
                <= m.config.pool_capacity_bytes for m in self.sides.values())
        return fits

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
        if outcome in ("aborted", "empty") or (outcome == "quarantined"
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
                    self._stop.wait(self.full_backoff_s)
        except Exception as exc:
            # Fail closed: no further block enters any pool; the operator sees why.
            self.error = exc
            _log.error("key feed of link %s stopped: %s", self.link_id, type(exc).__name__)
            self._stopped("error")
            return
        self._stopped("stopped")

    def _stopped(self, reason: str) -> None:
        if self.stats.stopped_reason is None:
            self.stats.stopped_reason = reason
            self.events.emit("link_source_stopped", link_id=self.link_id, reason=reason,
                             blocks_seen=self.stats.blocks_seen)

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
