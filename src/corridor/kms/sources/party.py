"""One party of a simulated link, over TCP, as a key source (split-site deployment).

This module owns :class:`SimulatedLinkPartySource` and its session protocol: one party
of the simulated link (Alice's or Bob's) and its distillation, for one KME process of a
split-site deployment. The classical channel to the other site's party is TCP; a session
agrees the next block ID (and lines up the two stores' streams) before its first block
(``session.nonce``, ``session.resume``), every key block is confirmed by both parties
before it is handed out (``block.done``), and a lost connection is re-established by
itself with backoff (``link_channel_lost`` / ``link_channel_restored`` events), while an
authentication failure stops the feed. It also owns the helpers both sites must compute
alike: :func:`session_auth_key` and :func:`block_simulation_rng`.

With only one side present (``corridor kme serve`` at one site) the session lines up the
two sites' streams at its start (:meth:`SimulatedLinkPartySource.align_store`, set by
:class:`~corridor.kms.sources.feeder.LinkFeeder`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from numpy.random import PCG64, Generator, SeedSequence

from corridor.distill.auth import PAD_BYTES
from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.pipeline import DistillConfig, make_processor, run_party
from corridor.distill.transport import CONNECTION_LOSS_REASONS, peer_abort_reason
from corridor.errors import ParameterError, ProtocolAbort
from corridor.kms.config import DIRECTIONS, check_id, split_block
from corridor.kms.interface import EventSink, NullEventSink
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

_log = logging.getLogger(__name__)


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
            :class:`~corridor.kms.sources.feeder.LinkFeeder` sets its own sink when it
            starts the source).
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
        self.simulation_seed = check_positive("simulation_seed", simulation_seed, integer=True,
                                              allow_zero=True)
        if not isinstance(psk, bytes) or len(psk) < 64:
            raise ParameterError("psk", "(not shown)", "must be at least 64 bytes")
        self._psk = psk
        self.block_pulses = check_positive("block_pulses", block_pulses, integer=True)
        self.config = link_config(params, link_id, config)
        self._rng = rng if rng is not None else RandomSource.system()
        self.block_interval_s = float(check_positive("block_interval_s", block_interval_s,
                                                     allow_zero=True))
        if max_blocks is not None:
            check_positive("max_blocks", max_blocks, integer=True)
        self.max_blocks = max_blocks
        self.connect_timeout_s = float(check_positive("connect_timeout_s", connect_timeout_s))
        check_positive("queue_blocks", queue_blocks, integer=True)
        self.reconnect_initial_s = float(check_positive("reconnect_initial_s", reconnect_initial_s))
        self.reconnect_max_s = float(check_positive("reconnect_max_s", reconnect_max_s))
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
        """Let the session keep the two sites' streams in line (set by
        :class:`~corridor.kms.sources.feeder.LinkFeeder`).

        A process that stops between handing a block out and storing it leaves its
        store one block behind the other site's. At session start both sides send their
        stream end offsets; the side that lags calls ``fill_hole(block_id, gaps)``,
        which advances its streams over the missing bytes without storing them (as
        :meth:`~corridor.kms.sources.feeder.LinkFeeder.align` does in one process); the
        hello then checks that both sides' ends agree. ``stream_ends`` is read only once
        the feeder has stored every block this source handed out.
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
            if self._stop.wait(POLL_S):
                raise ProtocolAbort("source_closed", "closed while the feeder caught up")

    def _hand_out(self, block: KeyBlock, trim_bytes: int = 0) -> None:
        """Queue one finished block for the feeder (``trim_bytes`` of its key were spent
        on the confirmation; see the class docstring)."""
        self._proposal = max(self._proposal, block.block_id + 1)
        if block.state is BlockState.AUTHENTICATED:
            self._delivered_through = block.block_id
        while not self._stop.is_set():
            try:
                self._out.put((block, trim_bytes), timeout=POLL_S)
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
                del own  # not held while the next block is simulated
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
        outcome = run_party(processor, blocks(), progress, info, keep_blocks=False)
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
        check_positive("first_block_id", first_block_id, integer=True, allow_zero=True)
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
                                                            POLL_S), 0.001))
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
                           bob_key=b"", aborted_reason=abort_reason(self._run_abort))

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


def _party_block(link_id: str, side: str, block: KeyBlock,
                 pulse_duration_s: float, trim_bytes: int = 0) -> SourceBlock:
    """One party's finished block as a SourceBlock (its key zeroized in the KeyBlock);
    the first ``trim_bytes`` of the key went into the authentication pool."""
    duration_s, meta = public_figures(block, pulse_duration_s)
    qber = block_qber(block)
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
