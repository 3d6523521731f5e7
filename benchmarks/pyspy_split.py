"""Where a KME's threads spend their wall time: sums py-spy's raw stacks
(``bench_kme_serve.sh`` with ``PROFILE_DIR``) into the shares of the enc_keys batch
worker's steps and the most sampled frames.

    .venv/bin/python benchmarks/pyspy_split.py DIR/closed-loop--64-connections--1-key-kme-a.txt

Prints the batch worker's wall time (``KeyManager.enc_keys_batch``) split into the
audit entries (``AuditLog.emit``, durable ones wait for the group fsync), the
announcement to the slave's KME (``CoalescingPeerLink.announce``, a round trip) and
the store's transaction; then how busy the event loop thread was and its busiest
frames.
"""

from __future__ import annotations

import collections
import signal
import sys
from typing import NoReturn

BATCH = "KeyManager.enc_keys_batch"
STEPS = {"audit entries (AuditLog.emit)": "AuditLog.emit",
         "announcement to the slave's KME": "CoalescingPeerLink.announce",
         "store transaction": "SqliteKeyStore._transaction"}
LOOP, IDLE = "Server.run", "EpollSelector.select"


def _has(frames: list[str], name: str) -> bool:
    return any(frame.split(" (")[0] == name for frame in frames)


def main(path: str, top: int = 15) -> None:
    total = batch = loop = loop_idle = 0
    steps: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    try:
        with open(path) as stacks:
            lines = stacks.readlines()
    except OSError as exc:
        _fail(f"error: {path}: {exc.strerror}")
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        if _has(frames, BATCH):
            batch += samples
            for name, marker in STEPS.items():
                steps[name] += samples if _has(frames, marker) else 0
        elif _has(frames, LOOP):
            loop += samples
            loop_idle += samples if frames[-1].split(" (")[0] == IDLE else 0
            own[frames[-1].split(" (")[0]] += samples
    if not batch or not loop:
        _fail(f"error: {path}: no batch worker or no event loop in the samples (the master "
              "KME's file of a bench_kme_serve.sh phase?)")
    print(f"{path}: {total} samples")
    print(f"batch worker, {batch} samples in enc_keys_batch:")
    for name in STEPS:
        print(f"{steps[name] / batch:7.1%}  {name}")
    print(f"{1 - sum(steps.values()) / batch:7.1%}  the rest (admission, IDs, answer)")
    print(f"event loop: busy {1 - loop_idle / loop:.1%} of its samples; its busiest frames:")
    for frame, samples in own.most_common(top):
        print(f"{samples / loop:7.1%}  {frame}")


def _fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends it quietly
    if len(sys.argv) != 2:
        _fail(f"usage: {sys.argv[0]} PROFILE_FILE (one file of bench_kme_serve.sh's PROFILE_DIR)")
    main(sys.argv[1])
