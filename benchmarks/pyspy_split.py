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
import sys

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
    with open(path) as stacks:
        for line in stacks:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
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
        raise SystemExit(f"{path}: no batch worker or no event loop in the samples")
    print(f"{path}: {total} samples")
    print(f"batch worker, {batch} samples in enc_keys_batch:")
    for name in STEPS:
        print(f"{steps[name] / batch:7.1%}  {name}")
    print(f"{1 - sum(steps.values()) / batch:7.1%}  the rest (admission, IDs, answer)")
    print(f"event loop: busy {1 - loop_idle / loop:.1%} of its samples; its busiest frames:")
    for frame, samples in own.most_common(top):
        print(f"{samples / loop:7.1%}  {frame}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
