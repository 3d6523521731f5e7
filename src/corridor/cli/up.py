"""``corridor up``: a whole corridor on this machine with one command.

This module owns the ``up`` command: it starts the KMEs of a corridor file (by default
the embedded city corridor, eight KMEs on 127.0.0.1 and ten simulated links;
``--embedded two-site`` two KMEs, one link, two SAEs) with
:class:`corridor.kms.node.Corridor`, writes ``corridor-up.json`` into the working
directory, prints the commands that fetch a key from one KME and the same key by ID
from the other (``corridor sae`` and curl), shows a live status until Ctrl-C, SIGTERM or
``--duration-s``, and stops cleanly (feeders joined, servers closed, stores closed,
audit logs fsync'ed with their chains intact). Exit code 0 on a clean stop. It also runs
the corridor file's hybrid sessions between its SAEs
(:mod:`corridor.hybrid.corridor_sessions`), shown in the live status.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from corridor.cli.common import console, err_console, handle_errors
from corridor.errors import ParameterError
from corridor.logs import configure_logging
from corridor.runtime import tune_gc_for_serving

if TYPE_CHECKING:  # the KMS stack is imported when `up` runs, not by every `corridor` call
    from corridor.cli.up_mobility import UpMobility
    from corridor.hybrid.corridor_sessions import CorridorSessions
    from corridor.kms.node import Corridor, CorridorSpec


def default_workdir(now: dt.datetime | None = None) -> Path:
    """A fresh ``./corridor-run-YYYYmmdd-HHMMSS`` (with a suffix if that exists)."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = Path(f"corridor-run-{stamp}")
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = Path(f"corridor-run-{stamp}-{suffix}")
    return candidate


def _shown(path: Path) -> str:
    """A path as the user should type it: relative to the current directory when inside."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(absolute)


def key_commands(corridor: Corridor) -> list[str]:
    """The commands that fetch one key at a master SAE's KME and the same key by ID at
    the slave SAE's KME: ``corridor sae`` and curl (placeholders in capitals)."""
    spec, pki = corridor.spec, corridor.pki
    assert pki is not None
    # The first link with an SAE at each end (a trusted node, such as the city's
    # exchange, has none).
    first_sae: dict[str, str] = {}
    for sae_id, kme_id in spec.saes.items():
        first_sae.setdefault(kme_id, sae_id)
    ends = next(((link.alice_kme, link.bob_kme) for link in spec.links.values()
                 if link.alice_kme in first_sae and link.bob_kme in first_sae), None)
    if ends is None:
        return []
    master_kme, slave_kme = ends
    master, slave = first_sae[master_kme], first_sae[slave_kme]
    up = shlex.quote(_shown(corridor.up_file))

    def curl(sae: str, url: str) -> str:
        paths = pki.saes[sae]
        return (f"curl --cert {shlex.quote(_shown(paths.cert))} "
                f"--key {shlex.quote(_shown(paths.key))} "
                f"--cacert {shlex.quote(_shown(pki.ca_cert))} {shlex.quote(url)}")

    master_url = corridor.nodes[master_kme].url
    slave_url = corridor.nodes[slave_kme].url
    return [
        f"corridor sae get-key {shlex.quote(slave)} --from-up {up} --sae {shlex.quote(master)}",
        f"corridor sae get-key-with-id {shlex.quote(master)} KEY_ID --from-up {up} "
        f"--sae {shlex.quote(slave)}",
        curl(master, f"{master_url}/api/v1/keys/{slave}/enc_keys"),
        curl(slave, f"{slave_url}/api/v1/keys/{master}/dec_keys?key_ID=KEY_ID"),
    ]


def operator_commands(corridor: Corridor) -> list[str]:
    """The operator's commands: link states and alarms, and the metrics of the first KME
    with the operator certificate of ``corridor-up.json``."""
    pki = corridor.pki
    assert pki is not None
    up = shlex.quote(_shown(corridor.up_file))
    commands = [f"corridor alarm list --from-up {up}"]
    if pki.operators and corridor.nodes:
        paths = next(iter(pki.operators.values()))
        url = next(iter(corridor.nodes.values())).url
        commands.append(f"curl --cert {shlex.quote(_shown(paths.cert))} "
                        f"--key {shlex.quote(_shown(paths.key))} "
                        f"--cacert {shlex.quote(_shown(pki.ca_cert))} "
                        f"{shlex.quote(f'{url}/metrics')}")
    return commands


#: How each link state reads in the live status (corridor.kms.operator).
STATE_TEXT = {"ok": ("ok", ""), "starting": ("starting", "yellow"),
              "pool_full": ("pool full (SAEs not fetching)", "yellow"),
              "quarantined": ("quarantined", "bold red"), "dead": ("LINK DEAD", "bold red")}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def hybrid_table(hybrid: CorridorSessions) -> Table:
    """Each hybrid session: inputs used, policy decisions so far, rotations."""
    table = Table(title="hybrid sessions (QKD + X-Wing, CatKDF)", title_justify="left")
    for column in ("SAEs", "policy", "state", "inputs", "missing", "generation",
                   "rotations", "key_ID", "decisions", "last error"):
        table.add_column(column)
    for s in hybrid.status():
        style = {"established": "", "degraded": "yellow", "starting": "yellow"}.get(
            s["state"], "bold red")
        decisions = ", ".join(f"{k} {v}" for k, v in sorted(s["decisions"].items())) or "-"
        table.add_row(f"{s['initiator_sae_id']} -> {s['responder_sae_id']}", s["policy"],
                      Text(s["state"], style=style), "+".join(s["inputs"]) or "-",
                      ", ".join(s["missing"]) or "-", _fmt(s["generation"], "d"),
                      str(s["rotations"]), s["key_id"] or "-", decisions,
                      Text(s["last_error"] or "-", style="bold red" if s["last_error"] else ""))
    return table


def hybrid_line(hybrid: CorridorSessions) -> str:
    """The hybrid sessions in one plain segment of the status line."""
    return " ".join(
        f"{s['initiator_sae_id']}->{s['responder_sae_id']}: policy={s['policy']} "
        f"state={s['state']} inputs={'+'.join(s['inputs']) or '-'} "
        f"gen={_fmt(s['generation'], 'd')} rotations={s['rotations']} "
        f"decisions={','.join(f'{k}:{v}' for k, v in sorted(s['decisions'].items())) or '-'}"
        + (f" missing={','.join(s['missing'])}" if s["missing"] else "")
        + (f" error={s['last_error'].split(':')[0]}" if s["last_error"] else "")
        for s in hybrid.status())


def status_table(corridor: Corridor, hybrid: CorridorSessions | None = None,
                 mobility: UpMobility | None = None) -> Group:
    """The live status: key pools, then each link's QBER, key rate, blocks and alarms,
    then the hybrid sessions."""
    status = corridor.status()
    pools = Table(title=f"corridor {corridor.spec.name}: key pools", title_justify="left")
    for column in ("KME", "URL", "link", "direction", "role", "stored keys", "capacity"):
        pools.add_column(column, justify="right" if column in ("stored keys", "capacity")
                         else "left")
    for pool in status["pools"]:
        pools.add_row(pool["kme_id"], corridor.nodes[pool["kme_id"]].url or "-",
                      pool["link_id"], pool["direction"], pool["role"],
                      f"{pool['stored_keys']:,}", f"{pool['max_keys']:,}")
    links = Table(title="links", title_justify="left")
    for column in ("link", "state", "QBER", "key rate (model)", "stored (wall)",
                   "blocks stored", "aborted", "last block", "alarms"):
        links.add_column(column)
    for link in status["links"]:
        alarms = ", ".join(f"{a['kind']}:{a['reason']}" for a in link["alarms"]) or "none"
        if link["stopped_reason"]:
            alarms += f" (feed stopped: {link['stopped_reason']})"
        rate = link["last_key_rate_bits_per_second"]
        state, style = STATE_TEXT.get(link["state"], (link["state"], ""))
        age = link["last_block_age_s"]
        links.add_row(link["link_id"], Text(state, style=style), _fmt(link["last_qber"], ".4f"),
                      "-" if rate is None else f"{rate / 1e3:,.1f} kbit/s",
                      f"{link['stored_bits_per_second_wall'] / 1e3:,.1f} kbit/s",
                      str(link["blocks_stored"]),
                      f"{link['blocks_aborted']}" + (f" (last: {link['last_abort_reason']})"
                                                     if link["last_abort_reason"] else ""),
                      "-" if age is None else f"{age:,.0f} s ago",
                      Text(alarms, style="bold red" if link["alarms"] else ""))
    parts: list[Any] = [pools, links]
    if status["relays"]:
        parts.append(relay_table(status["relays"]))
    if hybrid is not None and hybrid.sessions:
        parts.append(hybrid_table(hybrid))
    if mobility is not None:
        from corridor.cli.up_mobility import mobility_table

        parts.append(mobility_table(mobility))
    return Group(*parts)


def relay_table(relays: list[dict[str, Any]]) -> Table:
    """Trusted-node relays in flight and the last ones that ended, per KME."""
    table = Table(title="key relays (trusted nodes)", title_justify="left")
    for column in ("KME", "role", "relay", "SAEs", "path(s)", "keys", "state", "age"):
        table.add_column(column)
    for relay in relays:
        state = relay["state"] + (f" ({relay['reason']})" if relay["reason"] else "")
        table.add_row(relay["kme_id"], relay["role"], relay["relay_id"][:8],
                      f"{relay['master_SAE_ID']} -> {', '.join(relay['slave_SAE_IDs'])}",
                      " | ".join(" > ".join(path) for path in relay["paths"]),
                      str(relay["count"]),
                      Text(state, style="bold red" if relay["state"] == "failed" else ""),
                      f"{relay['age_s']:.2f} s")
    return table


def relay_line(relays: list[dict[str, Any]]) -> str:
    """The relays of the status in one line (the masters' view)."""
    return " ".join(f"{r['relay_id'][:8]}:{'|'.join('>'.join(p) for p in r['paths'])}"
                    f"={r['state']}" for r in relays if r["role"] == "master")


def status_line(corridor: Corridor, hybrid: CorridorSessions | None = None,
                mobility: UpMobility | None = None) -> str:
    """One plain line of status (for logs and non-terminal output)."""
    status = corridor.status()
    pools = " ".join(f"{p['kme_id']}/{p['link_id']}/{p['direction']}={p['stored_keys']}"
                     for p in status["pools"])
    links = " ".join(
        f"{link['link_id']}: state={link['state']} qber={_fmt(link['last_qber'], '.4f')} "
        f"blocks_stored={link['blocks_stored']} aborted={link['blocks_aborted']} "
        f"quarantined={'yes' if link['quarantined'] else 'no'} "
        f"alarms={len(link['alarms'])}"
        for link in status["links"])
    stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%SZ")
    line = f"[{stamp}] pools(keys): {pools} | {links}"
    if status["relays"]:
        line += f" | relays: {relay_line(status['relays'])}"
    if hybrid is not None and hybrid.sessions:
        line += f" | hybrid: {hybrid_line(hybrid)}"
    if mobility is not None:
        from corridor.cli.up_mobility import mobility_line

        line += f" | {mobility_line(mobility)}"
    return line


def _describe_start(corridor: Corridor, spec: CorridorSpec,
                    hybrid: CorridorSessions | None = None) -> None:
    console.print(f"corridor up: {spec.name} ({spec.source_path})", highlight=False,
                  soft_wrap=True)
    console.print(f"working directory: {_shown(corridor.workdir)}", highlight=False)
    for kme_id, node in corridor.nodes.items():
        console.print(f"  KME {kme_id} ({node.site.site}): {node.url}", highlight=False)
    for link in spec.links.values():
        console.print(f"  link {link.link_id}: {link.alice_kme} (Alice) - {link.bob_kme} (Bob), "
                      f"{link.source}, {link.params.name} at {link.params.fibre.length_km:g} km",
                      highlight=False)
    console.print(f"wrote {_shown(corridor.up_file)}", highlight=False, soft_wrap=True)
    commands = key_commands(corridor)
    if commands:
        console.print("fetch a key at one KME and the same key by ID at the other "
                      "(replace KEY_ID with the key_ID the first command prints):",
                      highlight=False, soft_wrap=True)
        for command in commands:
            console.print(f"  {command}", highlight=False, markup=False, soft_wrap=True)
    console.print("operator (link states, alarms, metrics; operator certificate in "
                  f"{_shown(corridor.up_file)}):", highlight=False, soft_wrap=True)
    for command in operator_commands(corridor):
        console.print(f"  {command}", highlight=False, markup=False, soft_wrap=True)
    for session in hybrid.describe() if hybrid is not None else []:
        console.print(f"hybrid session {session['initiator_sae_id']} -> "
                      f"{session['responder_sae_id']} (policy {session['policy']}, re-key "
                      f"after {session['rekey_after_bytes'] or 'unlimited'} bytes or "
                      f"{session['rekey_after_s'] or 'unlimited'} s); decisions audited in:",
                      highlight=False, soft_wrap=True)
        for side in session["sides"]:
            kek = f" --kek-file {shlex.quote(side['kek_file'])}" if side["kek_file"] else ""
            path = shlex.quote(_shown(corridor.workdir / side["audit_log"]))
            if kek:
                kek = f" --kek-file {shlex.quote(_shown(corridor.workdir / side['kek_file']))}"
            console.print(f"  corridor audit verify {path}{kek}", highlight=False,
                          markup=False, soft_wrap=True)
    url = corridor.up_extra.get("dashboard_url")
    if url:
        console.print(f"dashboard (open with the operator certificate of "
                      f"{_shown(corridor.up_file)}; the browser must trust "
                      f"{_shown(corridor.pki.ca_cert) if corridor.pki else 'the CA'}): {url}",
                      highlight=False, soft_wrap=True)
    console.print("stop with Ctrl-C (or SIGTERM)", highlight=False)


def up_command(
    workdir: Annotated[Path | None, typer.Option(
        "--workdir", help="Working directory (default: a fresh corridor-run-DATE-TIME here); "
        "an existing one is restarted with its stores, keys and PKI.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Corridor TOML file (default: the embedded city corridor).")
    ] = None,
    embedded: Annotated[str | None, typer.Option(
        "--embedded", metavar="NAME", help="An embedded corridor instead of a file: city "
        "(the default: eight sites, ten links) or two-site (two KMEs, one link).")] = None,
    duration_s: Annotated[float | None, typer.Option(
        "--duration-s", help="Stop cleanly after this many seconds (default: run until "
        "Ctrl-C or SIGTERM).")] = None,
    status_interval_s: Annotated[float, typer.Option(
        "--status-interval-s", help="Seconds between status lines when stdout is not a "
        "terminal.")] = 10.0,
    with_dashboard: Annotated[bool, typer.Option(
        "--dashboard/--no-dashboard", help="Serve the operator's live dashboard over "
        "HTTPS (operator certificate of corridor-up.json; docs/dashboard.md).")] = True,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", help="An inventory JSON (corridor inventory scan --format json) "
        "whose risk summary the dashboard shows.")] = None,
    with_mobility: Annotated[bool, typer.Option(
        "--mobility/--no-mobility", help="Also run a QKD-keyed V2X stream to an RSU, a "
        "small fleet on the MQTT broker at 127.0.0.1:1883 and an OTA campaign to three "
        "vehicles (docs/v2x.md, docs/fleet.md, docs/ota.md).")
    ] = True,
    accept_broken_audit: Annotated[str | None, typer.Option(
        "--accept-broken-audit", metavar="REASON",
        help="Start although a KME's audit chain does not verify (the reason is audited "
        "at each such KME). Inspect it with `corridor audit verify` first.")] = None,
) -> None:
    """Start a corridor on this machine (by default the embedded city corridor) and show
    its status until stopped.

    KMEs on 127.0.0.1 (ETSI GS QKD 014 over mutual TLS), simulated QKD links feeding
    them, certificates for the SAEs, the hybrid sessions, V2X, fleet and OTA traffic and
    the operator's dashboard; writes corridor-up.json into the working directory.
    """
    with handle_errors():
        if duration_s is not None and not duration_s > 0:
            raise ParameterError("--duration-s", duration_s, "must be a number of seconds > 0")
        if not status_interval_s > 0:
            raise ParameterError("--status-interval-s", status_interval_s, "must be > 0")
        from corridor.cli.up_mobility import UpMobility
        from corridor.hybrid.corridor_sessions import CorridorSessions
        from corridor.kms.node import Corridor, load_corridor, load_embedded

        configure_logging("warning", json=False)
        if config is not None and embedded is not None:
            raise ParameterError("--embedded", embedded, "either --config or --embedded, "
                                 "not both")
        spec = load_corridor(config) if config is not None else \
            load_embedded(embedded or "city")
        directory = workdir if workdir is not None else default_workdir()
        stop = threading.Event()
        stop_signal: list[str] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop_signal.append(signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT,
                                                                    signal.SIGTERM)}
        inventory_summary = None
        if inventory is not None:
            from corridor.web.kpis import read_inventory_summary

            inventory_summary = read_inventory_summary(inventory, "--inventory")
        corridor = Corridor(spec, directory, host="127.0.0.1",
                            accept_broken_audit=accept_broken_audit)
        dashboard = None
        hybrid = CorridorSessions(corridor)
        mobility = UpMobility(corridor) if with_mobility else None
        started = False
        try:
            corridor.start()
            started = True  # a corridor that never started has nothing to announce stopping
            hybrid.start()
            corridor.up_extra["hybrid_sessions"] = hybrid.describe()
            if mobility is not None:
                mobility.start()
                corridor.up_extra.update(mobility.describe())
            if with_dashboard:
                dashboard = _start_dashboard(corridor, hybrid, mobility, inventory_summary)
            tune_gc_for_serving()
            corridor.write_up_file()
            _describe_start(corridor, spec, hybrid)
            deadline = None if duration_s is None else time.monotonic() + duration_s
            _run_until_stopped(corridor, stop, deadline, status_interval_s, hybrid,
                               mobility)
        except BrokenPipeError:
            # Whoever read our output is gone (a pipe closed, often by the same Ctrl-C):
            # nobody watches any more, so stop cleanly, and silently.
            _silence_output()
            stop_signal.append("output closed")
        finally:
            # Our handlers stay until the very end: a second Ctrl-C (or the first one,
            # when a closed pipe started the stop) must not cut the clean stop short.
            try:
                if started:
                    _quietly(lambda: err_console.print(
                        "stopping: dashboard, fleet, RSU stream, hybrid sessions, feeders, "
                        "servers, stores, audit logs ...", highlight=False))
            finally:
                try:
                    if dashboard is not None:
                        dashboard.close()
                    if mobility is not None:
                        mobility.close()
                    hybrid.close()
                finally:
                    corridor.close()
        why = stop_signal[0] if stop_signal else "--duration-s elapsed"
        failed = {link_id: type(feeder.error).__name__
                  for link_id, feeder in corridor.feeders.items() if feeder.error is not None}
        early = ("; the key feed of " + ", ".join(f"{link} ({error})" for link, error in
                                                  sorted(failed.items()))
                 + " had stopped early (see the error above)") if failed else ""
        _quietly(lambda: console.print(f"corridor stopped cleanly ({why}){early}; state kept "
                                       f"in {_shown(corridor.workdir)}", highlight=False,
                                       soft_wrap=True))
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_dashboard(corridor: Corridor, hybrid: CorridorSessions, mobility: UpMobility | None,
                     inventory: dict[str, Any] | None) -> Any:
    """Serve the dashboard on 127.0.0.1 with the PKI's dashboard certificate (server
    authentication only, signed by the deployment's CA that the operator's browser
    trusts); records its URL."""
    from corridor.web.dashboard import Dashboard
    from corridor.web.snapshot import LocalCorridor

    pki = corridor.pki
    assert pki is not None
    paths = next(iter(pki.dashboards.values()))
    dashboard = Dashboard(LocalCorridor(corridor, hybrid=hybrid, mobility=mobility,
                                        inventory=inventory))
    corridor.up_extra["dashboard_url"] = dashboard.start(paths.cert, paths.key, pki.ca_cert)
    corridor.up_extra["dashboard_cert"] = os.path.relpath(paths.cert, corridor.workdir)
    return dashboard


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null, so that no later write (ours, a log line,
    the interpreter's final flush) fails on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _quietly(write: Callable[[], object]) -> None:
    """Run one output call; a closed pipe silences the output instead of failing."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_output()


def _run_until_stopped(corridor: Corridor, stop: threading.Event, deadline: float | None,
                       interval_s: float, hybrid: CorridorSessions | None = None,
                       mobility: UpMobility | None = None) -> None:
    def remaining() -> float:
        return float("inf") if deadline is None else deadline - time.monotonic()

    if console.is_terminal:
        with Live(status_table(corridor, hybrid, mobility), console=console,
                  refresh_per_second=2, transient=False) as live:
            while not stop.is_set() and remaining() > 0:
                stop.wait(min(1.0, max(remaining(), 0.0)))
                live.update(status_table(corridor, hybrid, mobility))
        return
    while not stop.is_set() and remaining() > 0:
        console.print(status_line(corridor, hybrid, mobility), highlight=False,
                      markup=False, soft_wrap=True)
        console.file.flush()
        stop.wait(min(interval_s, max(remaining(), 0.0)))


def register(app: typer.Typer) -> None:
    """Add ``corridor up`` to the main application."""
    app.command("up")(up_command)


__all__ = ["default_workdir", "key_commands", "operator_commands", "register", "status_line",
           "status_table", "up_command"]
