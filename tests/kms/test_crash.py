"""kill -9 of a KME process under load, then a restart on the same store.

Two ``corridor kme serve`` processes (SQLite stores, mutual TLS, each fed from its own
side of a recorded link) serve concurrent SAE clients in both directions. KME B (the
slave of A->B and the master of B->A) is killed with SIGKILL mid-load and restarted on
the same store while the load goes on. Then:

- no key ID was handed out twice, and no two delivered keys share their bytes;
- every key a master SAE received is served exactly once by the other KME, with the
  same bytes (a master delivers only after the slave durably accepted, so nothing that
  was delivered and announced is lost);
- the restarted KME's feed resumed after its last stored block: both stores end with
  the same last block ID and the same stream offsets;
- both audit chains verify.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corridor.errors import CorridorError
from corridor.kms.audit import verify_audit_log
from corridor.kms.client import KmeResponseError, SaeClient
from corridor.kms.config import DIRECTIONS
from corridor.kms.crypto import load_kek
from corridor.kms.pki import PkiLayout, init_pki
from corridor.kms.store_sqlite import SqliteKeyStore
from corridor.kms.tls import bind_socket

LINK = "link-ab"
SAE_KME = {"sae-a": "kme-a", "sae-b": "kme-b"}
BLOCK_BYTES = 2048
BLOCKS = 400
CORRIDOR = str(Path(sys.executable).parent / "corridor")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _free_port() -> int:
    sock = bind_socket("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def _write_corridor(root: Path, ports: dict[str, int]) -> Path:
    kmes = "\n".join(f'[[kmes]]\nid = "{kme}"\nhost = "127.0.0.1"\nport = {port}\n'
                     for kme, port in ports.items())
    saes = "\n".join(f'[[saes]]\nid = "{sae}"\nkme = "{kme}"\n' for sae, kme in SAE_KME.items())
    path = root / "corridor.toml"
    path.write_text(f'''name = "crash-test"
pki_dir = "pki"

[kme]
max_key_per_request = 128

{kmes}
[[links]]
id = "{LINK}"
alice_kme = "kme-a"
bob_kme = "kme-b"
source = "recorded"
keys_dir = "keys"
block_bytes = {BLOCK_BYTES}
block_interval_s = 0.01

{saes}''')
    return path


class Kme:
    """One ``corridor kme serve`` process."""

    def __init__(self, root: Path, config: Path, kme_id: str) -> None:
        self.root, self.config, self.kme_id = root, config, kme_id
        self.process: subprocess.Popen[str] | None = None
        self.log = root / f"{kme_id}.log"

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [CORRIDOR, "kme", "serve", "--config", str(self.config), "--kme", self.kme_id,
                 "--workdir", str(self.root / "state"), "--log-text"],
                stdout=log, stderr=subprocess.STDOUT, text=True)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -1


def _client(pki: PkiLayout, url: str, sae: str) -> SaeClient:
    paths = pki.saes[sae]
    return SaeClient(url, paths.cert, paths.key, pki.ca_cert, expected_kme_id=SAE_KME[sae],
                     timeout_s=10.0)


def _wait_ready(pki: PkiLayout, urls: dict[str, str], kmes: dict[str, Kme],
                timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    for sae, slave in (("sae-a", "sae-b"), ("sae-b", "sae-a")):
        while True:
            process = kmes[SAE_KME[sae]].process
            assert process is not None and process.poll() is None, \
                kmes[SAE_KME[sae]].log.read_text()
            try:
                with _client(pki, urls[SAE_KME[sae]], sae) as client:
                    if client.status(slave).stored_key_count >= 64:
                        break
            except CorridorError:
                pass
            assert time.monotonic() < deadline, f"KME of {sae} not ready"
            time.sleep(0.1)


@contextmanager
def _load(pki: PkiLayout, urls: dict[str, str],
          delivered: list[tuple[str, str, str, bytes]]) -> Iterator[threading.Event]:
    """Two client threads per direction asking for keys until stopped."""
    stop = threading.Event()
    lock = threading.Lock()

    def worker(master: str, slave: str, number: int) -> None:
        client = _client(pki, urls[SAE_KME[master]], master)
        try:
            while not stop.is_set():
                try:
                    keys = client.get_key(slave, number=number)
                except CorridorError:
                    time.sleep(0.02)  # 503 while the peer is down, or connection refused
                    continue
                with lock:
                    delivered.extend((master, slave, k.key_id, k.key) for k in keys)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(m, s, n), daemon=True)
               for m, s in (("sae-a", "sae-b"), ("sae-b", "sae-a")) for n in (1, 3)]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def test_kill9_under_load_loses_nothing_delivered_and_delivers_nothing_twice(
        tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", ["kme-a", "kme-b"], list(SAE_KME.items()))
    keys = tmp_path / "keys"
    keys.mkdir()
    data = os.urandom(BLOCKS * BLOCK_BYTES)
    (keys / "alice.bin").write_bytes(data)
    (keys / "bob.bin").write_bytes(data)
    ports = {kme: _free_port() for kme in ("kme-a", "kme-b")}
    urls = {kme: f"https://127.0.0.1:{port}" for kme, port in ports.items()}
    config = _write_corridor(tmp_path, ports)
    kmes = {kme: Kme(tmp_path, config, kme) for kme in ports}
    delivered: list[tuple[str, str, str, bytes]] = []
    try:
        for kme in kmes.values():
            kme.start()
        _wait_ready(pki, urls, kmes)
        with _load(pki, urls, delivered):
            time.sleep(1.5)
            before_kill = len(delivered)
            kmes["kme-b"].kill9()
            time.sleep(0.5)
            kmes["kme-b"].start()
            _wait_ready(pki, urls, kmes)
            time.sleep(1.5)
        assert before_kill > 0 and len(delivered) > before_kill, "the load made no progress"
        ids = [key_id for _, _, key_id, _ in delivered]
        assert len(set(ids)) == len(ids), "a key ID was delivered twice"
        digests = [hashlib.sha256(key).digest() for *_, key in delivered]
        assert len(set(digests)) == len(digests), "two deliveries share key bytes"
        # Every key a master received is at the slave's KME, once, with the same bytes.
        for master, slave in (("sae-a", "sae-b"), ("sae-b", "sae-a")):
            issued = [(key_id, key) for m, _, key_id, key in delivered if m == master]
            assert issued
            with _client(pki, urls[SAE_KME[slave]], slave) as client:
                for start in range(0, len(issued), 128):
                    chunk = issued[start:start + 128]
                    got = client.get_key_with_id(master, [key_id for key_id, _ in chunk])
                    assert [k.key for k in got] == [key for _, key in chunk]
                with pytest.raises(KmeResponseError) as excinfo:
                    client.get_key_with_id(master, [issued[0][0]])
                assert excinfo.value.status_code == 400
        # The feed resumed after the restart: let both KMEs finish the recording.
        deadline = time.monotonic() + 30.0
        while True:
            codes = {kme: k.terminate() for kme, k in kmes.items()} \
                if time.monotonic() > deadline else None
            if codes is not None:
                break
            last = {}
            for kme in kmes:
                kek = load_kek(tmp_path / "state" / kme / "kek.hex")
                with SqliteKeyStore(tmp_path / "state" / kme / "store.sqlite", kek,
                                    kme_id=kme) as store:
                    last[kme] = store.last_block_id(LINK)
            if set(last.values()) == {BLOCKS - 1}:
                codes = {kme: k.terminate() for kme, k in kmes.items()}
                break
            time.sleep(0.25)
        assert codes == {"kme-a": 0, "kme-b": 0}, [k.log.read_text() for k in kmes.values()]
    finally:
        for kme in kmes.values():
            if kme.process is not None and kme.process.poll() is None:
                kme.process.kill()
    ends = {}
    for kme in kmes:
        kek = load_kek(tmp_path / "state" / kme / "kek.hex")
        with SqliteKeyStore(tmp_path / "state" / kme / "store.sqlite", kek,
                            kme_id=kme) as store:
            assert store.last_block_id(LINK) == BLOCKS - 1
            assert store.count_keys("master") == 0  # nothing left pending
            ends[kme] = {d: store.pool_state(LINK, d).stream_end_offset for d in DIRECTIONS}
        result = verify_audit_log(tmp_path / "state" / kme / "audit.jsonl", kek)
        assert result.ok, result
    assert ends["kme-a"] == ends["kme-b"] == {d: BLOCKS * BLOCK_BYTES // 2 for d in DIRECTIONS}
