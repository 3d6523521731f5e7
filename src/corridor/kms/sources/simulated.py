"""The in-process simulated link as a key source.

This module owns :class:`SimulatedLinkSource`: the simulated link
(``corridor.link.simulator``) and the distillation (``corridor.distill.pipeline``)
running continuously in background threads: Alice's and Bob's processors talk only over
their authenticated in-process channel; every block that reaches AUTHENTICATED on both
sides with equal output is a key block, every other one is reported with its reason.

It also owns :class:`BlockSlots`, the share of the CPU among the simulated links of one
process (``corridor up``): a block takes a slot before it is simulated and gives it back
once both parties finished it, slots are granted first come first served, so with as many
slots as cores each block runs at nearly full speed and every link gets its turn. Without
it, ten links on two cores each finish their first block only after all ten did most of
theirs (the city corridor: ~60 s instead of ~3 s to the first key).
"""

from __future__ import annotations

import collections
import hmac
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.channel import in_process_pair
from corridor.distill.pipeline import DistillConfig, PartyOutcome, make_processor, run_party
from corridor.errors import ParameterError
from corridor.kms.config import check_id
from corridor.kms.sources.base import (
    POLL_S,
    REASON_PARTIES_DISAGREE,
    SIDE_ALICE,
    SIDE_BOB,
    SIDES,
    SourceBlock,
    abort_reason,
    block_qber,
    check_positive,
    link_config,
    public_figures,
)
from corridor.link.params import LinkParameters
from corridor.link.records import AliceRecords, BobRecords
from corridor.link.simulator import simulate_block
from corridor.randomness import RandomSource


class BlockSlots:
    """At most ``slots`` blocks in work at once across the sources sharing this object,
    granted in the order they were asked for (module docstring)."""

    def __init__(self, slots: int) -> None:
        check_positive("slots", slots, integer=True)
        self.slots = int(slots)
        self._cond = threading.Condition()
        self._free = self.slots
        self._waiting: collections.deque[object] = collections.deque()

    def __repr__(self) -> str:
        return f"BlockSlots(slots={self.slots}, free={self._free})"

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a slot (False once ``stop`` is set while waiting)."""
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                while not (self._free > 0 and self._waiting[0] is ticket):
                    if stop.is_set():
                        return False
                    self._cond.wait(POLL_S)
                self._waiting.popleft()
                self._free -= 1
                return True
            finally:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()

    def release(self, count: int = 1) -> None:
        """Give back ``count`` slots."""
        if count <= 0:
            return
        with self._cond:
            self._free = min(self.slots, self._free + count)
            self._cond.notify_all()


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
        queue_blocks: blocks simulated but not yet taken by the feeder (``next_block``)
            before the simulation waits for it: a feeder that stops taking blocks (full
            pools) stops the simulation after that many, and those blocks still finish
            and give their slots back, so a waiting link never holds the others' slots.
        slots: the :class:`BlockSlots` shared with the other simulated links of the
            process (None: this link runs as fast as the scheduler lets it).

    A block-level abort (QBER, estimation, verification, no key) is delivered as an
    aborted block and the run goes on. A session-level abort (authentication failure,
    malformed message, timeout) is delivered as one aborted block with that reason and
    the source stops: the authenticated channel can no longer be trusted (fail closed).
    """

    def __init__(self, params: LinkParameters, *, link_id: str,
                 block_pulses: int = 10_000_000, config: DistillConfig | None = None,
                 rng: RandomSource | None = None, psk: bytes | None = None,
                 attack: object | None = None, block_interval_s: float = 0.0,
                 max_blocks: int | None = None, queue_blocks: int = 4,
                 slots: BlockSlots | None = None) -> None:
        self.link_id = check_id("link_id", link_id)
        self.params = params
        self.block_pulses = check_positive("block_pulses", block_pulses, integer=True)
        self.config = link_config(params, link_id, config)
        self.block_interval_s = float(check_positive("block_interval_s", block_interval_s,
                                                     allow_zero=True))
        if max_blocks is not None:
            check_positive("max_blocks", max_blocks, integer=True)
        self.max_blocks = max_blocks
        check_positive("queue_blocks", queue_blocks, integer=True)
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
        # One permit per block simulated and not yet handed out: at most queue_blocks,
        # so the parties always find room in ``_out`` and finish every block they start.
        self._room = threading.Semaphore(queue_blocks)
        self._outcomes: dict[str, PartyOutcome] = {}
        self._threads: list[threading.Thread] = []
        self._next_expected: int | None = None
        self._pending: dict[str, KeyBlock] = {}
        self._session_reported = False
        self._started = False
        self._simulation_done = threading.Event()
        self.pulse_duration_s = 1.0 / params.source.pulse_rate_hz
        self._slots = slots
        self._slot_lock = threading.Lock()
        self._slot_blocks: dict[int, int] = {}  # block ID -> parties that finished it

    # -- threads ------------------------------------------------------------------------

    def _put(self, target: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=POLL_S)
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
                # Before the slot: a link whose feeder waits holds no slot.
                while not self._room.acquire(timeout=POLL_S):
                    if self._stop.is_set():
                        break
                if self._stop.is_set():
                    break
                if self._slots is not None:
                    if not self._slots.acquire(self._stop):
                        break
                    with self._slot_lock:
                        self._slot_blocks[block_id] = 0
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
                        self._feeds[side].put(None, timeout=POLL_S)
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
                del item  # not held while waiting for the next block

        def progress(block: KeyBlock) -> None:
            self._party_done(block.block_id)
            self._put(self._out[side], block)

        outcome = run_party(processor, blocks(), progress, keep_blocks=False)
        self._outcomes[side] = outcome
        if self._stop.is_set():
            # The two parties may see the stop between different blocks; the one that
            # stopped first wakes the other, which would otherwise wait for a message
            # until the channel timeout.
            processor.notify_peer("source_closed")
        # Drain so the simulator never waits on a party that has stopped.
        while not self._simulation_done.is_set():
            try:
                self._feeds[side].get(timeout=POLL_S)
            except queue.Empty:
                continue

    def _party_done(self, block_id: int) -> None:
        """One party finished ``block_id``; the second gives its slot back."""
        if self._slots is None:
            return
        with self._slot_lock:
            done = self._slot_blocks.get(block_id)
            if done is None:
                return
            if done + 1 < len(SIDES):
                self._slot_blocks[block_id] = done + 1
                return
            del self._slot_blocks[block_id]
        self._slots.release()

    def _release_slots(self) -> None:
        if self._slots is None:
            return
        with self._slot_lock:
            held = len(self._slot_blocks)
            self._slot_blocks.clear()
        self._slots.release(held)

    def start(self, first_block_id: int) -> None:
        """Start the simulation and both parties; the first block is ``first_block_id``."""
        check_positive("first_block_id", first_block_id, integer=True, allow_zero=True)
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
                return self._out[side].get(timeout=max(min(remaining, POLL_S), 0.001))
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
        self._room.release()
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
        self._release_slots()  # blocks the parties will never finish
        aborts = [o.run_abort for o in self._outcomes.values() if o.run_abort]
        if not aborts or self._stop.is_set():
            return None
        assert self._next_expected is not None
        block_id = self._next_expected
        self._next_expected += 1
        return SourceBlock(link_id=self.link_id, block_id=block_id, alice_key=b"",
                           bob_key=b"", aborted_reason=abort_reason(aborts[0]))

    def _pair(self, alice: KeyBlock, bob: KeyBlock) -> SourceBlock:
        qber = block_qber(bob) if block_qber(bob) is not None else block_qber(alice)
        duration_s, meta = public_figures(alice, self.pulse_duration_s)
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
        self._release_slots()
        for side in SIDES:
            while not self._out[side].empty():
                self._out[side].get_nowait().discard("source_closed")
        for block in self._pending.values():
            block.discard("source_closed")
        self._pending.clear()

    def __repr__(self) -> str:
        return (f"SimulatedLinkSource(link_id={self.link_id!r}, preset={self.params.name!r}, "
                f"length_km={self.params.fibre.length_km:g}, block_pulses={self.block_pulses})")
