"""``corridor v2x``: the IEEE 1609.2 envelope's size budget and the RSU's refusals.

This module owns the ``v2x`` command group: ``v2x budget`` (encoded sizes per message
profile and signature scheme against the frame ceiling, with ``--plot``) and
``v2x attacks`` (each attack staged against an RSU verifier, with the reasons and the
counts). The work lives in :mod:`corridor.mobility.v2x`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from corridor.cli.common import OutputFormat, console, emit_json, handle_errors
from corridor.errors import ParameterError

v2x_app = typer.Typer(
    name="v2x",
    help="V2X messages: 1609.2 sizes per signature scheme, RSU verification and attacks.",
    no_args_is_help=True,
)

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


@v2x_app.command("budget")
def budget_command(
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="table or json.")] = OutputFormat.table,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write a bar chart of the sizes (.png, .svg or .pdf).")] = None,
    ceiling: Annotated[int, typer.Option(
        "--ceiling-bytes", help="Frame ceiling to compare against.")] = 1400,
) -> None:
    """Encoded size of each message profile under each signature scheme."""
    with handle_errors():
        if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
            raise ParameterError("--plot", str(plot), "a file ending in .png, .svg or .pdf")
        if ceiling < 1:
            raise ParameterError("--ceiling-bytes", ceiling, "an integer >= 1")
        from corridor.mobility.v2x.budget import as_dicts, budget_figure, measure

        rows = measure(ceiling_bytes=ceiling)
        if plot is not None:
            from corridor.net.plot import save_figure

            save_figure(budget_figure(rows), plot)
        if output_format is OutputFormat.json:
            emit_json({"frame_ceiling_bytes": ceiling, "rows": as_dicts(rows),
                       "plot": str(plot) if plot is not None else None})
            return
        table = Table(title=f"Encoded Ieee1609Dot2Data against a {ceiling}-byte frame",
                      box=box.SIMPLE_HEAD)
        for name in ("profile", "scheme", "payload", "envelope", "total", "fits", "x-check"):
            table.add_column(name, justify="left" if name in ("profile", "scheme") else "right",
                             no_wrap=True)
        for row in rows:
            table.add_row(row.profile, row.scheme, str(row.payload_bytes),
                          str(row.envelope_bytes), str(row.encoded_bytes),
                          "yes" if row.fits else f"+{row.encoded_bytes - ceiling}",
                          "same" if row.cross_decoded else "DIFFERS")
        table.caption = ("bytes; envelope = total - payload; x-check: asn1tools decoded and "
                         "re-encoded to the same bytes; certificates: " + ", ".join(
                             f"{s} {n} B" for s, n in dict.fromkeys(
                                 (r.scheme, r.certificate_bytes) for r in rows)))
        console.print(table)
        if plot is not None:
            console.print(f"figure written to {plot}", highlight=False)


@v2x_app.command("attacks")
def attacks_command(
    scheme: Annotated[str, typer.Option(
        "--scheme", help="ecdsa-p256, ml-dsa-44 or hybrid.")] = "ecdsa-p256",
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="table or json.")] = OutputFormat.table,
) -> None:
    """Stage each attack against an RSU verifier: the reason each was refused for."""
    with handle_errors():
        from corridor.mobility.v2x.attacks import run_attacks
        from corridor.mobility.v2x.signing import parse_scheme

        chosen = parse_scheme(scheme, "--scheme")
        results, verifier = run_attacks(chosen, now_unix_s=time.time())
        counts = dict(sorted(verifier.counts.items()))
        if output_format is OutputFormat.json:
            emit_json({"scheme": chosen.value,
                       "attacks": [{"attack": r.attack, "refused": r.refused,
                                    "reason": r.reason} for r in results],
                       "counts": counts, "certificate_cache_hits": verifier.cache_hits})
            return
        table = Table(title=f"RSU verifier, {chosen.value}", box=box.SIMPLE_HEAD)
        for name in ("message", "outcome"):
            table.add_column(name)
        for r in results:
            table.add_row(r.attack, f"refused: {r.reason}" if r.refused else "accepted")
        console.print(table)
        console.print("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
                      highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``v2x`` group to the ``corridor`` application."""
    app.add_typer(v2x_app)
