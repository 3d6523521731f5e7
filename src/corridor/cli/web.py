"""``corridor web``: the operator's live dashboard for KMEs running elsewhere.

``corridor up`` serves its own dashboard. This command serves the same pages for a
deployment whose KMEs run as ``corridor kme serve`` processes (``--config FILE``: the
corridor file they run, and its PKI), or for a ``corridor up`` run from its
``corridor-up.json`` (``--from-up FILE``). It watches every KME over its operator
endpoints (:class:`corridor.web.remote.RemoteCorridor`) with an operator certificate
of the PKI, and serves HTTPS with the PKI's dashboard certificate (``corridor pki init
--dashboard NAME``; ``corridor up`` issues one), to browsers that present an operator
certificate of the same CA. It runs until Ctrl-C or SIGTERM (or ``--duration-s``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from corridor.cli.common import (
    OutputFormat,
    as_option,
    console,
    emit_json,
    handle_errors,
    read_up_file,
)
from corridor.errors import CorridorError, ParameterError


def _pick(entries: dict[str, Any], wanted: str | None, option: str, what: str) -> Any:
    if not entries:
        raise ParameterError(option, wanted, f"a PKI with {what}",
                             f"issue one with `corridor pki init --{what.split()[0]} NAME`")
    if wanted is None:
        return next(iter(entries.values()))
    if wanted not in entries:
        raise ParameterError(option, wanted, f"one of {sorted(entries)}")
    return entries[wanted]


def source_from_config(config: Path, pki_dir: Path | None, operator: str | None) -> Any:
    """A RemoteCorridor for the KMEs of a corridor file, and the dashboard certificate."""
    from corridor.kms.node import load_corridor, load_pki
    from corridor.web.remote import RemoteCorridor, RemoteKme, RemoteLink
    from corridor.web.snapshot import qber_alarm_of

    spec = load_corridor(config)
    layout = load_pki(pki_dir or spec.pki_dir or Path("pki"))
    paths = _pick(layout.operators, operator, "--operator", "operator certificate")
    for kme_id, site in spec.kmes.items():
        if site.port == 0 and site.url is None:
            raise ParameterError(f"kmes.{kme_id}.port", 0,
                                 "a fixed port (or url): the dashboard must know where the "
                                 "KME listens; for `corridor up` use --from-up")
    kmes = [RemoteKme(kme_id, site.site, site.base_url(), paths.cert, paths.key,
                      layout.ca_cert) for kme_id, site in spec.kmes.items()]
    links = [RemoteLink(link.link_id, link.alice_kme, link.bob_kme)
             for link in spec.links.values()]
    source = RemoteCorridor(spec.name, kmes, links, source_path=Path(str(spec.source_path)),
                            certificates=layout.certificates(), qber_alarm=qber_alarm_of(spec))
    return source, layout


def source_from_up(up_file: Path, operator: str | None) -> Any:
    """A RemoteCorridor for the KMEs of a ``corridor-up.json``, and its PKI when found."""
    from corridor.kms.node import load_corridor, load_pki
    from corridor.kms.pki import MANIFEST_NAME
    from corridor.web.remote import RemoteCorridor, RemoteKme, RemoteLink
    from corridor.web.snapshot import DEFAULT_QBER_ALARM, qber_alarm_of

    data = read_up_file(up_file, need_kmes=True)
    base = up_file.parent
    operators = {str(o.get("name")): o for o in data.get("operators") or []
                 if isinstance(o, dict)}
    entry = _pick(operators, operator, "--operator", "operator certificate")
    try:
        cert, key = base / entry["cert"], base / entry["key"]
        ca = base / entry.get("ca_cert", data["ca_cert"])
    except (KeyError, TypeError):
        raise ParameterError(f"{up_file}:operators", entry,
                             "an operator entry with cert, key and ca_cert") from None
    kmes = []
    for kme in data["kmes"]:
        if not isinstance(kme, dict) or not isinstance(kme.get("base_url"), str):
            raise ParameterError(f"{up_file}:kmes", kme, "an object with kme_id and base_url")
        kmes.append(RemoteKme(str(kme.get("kme_id")), str(kme.get("site")), kme["base_url"],
                              cert, key, ca))
    links = [RemoteLink(str(lk.get("link_id")), str(lk.get("alice_kme")),
                        str(lk.get("bob_kme")))
             for lk in data.get("links") or [] if isinstance(lk, dict)]
    layout = load_pki(ca.parent) if (ca.parent / MANIFEST_NAME).is_file() else None
    config = data.get("config")
    config_path = Path(config) if isinstance(config, str) else None
    # The corridor file, when it is still there, gives the map and the alarm level.
    alarm = DEFAULT_QBER_ALARM
    if config_path is not None and config_path.is_file():
        with contextlib.suppress(CorridorError):
            alarm = qber_alarm_of(load_corridor(config_path))
    source = RemoteCorridor(str(data.get("name", "corridor")), kmes, links,
                            source_path=config_path, qber_alarm=alarm,
                            certificates=layout.certificates() if layout else
                            [("ca", "ca", ca)])
    return source, layout


def web_command(
    from_up: Annotated[Path | None, typer.Option(
        "--from-up", help="corridor-up.json of a running `corridor up`.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="The corridor file the `corridor kme serve` processes run.")] = None,
    pki_dir: Annotated[Path | None, typer.Option(
        "--pki", help="With --config: the directory of `corridor pki init` (default: the "
        "file's pki_dir, else ./pki).")] = None,
    operator: Annotated[str | None, typer.Option(
        "--operator", help="Which operator certificate calls the KMEs (default: the "
        "first).")] = None,
    cert: Annotated[Path | None, typer.Option(
        "--cert", help="Server certificate of the dashboard (default: the PKI's dashboard "
        "certificate).")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Its private key.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free one).")] = 0,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", help="An inventory JSON (corridor inventory scan --format json) "
        "whose risk summary the dashboard shows.")] = None,
    interval_s: Annotated[float, typer.Option(
        "--interval-s", help="Seconds between two samples of the KMEs.")] = 1.0,
    duration_s: Annotated[float | None, typer.Option(
        "--duration-s", help="Stop after this many seconds (default: until Ctrl-C).")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")
                      ] = OutputFormat.table,
) -> None:
    """Serve the live dashboard of KMEs that run elsewhere (operator certificates only)."""
    from corridor.web.dashboard import Dashboard

    with handle_errors():
        if (from_up is None) == (config is None):
            raise ParameterError("--from-up", str(from_up) if from_up else None,
                                 "exactly one of --from-up FILE or --config FILE")
        if (cert is None) != (key is None):
            raise ParameterError("--cert" if cert is None else "--key", None,
                                 "--cert and --key together")
        if not 0 <= port <= 65535:
            raise ParameterError("--port", port, "an integer in [0, 65535]")
        if not 0.1 <= interval_s <= 3600:
            raise ParameterError("--interval-s", interval_s, "a number in [0.1, 3600]")
        if duration_s is not None and duration_s <= 0:
            raise ParameterError("--duration-s", duration_s, "a positive number of seconds")
        if pki_dir is not None and config is None:
            raise ParameterError("--pki", str(pki_dir), "only with --config",
                                 "--from-up names its PKI itself")
        if config is not None:
            with as_option("pki_dir", "--pki"):
                source, layout = source_from_config(config, pki_dir, operator)
        else:
            assert from_up is not None
            source, layout = source_from_up(from_up, operator)
        if inventory is not None:
            from corridor.web.kpis import read_inventory_summary

            source.inventory = read_inventory_summary(inventory, "--inventory")
        if cert is None or key is None:
            if layout is None:
                raise ParameterError("--cert", None, "a dashboard server certificate "
                                     "(no pki.json beside the CA certificate)")
            paths = _pick(layout.dashboards, None, "--cert", "dashboard certificate")
            cert, key = paths.cert, paths.key
        ca = source.kmes[0].ca
        dashboard = Dashboard(source, interval_s=interval_s)
        stop = threading.Event()

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT,
                                                                    signal.SIGTERM)}
        try:
            url = dashboard.start(cert, key, ca, host=host, port=port)
            if output == OutputFormat.json:
                emit_json({"dashboard_url": url, "name": source.name,
                           "kmes": [k.kme_id for k in source.kmes]})
            else:
                console.print(f"dashboard of {source.name} ({len(source.kmes)} KMEs; open it "
                              f"with an operator certificate; the browser must trust {ca}): "
                              f"{url}", highlight=False, soft_wrap=True)
                console.print("stop with Ctrl-C (or SIGTERM)", highlight=False)
            console.file.flush()
            deadline = None if duration_s is None else time.monotonic() + duration_s
            while not stop.is_set():
                left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if left <= 0:
                    break
                stop.wait(left)
        finally:
            dashboard.close()
            source.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def register(app: typer.Typer) -> None:
    """Add ``corridor web`` to the main application."""
    app.command("web")(web_command)
