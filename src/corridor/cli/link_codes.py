"""``corridor link ldpc-codes``: build (or find in the cache) the LDPC mother codes ahead of
a run.

A code of n = 2^20 takes minutes to build, while two ``kme serve`` sites wait 30 s for
each other's messages: a site that builds while the other waits risks timing the block
out (docs/ldpc.md, "Efficiency first"). This command builds the codes a QBER selects (or
every published distribution) at one length into the on-disk cache both parties read,
and prints their identities so that two sites can compare them.
"""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corridor.cli.common import (
    OutputFormat,
    console,
    emit_json,
    err_console,
    handle_errors,
    parse_count,
)
from corridor.distill.ldpc import LdpcSettings, plan, settings_named
from corridor.distill.ldpc_codes import (
    DEFAULT_CODE_BITS,
    DEFAULT_CODE_SEED,
    DISTRIBUTIONS,
    MAX_CODE_BITS,
    MIN_CODE_BITS,
    cache_dir,
    distributions_by_rate,
    get_code,
)
from corridor.errors import ParameterError


def _chosen(qbers: list[float], settings: LdpcSettings) -> list[str]:
    """The distributions the plan picks for full frames at these QBERs (highest rate first)."""
    names = set()
    for qber in qbers:
        if not 0.0 < qber < 0.5:
            raise ParameterError("--qber", qber, "must be in (0, 0.5)")
        names.add(plan(settings.code_bits * 16, qber, settings).code.distribution)
    return [d.name for d in distributions_by_rate() if d.name in names]


def codes_command(
    code_bits: Annotated[int, typer.Option(
        "--code-bits", parser=parse_count, metavar="N",
        help=f"Code length in bits, [{MIN_CODE_BITS}, {MAX_CODE_BITS}] "
        "(the link's --ldpc-code-bits).")] = DEFAULT_CODE_BITS,
    qber: Annotated[list[float] | None, typer.Option(
        "--qber", help="Build the code this QBER selects (repeatable); default: every "
        "published distribution.")] = None,
    efficiency: Annotated[float, typer.Option(
        "--efficiency", help="The link's --ldpc-efficiency (it moves the rate a QBER "
        "selects).")] = LdpcSettings.efficiency,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")]
    = OutputFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Build the LDPC mother codes into the on-disk cache, or find them there.

    Prints each code's identity (what both parties compare), its size and whether it
    was built now or read from the cache.
    """
    with handle_errors():
        settings = settings_named(lambda attribute: "--" + attribute.replace("_", "-"),
                                  code_bits=code_bits, efficiency=efficiency)
        show_progress = not quiet and err_console.is_terminal
        if qber:
            # Planning builds the codes it weighs, so the long part happens here.
            with err_console.status("building the LDPC codes these QBERs select") \
                    if show_progress else contextlib.nullcontext():
                names = _chosen(qber, settings)
        else:
            names = [d.name for d in distributions_by_rate()]
        rows: list[dict[str, Any]] = []
        with Progress(TextColumn("building LDPC codes"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=err_console, transient=True, disable=not show_progress) as bar:
            task = bar.add_task("", total=len(names))
            for name in names:
                bar.update(task, description=f"{name}, n = {code_bits}")
                started = time.perf_counter()
                code = get_code(name, code_bits, DEFAULT_CODE_SEED)
                rows.append({
                    "distribution": name, "rate": DISTRIBUTIONS[name].rate, "code_bits": code.n,
                    "checks": code.checks, "edges": code.edges,
                    "max_punctured": code.max_punctured, "identity": code.identity,
                    "built": code.build_seconds > 0.0, "build_s": round(code.build_seconds, 2),
                    "wall_s": round(time.perf_counter() - started, 2)})
                bar.advance(task)
        directory = cache_dir()
        report = {"code_bits": code_bits, "seed": DEFAULT_CODE_SEED,
                  "cache_dir": str(directory) if directory is not None else None,
                  "codes": rows}
        if output_format is OutputFormat.json:
            emit_json(report)
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("distribution", "n", "checks", "edges", "source", "s", "identity"):
            table.add_column(column, justify="left" if column in (
                "distribution", "source", "identity") else "right", overflow="fold")
        for row in rows:
            table.add_row(row["distribution"], str(row["code_bits"]), str(row["checks"]),
                          str(row["edges"]), "built" if row["built"] else "cache",
                          f"{row['build_s'] if row['built'] else row['wall_s']:.1f}",
                          row["identity"])
        console.print(table)
        console.print(f"cache: {report['cache_dir'] or 'disabled (CORRIDOR_LDPC_CACHE is empty)'}",
                      highlight=False)


def add_commands(link_app: typer.Typer) -> None:
    """Add ``ldpc-codes`` to the ``corridor link`` group."""
    link_app.command("ldpc-codes")(codes_command)
