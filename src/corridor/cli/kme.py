"""``corridor kme serve``: one KME process of a real (split-site) deployment.

This module owns the ``kme`` command group. ``corridor kme serve --config FILE --kme ID``
runs one KME of a corridor file: its own store (SQLite file or PostgreSQL), its ETSI
GS QKD 014 API over mutual TLS on the host and port the file gives it, the KME-to-KME
route and HttpsPeerLinks to its peer KMEs, and its side of every link:

- ``source = "recorded"``: this KME reads only its own party's key file (``alice.bin`` at
  Alice's KME, ``bob.bin`` at Bob's) and ingests block after block, resuming after the
  last block its store holds;
- ``source = "simulated"`` with ``channel_listen``, ``channel_address`` and
  ``simulation_seed``: this process runs its own party (Alice at Alice's KME, Bob at
  Bob's) of the simulated link and the distillation, the two parties' classical channel
  over TCP (:class:`~corridor.kms.sources.party.SimulatedLinkPartySource`); both sides agree
  the next block ID at session start, so IDs continue across restarts.

A simulated link without those fields runs only in one process (``corridor up``); the
command says so at start and serves the keys already stored.

SIGTERM or SIGINT stops it cleanly: feed loop joined, server closed after in-flight
requests, store closed, audit log fsync'ed. A ``kill -9`` is survivable by design
(docs/kms-store.md, "Crash at any point"): on restart pending reservations are
discarded and the feed resumes after the last stored block.

``--worker NAME`` runs one of several workers of the same KME on one PostgreSQL store
behind one address (docs/ha.md): the port is bound with ``SO_REUSEPORT``, the worker
keeps its own audit chain (``audit-NAME.jsonl``), and it feeds a link only while it
holds that link's feeder lease (:mod:`corridor.kms.ha`); the others take over within
about a second when the holder dies.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from corridor.cli.common import console, err_console, handle_errors
from corridor.errors import ParameterError
from corridor.logs import configure_logging

kme_app = typer.Typer(help="Run a KME process (one site of a deployment).",
                      no_args_is_help=True)


@kme_app.command("serve")
def serve_command(
    config: Annotated[Path, typer.Option("--config", help="Corridor TOML file.")],
    kme: Annotated[str, typer.Option("--kme", help="Which KME of the file to run.")],
    workdir: Annotated[Path, typer.Option(
        "--workdir", help="State directory: <workdir>/<KME>/ holds store.sqlite, kek.hex "
        "and audit.jsonl unless the file says otherwise.")] = Path("."),
    pki_dir: Annotated[Path | None, typer.Option(
        "--pki", help="Directory of `corridor pki init` (default: the file's pki_dir, else "
        "<workdir>/pki).")] = None,
    log_json: Annotated[bool, typer.Option("--log-json/--log-text",
                                           help="Log format on stderr.")] = True,
    accept_broken_audit: Annotated[str | None, typer.Option(
        "--accept-broken-audit", metavar="REASON",
        help="Start although the audit chain does not verify (the reason is audited). "
        "Inspect it with `corridor audit verify` first.")] = None,
    worker: Annotated[str | None, typer.Option(
        "--worker", metavar="NAME",
        help="Run as worker NAME of this KME beside other workers on the same PostgreSQL "
        "store and port (docs/ha.md); default: the KME's only process.")] = None,
) -> None:
    """Serve one KME over mutual TLS and feed it from its side of each of its links."""
    # The KMS stack is imported when a KME runs, not by every `corridor` invocation.
    from corridor.kms.ha import FeederLeases, check_worker, require_shared_store
    from corridor.kms.node import (
        KmeNode,
        load_corridor,
        load_pki,
        monitor_for,
        own_link_feeder_factories,
    )
    from corridor.kms.sources.feeder import LinkFeeder
    from corridor.runtime import tune_gc_for_serving

    with handle_errors():
        configure_logging("warning", json=log_json)
        spec = load_corridor(config)
        site = spec.kme(kme)
        if site.port == 0 and site.url is None:
            raise ParameterError(f"kmes.{kme}.port", 0,
                                 "must be a fixed port for `corridor kme serve`: its peer KMEs "
                                 "and SAEs must know where to reach it")
        if worker is not None:
            check_worker(worker)
            require_shared_store(kme, site.store)
        pki = load_pki(pki_dir or spec.pki_dir or workdir / "pki")
        stop = threading.Event()

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT,
                                                                    signal.SIGTERM)}
        node = KmeNode(spec, kme, workdir.resolve(), pki,
                       accept_broken_audit=accept_broken_audit, worker=worker)
        feeders: list[LinkFeeder] = []
        leases: FeederLeases | None = None
        try:
            url = node.start()
            manager = node.manager
            assert manager is not None
            # This process's own monitor judges its side of each link: alarms live here,
            # and `corridor alarm clear` at this KME clears them here.
            monitor = monitor_for(spec, node.events)
            factories, skipped = own_link_feeder_factories(spec, kme, manager, node.events,
                                                           monitor)
            for link_id in skipped:
                err_console.print(
                    f"link {link_id}: a simulated link needs channel_listen, channel_address "
                    "and simulation_seed to be fed by one KME process per site "
                    "(docs/corridor-up.md); serving stored keys only",
                    highlight=False, soft_wrap=True)
            if worker is None:
                feeders = [build() for build in factories.values()]
                node.alarm_desk.attach(monitor, {f.link_id: f for f in feeders})
                for feeder in feeders:
                    feeder.start()
                feeding = f"feeding {len(feeders)} link(s)"
            else:
                # One writer per link end across workers: a feeder runs where its lease is.
                node.alarm_desk.attach(monitor, {})
                leases = FeederLeases(node.store_url, kme, worker, factories, node.events,
                                      on_change=lambda running: node.alarm_desk.attach(
                                          monitor, running))
                leases.start()
                feeding = (f"worker {worker}; feeding {len(leases.held)} of "
                           f"{len(factories)} link(s) (a link's feeder runs at the worker "
                           "holding its lease)")
            tune_gc_for_serving()
            console.print(f"KME {kme} ({site.site}) serving at {url}; "
                          f"{node.pending_discarded} pending reservations discarded at start; "
                          f"{feeding}", highlight=False, soft_wrap=True)
            console.file.flush()
            while not stop.is_set():
                stop.wait(1.0)
        finally:
            if leases is not None:
                leases.close()
            for feeder in feeders:
                feeder.stop()
            node.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        console.print(f"KME {kme} stopped cleanly", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``corridor kme`` to the main application."""
    app.add_typer(kme_app, name="kme")
