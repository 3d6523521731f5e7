"""Key delivery over ETSI GS QKD 014 with mutual TLS: requests/s, latency, keys/s.

Two KME processes on 127.0.0.1 (KeyManager, HttpsPeerLink between them, uvicorn over
mutual TLS), fed identical random blocks before they start serving; the load generator
is this process (SaeClient threads, keep-alive connections). Every enc_keys call is the
whole ETSI 014 path: the master KME reserves, announces to the slave KME over mutual
TLS, waits for its durable acceptance, then delivers.

Phases per store (SQLite and PostgreSQL at 127.0.0.1:5432, database ``test``):

- closed loop, 1 and 16 concurrent clients, one 256-bit key per request;
- batches: ``number=100`` keys per request, 1 and 4 clients (keys/s);
- open loop at a fixed arrival rate (default 500 requests/s), latency measured from each
  request's scheduled start (so queueing counts: no coordinated omission).

Then a decomposition that says where the time goes: the same KeyManager in-process with
a LocalPeerLink (store and agreement cost, no network), and an HTTPS round trip to an
application that does nothing (TLS + HTTP + framework floor).

    .venv/bin/python benchmarks/bench_kms_api.py [--stores sqlite postgres]
        [--seconds 4] [--rate 500] [--sqlite-synchronous FULL] [--workers 1]
        [--load-client sae|raw]

Load is bounded in count and time and goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corridor.kms.client import KmeResponseError, SaeClient
from corridor.kms.pki import PkiLayout, init_pki

KME_A, KME_B, LINK_ID = "kme-a", "kme-b", "link-ab"
SAES = {"sae-a": KME_A, "sae-b": KME_B}
BLOCK_BYTES = 1 << 20
POSTGRES_CONNINFO = "host=127.0.0.1 port=5432 dbname=test"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_store(store: str, kme_id: str, workdir: Path, kek: bytes, run_tag: str,
                synchronous: str) -> Any:
    if store == "sqlite":
        from corridor.kms.store_sqlite import SqliteKeyStore
        return SqliteKeyStore(workdir / f"{kme_id}-{run_tag}.sqlite", kek, kme_id=kme_id,
                              synchronous=synchronous)
    from corridor.kms.store_postgres import PostgresKeyStore
    return PostgresKeyStore(POSTGRES_CONNINFO, kek, kme_id=kme_id,
                            schema=f"bench_{run_tag}_{kme_id.replace('-', '_')}",
                            max_size=16)


def _build_manager(store: str, kme_id: str, workdir: Path, blocks_file: Path, run_tag: str,
                   synchronous: str, max_key_count: int, ingest: bool = True) -> Any:
    from corridor.kms.config import KmeConfig, SaeDirectory
    from corridor.kms.manager import KeyManager

    kek = (workdir / "kek").read_bytes()
    directory = SaeDirectory(SAES, {LINK_ID: (KME_A, KME_B)})
    config = KmeConfig(kme_id=kme_id, max_key_count=max_key_count, max_key_per_request=128)
    manager = KeyManager(config, directory,
                         _make_store(store, kme_id, workdir, kek, run_tag, synchronous))
    if ingest:
        data = blocks_file.read_bytes()
        for block_id, start in enumerate(range(0, len(data), BLOCK_BYTES), start=1):
            manager.ingest_block(LINK_ID, block_id, data[start:start + BLOCK_BYTES])
    return manager


def _kme_process(store: str, kme_id: str, workdir: str, ports: dict[str, int],
                 run_tag: str, synchronous: str, max_key_count: int, worker: int = 0,
                 workers: int = 1) -> None:
    """Child process: one KME (or one of ``workers`` API worker processes of a KME on a
    shared store, all on one port with SO_REUSEPORT), served until SIGTERM.
    Worker 0 feeds the store from the shared blocks file; the others wait for it."""
    from corridor.kms.api import HttpsPeerLink, create_app
    from corridor.kms.tls import serve

    root = Path(workdir)
    pki = root / "pki"
    peer = KME_B if kme_id == KME_A else KME_A
    fed = root / f"fed-{kme_id}-{run_tag}"
    if worker:
        while not fed.exists():
            time.sleep(0.1)
    manager = _build_manager(store, kme_id, root, root / "blocks.bin", run_tag, synchronous,
                             max_key_count, ingest=worker == 0)
    fed.touch()
    own = pki / "kme" / kme_id
    manager.set_peer(peer, HttpsPeerLink(f"https://127.0.0.1:{ports[peer]}",
                                         cert=own / "cert.pem", key=own / "key.pem",
                                         ca=pki / "ca.pem", peer_kme_id=peer))
    app = create_app(manager, peer_acceptor=manager.accept_reservations,
                     peer_sync=manager.accept_sync)
    if workers == 1:
        serve(app, "127.0.0.1", ports[kme_id], own / "cert.pem", own / "key.pem",
              pki / "ca.pem", log_level="warning")
        return
    import uvicorn

    from corridor.kms.tls import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", ports[kme_id]))
    config = uvicorn_config(app, cert=own / "cert.pem", key=own / "key.pem",
                            ca=pki / "ca.pem", port=ports[kme_id])
    uvicorn.Server(config).run(sockets=[sock])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Phase:
    """One measured phase."""

    name: str
    requests: int
    keys: int
    errors: int
    seconds: float
    latencies_s: list[float]
    cpu_ms_per_request: tuple[float, float, float] = (float("nan"),) * 3

    def row(self) -> str:
        lat = sorted(self.latencies_s)
        p50 = lat[len(lat) // 2] * 1e3 if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3 if lat else float("nan")
        cpu = " / ".join(f"{v:.1f}" for v in self.cpu_ms_per_request)
        return (f"| {self.name} | {self.requests:,} | {self.requests / self.seconds:,.0f} | "
                f"{self.keys / self.seconds:,.0f} | {p50:.1f} | {p99:.1f} | {self.errors} | "
                f"{cpu} |")


def _measured(phase_fn: Callable[[], Phase], pids: tuple[list[int], list[int]]) -> Phase:
    """Run a phase and attribute CPU time per request to client, master and slave KME
    (``pids``: the master KME's processes, the slave KME's)."""
    def sample() -> list[float]:
        return [_own_cpu_s(), *(sum(_cpu_s(pid) for pid in group) for group in pids)]

    before = sample()
    phase = phase_fn()
    after = sample()
    per_request = [(b - a) * 1e3 / max(phase.requests, 1) for a, b in zip(before, after,
                                                                        strict=True)]
    phase.cpu_ms_per_request = (per_request[0], per_request[1], per_request[2])
    return phase


def _client(pki: PkiLayout, urls: dict[str, str]) -> SaeClient:
    paths = pki.saes["sae-a"]
    return SaeClient(urls[KME_A], paths.cert, paths.key, pki.ca_cert, expected_kme_id=KME_A)


class RawSae:
    """A lighter load generator than :class:`SaeClient` (``--load-client raw``): one
    keep-alive ``http.client`` connection with the SAE's certificate, the KME identity
    checked in the handshake, the keys decoded from base64. It measures the KMEs with
    less of the shared CPU spent in the load generator."""

    def __init__(self, pki: PkiLayout, urls: dict[str, str]) -> None:
        import http.client
        import urllib.parse

        from corridor.kms.pki import Identity
        from corridor.kms.tls import client_ssl_context

        paths = pki.saes["sae-a"]
        context = client_ssl_context(paths.cert, paths.key, pki.ca_cert,
                                     Identity("kme", KME_A))
        parts = urllib.parse.urlsplit(urls[KME_A])
        self._conn = http.client.HTTPSConnection(parts.hostname or "", parts.port,
                                                 context=context, timeout=30)
        self._conn.connect()
        self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_key(self, slave: str, number: int = 1) -> list[bytes]:
        import base64
        import json

        self._conn.request("POST", f"/api/v1/keys/{slave}/enc_keys",
                           body=json.dumps({"number": number}).encode(),
                           headers={"Content-Type": "application/json"})
        response = self._conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise KmeResponseError(response.status, body.decode(errors="replace"), [])
        return [base64.b64decode(k["key"]) for k in json.loads(body)["keys"]]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RawSae:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


LOAD_CLIENT = "sae"


def _load_client(pki: PkiLayout, urls: dict[str, str]) -> Any:
    return RawSae(pki, urls) if LOAD_CLIENT == "raw" else _client(pki, urls)


def closed_loop(name: str, pki: PkiLayout, urls: dict[str, str], clients: int, number: int,
                seconds: float) -> Phase:
    """``clients`` threads, each with its own keep-alive connection, back to back."""
    stop_at = time.perf_counter() + seconds
    latencies: list[float] = []
    counts = {"requests": 0, "keys": 0, "errors": 0}
    lock = threading.Lock()

    def worker() -> None:
        mine: list[float] = []
        requests = keys = errors = 0
        with _load_client(pki, urls) as client:
            client.get_key("sae-b", number=1)  # handshake outside the measurement
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    keys += len(client.get_key("sae-b", number=number))
                except KmeResponseError:
                    errors += 1
                mine.append(time.perf_counter() - started)
                requests += 1
        with lock:
            latencies.extend(mine)
            counts["requests"] += requests
            counts["keys"] += keys
            counts["errors"] += errors

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    return Phase(name, counts["requests"], counts["keys"], counts["errors"],
                 time.perf_counter() - started, latencies)


def open_loop(name: str, pki: PkiLayout, urls: dict[str, str], rate_per_s: float,
              seconds: float, workers: int = 48) -> Phase:
    """Requests scheduled at a fixed rate; latency from the scheduled start."""
    total = int(rate_per_s * seconds)
    clients = [_load_client(pki, urls) for _ in range(workers)]
    for client in clients:
        client.get_key("sae-b")
    latencies: list[float] = [0.0] * total
    errors = [0]
    next_index = [0]
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.2

    def worker(client: Any) -> None:
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= total:
                return
            scheduled = t0 + index / rate_per_s
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                client.get_key("sae-b")
            except KmeResponseError:
                with lock:
                    errors[0] += 1
            latencies[index] = time.perf_counter() - scheduled

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(worker, c) for c in clients]:
            future.result()
    elapsed = time.perf_counter() - t0
    for client in clients:
        client.close()
    return Phase(name, total, total - errors[0], errors[0], elapsed, latencies)


def in_process_floor(store: str, workdir: Path, run_tag: str, synchronous: str,
                     seconds: float) -> tuple[float, float]:
    """KeyManager pair in this process with LocalPeerLink: enc_keys/s for 1 and 100 keys."""
    from corridor.kms.manager import connect_local

    managers = [_build_manager(store, kme, workdir, workdir / "blocks.bin", run_tag + "x",
                               synchronous, 10_000_000) for kme in (KME_A, KME_B)]
    connect_local(*managers)
    rates = []
    for number in (1, 100):
        stop_at = time.perf_counter() + seconds
        count = 0
        started = time.perf_counter()
        while time.perf_counter() < stop_at:
            managers[0].enc_keys("sae-a", "sae-b", number=number)
            count += 1
        rates.append(count / (time.perf_counter() - started))
    for manager in managers:
        manager.close()
    return rates[0], rates[1]


def https_floor(pki: PkiLayout, seconds: float) -> float:
    """Round trips/s of one keep-alive mTLS client to an ASGI app that does nothing."""
    import httpx

    from corridor.kms.tls import CLIENT_SOCKET_OPTIONS, client_ssl_context, running_server

    async def app(scope: dict[str, Any], receive: Callable[..., Any],
                  send: Callable[..., Any]) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    kme, sae = pki.kmes[KME_A], pki.saes["sae-a"]
    with running_server(app, kme.cert, kme.key, pki.ca_cert) as server:
        context = client_ssl_context(sae.cert, sae.key, pki.ca_cert)
        transport = httpx.HTTPTransport(verify=context, socket_options=CLIENT_SOCKET_OPTIONS)
        with httpx.Client(transport=transport) as client:
            client.post(server.url + "/", json={})
            count, stop_at, started = 0, time.perf_counter() + seconds, time.perf_counter()
            while time.perf_counter() < stop_at:
                client.post(server.url + "/", json={})
                count += 1
            return count / (time.perf_counter() - started)


def _drop_postgres_schemas(run_tag: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                            (f"bench_{run_tag}%",)).fetchall()
        for (name,) in rows:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def run_store(store: str, args: argparse.Namespace, pki: PkiLayout, workdir: Path) -> list[str]:
    run_tag = uuid.uuid4().hex[:8]
    ports = {KME_A: _free_port(), KME_B: _free_port()}
    urls = {kme: f"https://127.0.0.1:{port}" for kme, port in ports.items()}
    ctx = mp.get_context("spawn")
    workers = args.workers
    children = [ctx.Process(target=_kme_process, args=(
        store, kme, str(workdir), ports, run_tag, args.sqlite_synchronous, 10_000_000,
        worker, workers), daemon=True)
        for worker in range(workers) for kme in (KME_A, KME_B)]
    rows = []
    try:
        for child in children:
            child.start()
        deadline = time.monotonic() + 300
        while True:
            try:
                with _client(pki, urls) as probe:
                    probe.status("sae-b")
                with SaeClient(urls[KME_B], pki.saes["sae-b"].cert, pki.saes["sae-b"].key,
                               pki.ca_cert) as probe_b:
                    probe_b.status("sae-a")
                break
            except Exception:
                if time.monotonic() > deadline or not all(c.is_alive() for c in children):
                    raise RuntimeError(f"{store} KMEs did not start") from None
                time.sleep(0.5)
        label = store if store == "postgres" else f"sqlite ({args.sqlite_synchronous})"
        if workers > 1:
            label += f", {workers} workers per KME"
        pids = ([c.pid or 0 for i, c in enumerate(children) if i % 2 == 0],
                [c.pid or 0 for i, c in enumerate(children) if i % 2 == 1])
        phases = []
        for clients, number in ((1, 1), (16, 1), (1, 100), (4, 100)):
            name = (f"{label}: {clients} client{'s' if clients > 1 else ''}, "
                    + ("1 key/request" if number == 1 else f"number={number}"))
            phase = _measured(lambda c=clients, n=number, t=name: closed_loop(
                t, pki, urls, c, n, args.seconds), pids)
            print(phase.row(), flush=True)
            rows.append(phase.row())
            phases.append(phase)
        # The target rate, and half the measured 16-client capacity (latency when the
        # KME is not saturated: above capacity the open loop only measures the queue).
        capacity = phases[1].requests / phases[1].seconds
        for rate in (args.rate, max(1.0, capacity / 2)):
            phase = _measured(lambda r=rate: open_loop(
                f"{label}: open loop {r:.0f} req/s", pki, urls, r, args.seconds), pids)
            print(phase.row(), flush=True)
            rows.append(phase.row())
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(20)
        if store == "postgres":
            _drop_postgres_schemas(run_tag)
    single, batch = in_process_floor(store, workdir, run_tag, args.sqlite_synchronous,
                                     min(args.seconds, 3.0))
    line = (f"| {store}: in-process KeyManager pair (LocalPeerLink), no HTTP | - | "
            f"{single:,.0f} (1 key) / {batch:,.0f} (number=100) | {batch * 100:,.0f} | - | - "
            f"| - | - |")
    print(line, flush=True)
    rows.append(line)
    if store == "postgres":
        _drop_postgres_schemas(run_tag + "x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgres"],
                        choices=["sqlite", "postgres"])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop requests/s")
    parser.add_argument("--sqlite-synchronous", default="FULL",
                        choices=["FULL", "EXTRA", "NORMAL"])
    parser.add_argument("--workers", type=int, default=1, choices=[1, 2, 3, 4],
                        help="API worker processes per KME (one port, SO_REUSEPORT), sharing "
                             "the KME's PostgreSQL schema or SQLite file")
    parser.add_argument("--load-client", choices=["sae", "raw"], default="sae",
                        help="load generator: SaeClient (httpx) or a bare http.client SAE")
    parser.add_argument("--pool-mib", type=int, default=16,
                        help="random key material ingested before the run (MiB)")
    args = parser.parse_args()
    if not 0 < args.seconds <= 30 or not 0 < args.rate <= 5000 or not 1 <= args.pool_mib <= 256:
        parser.error("bounded load only: --seconds in (0, 30], --rate in (0, 5000], "
                     "--pool-mib in [1, 256]")
    global LOAD_CLIENT
    LOAD_CLIENT = args.load_client
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# {datetime.date.today().isoformat()} {platform.processor() or platform.machine()} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} python={platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pki = init_pki(workdir / "pki", [KME_A, KME_B], list(SAES.items()))
        from corridor.kms.crypto import generate_kek
        (workdir / "kek").write_bytes(generate_kek())
        (workdir / "blocks.bin").write_bytes(os.urandom(args.pool_mib << 20))
        print("| phase | requests | requests/s | keys/s | p50 ms | p99 ms | errors "
              "| CPU ms/request: client / master KME / slave KME |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for store in args.stores:
            run_store(store, args, pki, workdir)
        floor = https_floor(pki, min(args.seconds, 3.0))
        print(f"| mTLS round trip to an empty ASGI app (floor), 1 client | - | {floor:,.0f} "
              f"| - | {1e3 / floor:.1f} (mean) | - | - | - |")
        print(f"# load average after the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
