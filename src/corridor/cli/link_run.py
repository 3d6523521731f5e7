"""``corridor link run``: simulate a link and distil its key, in one process or two.

This module owns the ``run`` command of the ``link`` group (added by
:func:`add_commands`). In-process (the default) Alice and Bob run in two threads;
with ``--role alice|bob`` and ``--listen HOST:PORT`` or ``--peer HOST:PORT`` this
process is one party and talks to the other over TCP. In both modes both parties
simulate the quantum channel from the same ``--seed`` and each keeps only its own
side of the detection records: only classical messages cross the transport.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corridor.cli.common import (
    OutputFormat,
    as_option,
    console,
    emit_json,
    err_console,
    handle_errors,
    parse_count,
)
from corridor.cli.link import (
    DEFAULT_PRESET,
    FINITE_KEY_CHOICES,
    ConfigOption,
    FiniteKeyOption,
    PresetOption,
    SetOption,
    check_finite_key_option,
    link_parameters_from_options,
    parse_run_pulse_count,
)
from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.cascade import CASCADE_VARIANTS
from corridor.distill.ldpc import LdpcSettings, settings_named
from corridor.distill.ldpc_codes import DEFAULT_CODE_BITS, MAX_CODE_BITS, MIN_CODE_BITS
from corridor.distill.pipeline import (
    DEFAULT_BLOCK_PULSES,
    RECONCILIATION_METHODS,
    DistillConfig,
    LinkRunReport,
    PartyOutcome,
    distill_link,
    distill_party,
    read_psk_pool,
)
from corridor.distill.transport import connect, listen
from corridor.errors import ParameterError
from corridor.link.attacks import make_attack

DEFAULT_CASCADE_VARIANT = "biconf"


class AttackOption(StrEnum):
    """Eavesdropping attack applied to the simulated quantum channel."""

    none = "none"
    intercept_resend = "intercept-resend"
    pns = "pns"


class RoleOption(StrEnum):
    """Which party this process plays in a two-process run."""

    alice = "alice"
    bob = "bob"


def parse_host_port(option: str, text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) or raise ParameterError."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ParameterError(option, text, "must be HOST:PORT with a port in 1..65535",
                             "for example 127.0.0.1:7001")
    return host, int(port_text)


def _write_keys(directory: Path, outcomes: list[PartyOutcome]) -> list[str]:
    """Write each party's delivered keys, concatenated in block order, to DIR/<role>.bin."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError("--keys-out", str(directory), "must be a writable directory",
                             type(exc).__name__) from None
    written = []
    for outcome in outcomes:
        path = directory / f"{outcome.role}.bin"
        # Secret key material: owner-only from the moment the file exists.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # an existing file keeps its old mode otherwise
        with os.fdopen(descriptor, "wb") as handle:
            for block in outcome.keys:
                handle.write(block.key_bytes())
        written.append(str(path))
    return written


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _method(data: dict[str, Any]) -> str:
    if data.get("reconciliation") == "ldpc":
        return "LDPC"
    return f"Cascade {data['cascade_variant']}"


def _render_table(data: dict[str, Any]) -> None:
    title = (f"corridor link run: {data['preset']} at {data['length_km']:g} km, "
             f"{data['pulses']:,} pulses, seed {data['seed']}, attack {data['attack']}, "
             f"{_method(data)}, finite key {data['finite_key_bound']} ({data['mode']})")
    # The title on a line of its own, the discard reasons under the table, no edge
    # padding, and numbers that fold rather than end in an ellipsis: an 80-column
    # console (a pipe, a CI log) still shows every digit.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ["block", "fate", "sifted", "QBER", "disclosed", "f", "secret", "auth bits"]
    for column in columns:
        table.add_column(column, justify="left" if column == "fate" else "right",
                         overflow="fold", min_width=len(column))
    reasons = []
    for row in data["blocks"]:
        table.add_row(str(row["block_id"]),
                      "delivered" if row["state"] == "AUTHENTICATED" else "discarded",
                      _fmt(row["sifted_bits"]), _fmt(row["qber_corrected"] or row["test_qber"]),
                      _fmt(row["disclosed_bits"]), _fmt(row["reconciliation_efficiency"], 3),
                      _fmt(row["secret_bits"]), _fmt(row["auth_bits_consumed"]))
        if row["discard_reason"]:
            reasons.append(f"block {row['block_id']} discarded: {row['discard_reason']}")
    console.print(title, highlight=False)
    console.print(table)
    for line in reasons:
        console.print(line, highlight=False)
    totals = data["totals"]
    channel = totals["channel"]
    aborted = ", ".join(f"{k} x{v}" for k, v in totals["blocks_aborted"].items()) or "none"
    lines = [
        f"blocks: {totals['blocks']} ({totals['blocks_delivered']} delivered; aborted: {aborted})",
        f"sifted bits: {totals['sifted_bits']:,}   disclosed bits: {totals['disclosed_bits']:,}"
        f"   final secret bits: {totals['secret_bits']:,}",
        f"classical channel: {channel['messages_sent']} messages sent, "
        f"{channel['messages_received']} received, {channel['round_trips']} round trips, "
        f"{channel['bytes_sent']:,} bytes sent, {channel['bytes_received']:,} received",
        f"authentication: {totals['auth_bits_consumed']:,} key bits consumed, "
        f"{totals['auth_bits_replenished']:,} replenished from output, "
        f"{totals['auth_pool_bits_left']:,} left in the pool; pre-shared key "
        f"{data['psk_source']}",
        f"wall time: {totals['wall_time_s']:.2f} s   secret bits per second: "
        f"{totals['secret_bits_per_second']:,.0f}",
    ]
    if totals["run_abort"]:
        lines.append(f"[bold red]run stopped:[/] {totals['run_abort']}")
    if data.get("keys_out"):
        lines.append("keys written to " + ", ".join(data["keys_out"]))
    for line in lines:
        console.print(line, highlight=False)


class _ProgressBar:
    """Blocks done out of blocks planned, on stderr (only where it helps)."""

    def __init__(self, enabled: bool, total_blocks: int) -> None:
        self._progress: Progress | None = None
        if enabled and total_blocks > 1:
            self._progress = Progress(TextColumn("distilling"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.fields[secret]:,} secret bits"),
                                      console=err_console, transient=True)
            self._task = self._progress.add_task("blocks", total=total_blocks, secret=0)
            self._secret = 0

    def __enter__(self) -> _ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, block: KeyBlock) -> None:
        if self._progress is None:
            return
        if block.state is BlockState.AUTHENTICATED:
            self._secret += block.length_bits
        self._progress.update(self._task, advance=1, secret=self._secret)


def run_command(
    distance_km: Annotated[float, typer.Option("--distance-km", help="Fibre length in km.")],
    preset: PresetOption = DEFAULT_PRESET,
    config: ConfigOption = None,
    overrides: SetOption = None,
    pulses: Annotated[int, typer.Option("--pulses", parser=parse_run_pulse_count, metavar="N",
                                        help="Pulses to send in total (1e9 or 1000000000).")]
    = DEFAULT_BLOCK_PULSES,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulation (same seed, "
                                      "same keys).")] = 0,
    block_pulses: Annotated[int, typer.Option("--block-pulses", parser=parse_run_pulse_count,
                                              metavar="B", help="Pulses per key block.")]
    = DEFAULT_BLOCK_PULSES,
    attack: Annotated[AttackOption, typer.Option("--attack", help="Attack on the quantum "
                                                 "channel.")] = AttackOption.none,
    attack_fraction: Annotated[float | None, typer.Option(
        "--attack-fraction", help="Fraction of pulses intercepted (intercept-resend).")] = None,
    cascade: Annotated[str, typer.Option("--cascade", help="Cascade variant: " + ", ".join(
        sorted(CASCADE_VARIANTS)) + ".")] = DEFAULT_CASCADE_VARIANT,
    frame_bits: Annotated[int, typer.Option("--frame-bits", parser=parse_count, metavar="N",
        help="Cascade frame size in bits.")]
    = 10_000,
    finite_key: FiniteKeyOption = FINITE_KEY_CHOICES[0],
    reconciliation: Annotated[str, typer.Option(
        "--reconciliation", help="Reconciliation method: " + "|".join(RECONCILIATION_METHODS)
        + " (interactive Cascade, or one-way rate-adaptive LDPC).")] = "cascade",
    ldpc_code_bits: Annotated[int, typer.Option(
        "--ldpc-code-bits", parser=parse_count, metavar="N",
        help="LDPC mother code length in bits, "
        f"[{MIN_CODE_BITS}, {MAX_CODE_BITS}].")] = DEFAULT_CODE_BITS,
    ldpc_efficiency: Annotated[float, typer.Option(
        "--ldpc-efficiency", help="f the first LDPC syndrome aims at.")]
    = LdpcSettings.efficiency,
    ldpc_retry_step: Annotated[float, typer.Option(
        "--ldpc-retry-step", help="f each blind LDPC retry adds to a frame that failed.")]
    = LdpcSettings.retry_step,
    link_id: Annotated[str, typer.Option("--link-id", help="Link id written into every key "
                                         "block.")] = "link-1",
    role: Annotated[RoleOption | None, typer.Option(
        "--role", help="Play one party over TCP (needs --listen or --peer).")] = None,
    listen_at: Annotated[str | None, typer.Option(
        "--listen", help="HOST:PORT to wait for the other party on.")] = None,
    peer: Annotated[str | None, typer.Option("--peer", help="HOST:PORT of the other party.")]
    = None,
    timeout_s: Annotated[float, typer.Option(
        "--timeout-s", help="Seconds to wait for the peer (connection and each message).")]
    = 120.0,
    psk_file: Annotated[Path | None, typer.Option(
        "--psk-file", help="Pre-shared authentication key (both parties hold the same "
        "file); default: derived from the seed, for simulation only.")] = None,
    keys_out: Annotated[Path | None, typer.Option(
        "--keys-out", help="Write the final keys to DIR/alice.bin and DIR/bob.bin.")] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")]
    = OutputFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Simulate the link and distil identical secret keys, block by block.

    Runs sifting, parameter estimation, reconciliation (Cascade or LDPC), verification,
    privacy amplification and authentication accounting, and prints per-block and
    total figures.
    """
    with handle_errors():
        params = link_parameters_from_options(preset, config, overrides or [],
                                              length_set_by="--distance-km")
        with as_option("length_km", "--distance-km"):
            params = params.with_length(distance_km)
        if pulses <= 0:
            raise ParameterError("--pulses", pulses, "must be a number of pulses above 0")
        if block_pulses <= 0:
            raise ParameterError("--block-pulses", block_pulses,
                                 "must be a number of pulses above 0")
        if seed < 0:
            raise ParameterError("--seed", seed, "must be a non-negative integer")
        if attack_fraction is not None and attack is not AttackOption.intercept_resend:
            raise ParameterError("--attack-fraction", attack_fraction,
                                 "only applies to --attack intercept-resend")
        if reconciliation not in RECONCILIATION_METHODS:
            raise ParameterError("--reconciliation", reconciliation,
                                 "must be one of " + ", ".join(RECONCILIATION_METHODS))
        if cascade not in CASCADE_VARIANTS:
            raise ParameterError("--cascade", cascade,
                                 "must be one of " + ", ".join(sorted(CASCADE_VARIANTS)))
        bound = check_finite_key_option(finite_key)
        attack_model = make_attack(attack.value, attack_fraction)
        settings_named(lambda attribute: "--ldpc-" + attribute.replace("_", "-"),
                       code_bits=ldpc_code_bits, efficiency=ldpc_efficiency,
                       retry_step=ldpc_retry_step)
        with as_option("channel_timeout_s", "--timeout-s"):
            distill_config = DistillConfig.for_link(
                params, link_id=link_id, cascade_variant=cascade, frame_bits=frame_bits,
                reconciliation=reconciliation, ldpc_code_bits=ldpc_code_bits,
                ldpc_efficiency=ldpc_efficiency, ldpc_retry_step=ldpc_retry_step,
                channel_timeout_s=timeout_s, finite_key_bound=bound)
        total_blocks = -(-pulses // block_pulses)
        show_progress = not quiet and err_console.is_terminal
        with _ProgressBar(show_progress, total_blocks) as bar:
            if role is None:
                if listen_at or peer:
                    raise ParameterError("--listen/--peer", listen_at or peer,
                                         "need --role alice or --role bob")
                report = distill_link(params, pulses, seed, block_pulses=block_pulses,
                                      attack=attack_model, config=distill_config,
                                      psk_file=psk_file, progress=bar.update)
            else:
                report = _run_tcp(role.value, listen_at, peer, timeout_s, params, pulses, seed,
                                  block_pulses, attack_model, distill_config, psk_file,
                                  bar.update)
        data = report.as_dict()
        if keys_out is not None:
            data["keys_out"] = _write_keys(keys_out, _outcomes(report))
        if output_format is OutputFormat.json:
            emit_json(data)
        else:
            _render_table(data)
        if report.run_abort:
            raise typer.Exit(1)


def _outcomes(report: LinkRunReport) -> list[PartyOutcome]:
    return [p for p in (report.alice, report.bob) if p is not None]


def _run_tcp(role: str, listen_at: str | None, peer: str | None, timeout_s: float,
             params: Any, pulses: int, seed: int, block_pulses: int, attack_model: Any,
             config: DistillConfig, psk_file: Path | None, progress: Any) -> LinkRunReport:
    if (listen_at is None) == (peer is None):
        raise ParameterError("--listen/--peer", listen_at or peer,
                             "give exactly one of --listen HOST:PORT or --peer HOST:PORT "
                             "with --role")
    if psk_file is not None:
        read_psk_pool(psk_file)  # a bad file is refused here, before the peer waits on us
    if listen_at is not None:
        host, port = parse_host_port("--listen", listen_at)
        endpoint = listen(host, port, timeout_s)
    else:
        host, port = parse_host_port("--peer", peer or "")
        endpoint = connect(host, port, timeout_s, retries=max(1, int(timeout_s * 4)))
    try:
        return distill_party(role, endpoint, params, pulses, seed, block_pulses=block_pulses,
                             attack=attack_model, config=config, psk_file=psk_file,
                             progress=progress)
    finally:
        endpoint.close()


def add_commands(link_app: typer.Typer) -> None:
    """Add ``run`` to the ``corridor link`` group."""
    link_app.command("run")(run_command)

