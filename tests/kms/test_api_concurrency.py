"""Many SAEs at once, both directions of the link at the same time, over mutual TLS
against two real KMEs: every key is delivered exactly once to each side, and the bytes
the slave gets equal the bytes the master got."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from corridor.kms.client import KmeResponseError
from corridor.kms.interface import MSG_KEYS_NOT_FOUND
from tests.kms.mtls_harness import fingerprint, two_kme_deployment

# (master, slave): two pairs master at KME A, two at KME B.
PAIRS = [("sae-a", "sae-b"), ("sae-a2", "sae-c"), ("sae-b", "sae-a"), ("sae-c", "sae-a2")]
WORKERS_PER_PAIR = 3
REQUESTS_PER_WORKER = 12
KEYS_PER_REQUEST = 3
_DONE = object()


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with two_kme_deployment(tmp_path_factory.mktemp("kmes")) as deployment:
        yield deployment


def test_parallel_masters_and_slaves_in_both_directions(dep) -> None:
    # Enough for every request: 4 pairs x 3 workers x 12 requests x 3 keys x 32 bytes per
    # direction pair = 6912 bytes per pool direction at most; ingest 8x that.
    dep.ingest(2 * 4 * 6912)
    issued: dict[tuple[str, str], list[tuple[str, str]]] = {p: [] for p in PAIRS}
    received: dict[tuple[str, str], list[tuple[str, str]]] = {p: [] for p in PAIRS}
    lock = threading.Lock()
    queues = {pair: queue.Queue() for pair in PAIRS}

    def master(pair: tuple[str, str]) -> None:
        with dep.client(pair[0]) as client:
            for _ in range(REQUESTS_PER_WORKER):
                keys = client.get_key(pair[1], number=KEYS_PER_REQUEST)
                with lock:
                    issued[pair] += [(k.key_id, fingerprint(k.key)) for k in keys]
                queues[pair].put([k.key_id for k in keys])

    def slave(pair: tuple[str, str], producers: int) -> None:
        finished = 0
        with dep.client(pair[1]) as client:
            while finished < producers:
                item = queues[pair].get(timeout=60)
                if item is _DONE:
                    finished += 1
                    continue
                keys = client.get_key_with_id(pair[0], item)
                with lock:
                    received[pair] += [(k.key_id, fingerprint(k.key)) for k in keys]

    with ThreadPoolExecutor(max_workers=len(PAIRS) * (WORKERS_PER_PAIR + 1)) as pool:
        slaves = [pool.submit(slave, pair, WORKERS_PER_PAIR) for pair in PAIRS]
        masters = [(pair, pool.submit(master, pair)) for pair in PAIRS
                   for _ in range(WORKERS_PER_PAIR)]
        for pair, future in masters:
            try:
                future.result(timeout=120)
            finally:
                queues[pair].put(_DONE)
        for future in slaves:
            future.result(timeout=120)

    expected = WORKERS_PER_PAIR * REQUESTS_PER_WORKER * KEYS_PER_REQUEST
    all_ids = Counter()
    all_bytes = Counter()
    for pair in PAIRS:
        assert len(issued[pair]) == expected
        assert sorted(issued[pair]) == sorted(received[pair]), pair
        all_ids.update(key_id for key_id, _ in issued[pair])
        all_bytes.update(key for _, key in issued[pair])
    # Exactly once: no key ID and no key material handed out under two IDs (64-bit
    # fingerprints of distinct random keys collide with probability below 2^-45 here).
    assert max(all_ids.values()) == 1
    assert max(all_bytes.values()) == 1
    # And never again, to anyone.
    with dep.client("sae-b") as sae_b, pytest.raises(KmeResponseError) as info:
        sae_b.get_key_with_id("sae-a", [issued[("sae-a", "sae-b")][0][0]])
    assert info.value.message == MSG_KEYS_NOT_FOUND


def test_racing_for_a_short_pool_never_over_delivers(dep) -> None:
    with dep.client("sae-b") as probe:
        before = probe.status("sae-a").stored_key_count
    dep.ingest(2 * 40 * 32)  # 40 more keys of 256 bits per direction
    with dep.client("sae-b") as probe:
        available = probe.status("sae-a").stored_key_count
    assert available >= before + 40
    outcomes: list[int] = []
    delivered: list[tuple[str, str]] = []
    lock = threading.Lock()

    per_request = 16
    max_requests = available // per_request + 2  # enough for one worker to drain the pool

    def greedy() -> None:
        # Ask until the pool refuses: every worker ends on a 503.
        with dep.client("sae-b") as client:
            for _ in range(max_requests):
                try:
                    keys = client.get_key("sae-a", number=per_request)
                except KmeResponseError as exc:
                    with lock:
                        outcomes.append(exc.status_code)
                    if exc.status_code == 503:
                        return
                    continue
                with lock:
                    outcomes.append(200)
                    delivered.extend((k.key_id, fingerprint(k.key)) for k in keys)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(greedy) for _ in range(8)]:
            future.result(timeout=120)
    assert set(outcomes) <= {200, 503}
    assert outcomes.count(503) == 8
    assert len(delivered) <= available
    assert len({k for k, _ in delivered}) == len(delivered)
    with dep.client("sae-b") as probe:
        left = probe.status("sae-a").stored_key_count
    # Every key either went out or is still there (fewer than one request's worth):
    # nothing lost to the races.
    assert len(delivered) + left == available
    assert left < per_request
    with dep.client("sae-a") as slave:
        ids = [key_id for key_id, _ in delivered]
        got = []
        for start in range(0, len(ids), 128):  # max_key_per_request
            got += slave.get_key_with_id("sae-b", ids[start:start + 128])
    assert [(k.key_id, fingerprint(k.key)) for k in got] == delivered
