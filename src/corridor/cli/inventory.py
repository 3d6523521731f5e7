"""``corridor inventory scan|plan``: what still uses quantum-vulnerable cryptography,
how risky each use is, and the migration plan (docs/inventory.md)."""

from __future__ import annotations

import dataclasses
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from corridor.cli.common import (
    as_option,
    console,
    emit_json,
    handle_errors,
    parse_count,
    refuse_typed,
)
from corridor.errors import ParameterError

inventory_app = typer.Typer(help="Cryptographic inventory: scan, CBOM, risk, migration plan.",
                            no_args_is_help=True)

_LEVEL_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "green"}


class ScanFormat(StrEnum):
    """Output formats of ``inventory scan``."""

    table = "table"
    json = "json"
    cyclonedx = "cyclonedx"


class PlanFormat(StrEnum):
    """Output formats of ``inventory plan``."""

    markdown = "markdown"
    html = "html"


TargetsArg = Annotated[list[str] | None, typer.Argument(
    help="Files, directories and host:port TLS endpoints to scan.", show_default=False)]
PolicyOpt = Annotated[Path | None, typer.Option(
    "--policy", help="Policy file mapping systems to scores (see the example "
    "inventory-policy.toml in examples/).")]
CrqcOpt = Annotated[float | None, typer.Option(
    "--crqc-years", help="Years to a cryptographically relevant quantum computer, z in "
    "Mosca's x + y > z (default 15, range 5 to 30).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout-s", help="Limit of each TLS handshake (a stalled endpoint is skipped).")]
MaxBytesOpt = Annotated[int, typer.Option(
    "--max-file-bytes", parser=parse_count, metavar="N",
    help="Skip larger files (bounds the time per file).")]
LiveOpt = Annotated[bool, typer.Option(
    "--live/--no-live", help="Also handshake with the KMEs named by a corridor-up.json.")]


def _run_scan(targets: list[str], policy_path: Path | None, crqc_years: float | None,
              timeout_s: float, max_file_bytes: int, live: bool) -> tuple[Any, Any, Any, float]:
    from corridor.inventory.risk import assess_all, load_policy
    from corridor.inventory.scan import ScanOptions, parse_endpoint, scan

    if not targets:
        raise ParameterError("TARGETS", None, "at least one file, directory or host:port")
    for target in targets:
        # A mistyped path would otherwise be one "skipped" line in a scan that exits 0
        # (with --fail-on: a CI gate that passes on nothing scanned).
        path = Path(target)
        if not (path.exists() or path.is_symlink()) and parse_endpoint(target) is None:
            raise ParameterError("TARGETS", target,
                                 "an existing file or directory, or host:port")
    if not 0 < timeout_s <= 300:
        raise ParameterError("--timeout-s", timeout_s, "a number of seconds in (0, 300]")
    if max_file_bytes < 1:
        raise ParameterError("--max-file-bytes", max_file_bytes, "a positive integer")
    policy = load_policy(policy_path, crqc_years)
    started = time.perf_counter()
    result = scan(targets, ScanOptions(max_file_bytes=max_file_bytes, timeout_s=timeout_s,
                                       live=live))
    elapsed = time.perf_counter() - started
    return result, assess_all(result.findings, policy), policy, elapsed


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    try:
        out.write_text(text)
    except OSError as exc:
        raise ParameterError("--out", str(out), "a writable file path",
                             exc.strerror or type(exc).__name__) from None
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)


def _table(assets: list[Any], result: Any, elapsed_s: float, out: Path | None = None) -> None:
    """The ranked table on the terminal, or as plain text into ``out``."""
    if out is None:
        _table_to(console, assets, result, elapsed_s)
        return
    import io

    from rich.console import Console

    buffer = io.StringIO()
    _table_to(Console(file=buffer, width=160, no_color=True, highlight=False), assets,
              result, elapsed_s)
    _write(buffer.getvalue(), out)


def _table_to(target: Any, assets: list[Any], result: Any, elapsed_s: float) -> None:
    from corridor.inventory.algorithms import default_size
    from corridor.inventory.report import summary

    table = Table("risk", "score", "algorithm", "vulnerability", "NIST IR 8547",
                  "x+y-z", "system", "where")
    for column in table.columns[:6]:
        column.no_wrap = True
    table.columns[-1].overflow = "fold"
    for asset in assets:
        f = asset.finding
        sized = f.key_size_bits and f.key_size_bits != default_size(f.algorithm)
        name = f.algorithm + (f"-{f.key_size_bits}" if sized else "")
        if f.curve:
            name += f" ({f.curve})"
        table.add_row(Text(asset.level, style=_LEVEL_STYLE[asset.level]), f"{asset.score:g}",
                      name, asset.vulnerability, asset.nist_status,
                      f"{asset.mosca_margin_years:+g}", asset.system, f.where)
    target.print(table)
    counts = summary(assets)
    target.print(f"{counts['assets']} assets; by risk {counts['by_risk']}; by vulnerability "
                  f"{counts['by_vulnerability']}; {result.files_scanned} files "
                  f"({result.bytes_scanned} bytes) and {result.endpoints_scanned} endpoints "
                  f"in {elapsed_s:.2f} s", highlight=False, soft_wrap=True)
    for skip in result.skipped:
        target.print(f"skipped {skip.location}: {skip.reason}", highlight=False,
                      markup=False, soft_wrap=True)


@inventory_app.command("scan")
def scan_command(
    targets: TargetsArg = None,
    output: Annotated[ScanFormat, typer.Option("--format", help="Output format.")
                      ] = ScanFormat.table,
    out: OutOpt = None, policy: PolicyOpt = None, crqc_years: CrqcOpt = None,
    fail_on: Annotated[str | None, typer.Option(
        "--fail-on", help="Exit 1 when an asset at this level or above is found "
        "(critical, high, medium, low): for CI.")] = None,
    timeout_s: TimeoutOpt = 5.0, max_file_bytes: MaxBytesOpt = 8 * 1024 * 1024,
    live: LiveOpt = False,
) -> None:
    """Find cryptography in files, directories and TLS endpoints; rank it by risk.

    Each finding names the file or host:port, the line or field, the algorithm, the key
    size and how it was found. Items that cannot be read are listed as skipped, with why;
    a target that is neither an existing path nor host:port is refused (exit 2).
    """
    from corridor.inventory.cbom import cbom_json
    from corridor.inventory.report import inventory_json
    from corridor.inventory.risk import LEVELS, level_at_least

    with handle_errors():
        if fail_on is not None and fail_on not in LEVELS:
            raise ParameterError("--fail-on", fail_on, f"one of {', '.join(LEVELS)}")
        result, assets, risk_policy, elapsed = _run_scan(list(targets or []), policy,
                                                         crqc_years, timeout_s,
                                                         max_file_bytes, live)
        if output == ScanFormat.json:
            data = inventory_json(assets, result, risk_policy, list(targets or []), elapsed)
            if out is None:
                emit_json(data)
            else:
                import json

                _write(json.dumps(data, indent=2) + "\n", out)
        elif output == ScanFormat.cyclonedx:
            _write(cbom_json(assets), out)
        else:
            _table(assets, result, elapsed, out)
    if fail_on is not None:
        # A gate must not pass on a target it could not scan at all (an endpoint that
        # refused or stalled): that is a failure of the gate, not a clean result.
        unscanned = [s for s in result.skipped if s.location in (targets or [])]
        if unscanned:
            print(f"fail-on {fail_on}: {unscanned[0].location} was not scanned "
                  f"({unscanned[0].reason})", file=sys.stderr)
            raise typer.Exit(1)
        above = [a for a in assets if level_at_least(a.level, fail_on)]
        if above:
            print(f"fail-on {fail_on}: {len(above)} asset(s) at {fail_on} or above, "
                  f"first {above[0].finding.where} ({above[0].finding.algorithm}, "
                  f"{above[0].level})", file=sys.stderr)
            raise typer.Exit(1)


def _assets_from_json(path: Path, policy_path: Path | None, crqc_years: float | None
                      ) -> tuple[list[Any], list[Any], float]:
    import json

    from corridor.inventory.findings import Finding, Skipped
    from corridor.inventory.report import load_assets
    from corridor.inventory.risk import assess_all, load_policy

    names = {f.name for f in dataclasses.fields(Finding)}
    with as_option("inventory", "--inventory"):
        load_assets(path)  # the file's shape, checked
    data = json.loads(path.read_text())
    findings = []
    for index, asset in enumerate(data["assets"]):  # indices as in the file
        if not isinstance(asset, dict):
            continue  # as load_assets does
        try:
            findings.append(Finding(**{k: v for k, v in asset.items() if k in names}))
        except (TypeError, ValueError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else "a field is missing"
            raise ParameterError("--inventory", str(path), "assets with the fields of a "
                                 "finding (written by `corridor inventory scan --format "
                                 "json`)", f"assets[{index}]: {why}") from None
    policy = load_policy(policy_path, crqc_years)
    skipped = [Skipped(str(s.get("location")), str(s.get("reason")))
               for s in data.get("skipped", [])
               if isinstance(s, dict)]
    return assess_all(findings, policy), skipped, policy.crqc_years


@inventory_app.command("plan")
def plan_command(
    targets: TargetsArg = None,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", help="An inventory JSON (`inventory scan --format json`) instead "
        "of scanning.")] = None,
    output: Annotated[PlanFormat, typer.Option("--format", help="Output format.")
                      ] = PlanFormat.markdown,
    out: OutOpt = None, policy: PolicyOpt = None, crqc_years: CrqcOpt = None,
    timeout_s: TimeoutOpt = 5.0, max_file_bytes: MaxBytesOpt = 8 * 1024 * 1024,
    live: LiveOpt = False,
) -> None:
    """The migration plan, ordered by risk, in three phases: inventory and threat
    model; PQC and hybrid on the most exposed paths; QKD for the premium trust zones."""
    from corridor.inventory.plan import build_plan, plan_html, plan_markdown

    with handle_errors():
        if inventory is not None and targets:
            raise ParameterError("--inventory", str(inventory),
                                 "either --inventory or TARGETS, not both")
        if inventory is not None:
            refuse_typed([("live", "--live", live), ("timeout_s", "--timeout-s", timeout_s),
                          ("max_file_bytes", "--max-file-bytes", max_file_bytes)],
                         "only when scanning TARGETS, not with --inventory")  # scan options
            assets, skipped, z = _assets_from_json(inventory, policy, crqc_years)
        elif not targets:
            raise ParameterError("TARGETS", None, "at least one file, directory or host:port, "
                                 "or --inventory FILE (inventory scan --format json)")
        else:
            result, assets, risk_policy, _ = _run_scan(list(targets or []), policy,
                                                       crqc_years, timeout_s,
                                                       max_file_bytes, live)
            skipped, z = result.skipped, risk_policy.crqc_years
        plan = build_plan(assets, skipped, z)
        _write(plan_html(plan) if output == PlanFormat.html else plan_markdown(plan), out)


def register(app: typer.Typer) -> None:
    """Add ``corridor inventory`` to the main application."""
    app.add_typer(inventory_app, name="inventory")
