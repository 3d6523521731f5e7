"""``corridor pilot report``: the pilot's KPIs and decision table from a corridor's
verified audit trails (docs/pilot.md)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from corridor.cli.common import OutputFormat, console, emit_json, handle_errors
from corridor.errors import ParameterError

_RELATIVE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(option: str, text: str, now: dt.datetime) -> dt.datetime:
    """An ISO 8601 time (UTC when no zone is given) or a span back from now (``90s``,
    ``30m``, ``2h``, ``7d``)."""
    match = _RELATIVE.fullmatch(text.strip())
    if match:
        try:
            return now - dt.timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
        except (OverflowError, ValueError):  # before year 1: no pilot ran then
            raise ParameterError(option, text, "a span back from now that stays after "
                                 "the year 1 (e.g. 7d or 365d)") from None
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ParameterError(option, text, "an ISO 8601 time (2026-12-02T21:00:00Z) or a "
                             "span back from now (90s, 30m, 2h, 7d)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def report_command(
    from_up: Annotated[Path, typer.Option(
        "--from-up", help="corridor-up.json of the corridor (running or recorded; its "
        "working directory kept).")],
    since: Annotated[str | None, typer.Option(
        "--since", help="Start of the pilot period: ISO 8601 or a span back from now "
        "(2h, 7d); default: the first recorded entry.")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="End of the period (same forms); default: the last entry.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the HTML report here.")] = None,
    inventory_before: Annotated[Path | None, typer.Option(
        "--inventory-before", help="Inventory JSON of the estate before the pilot "
        "(corridor inventory scan --format json).")] = None,
    inventory_after: Annotated[Path | None, typer.Option(
        "--inventory-after", help="Inventory JSON after the pilot.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output on stdout.")
                      ] = OutputFormat.table,
) -> None:
    """KPIs of a pilot (QKD key availability, time-to-key, fallback rate, link uptime,
    alarms and keys per day, risk before and after) and the decision table."""
    from corridor.web.kpis import collect_kpis
    from corridor.web.report import decision_table, report_html

    with handle_errors():
        now = dt.datetime.now(dt.UTC)
        start = None if since is None else parse_when("--since", since, now)
        end = None if until is None else parse_when("--until", until, now)
        if start is not None and end is not None and not start < end:
            raise ParameterError("--until", until, f"must be later than --since ({since})")
        kpis = collect_kpis(from_up, since=start, until=end, before=inventory_before,
                            after=inventory_after)
        if out is not None:
            try:
                out.write_text(report_html(kpis))
            except OSError as exc:
                raise ParameterError("--out", str(out), "a writable file path",
                                     exc.strerror or type(exc).__name__) from None
        rows = decision_table(kpis)
    if output == OutputFormat.json:
        emit_json({**kpis.to_dict(), "decision_table": rows})
    else:
        table = Table(title=f"pilot {kpis.name}: {kpis.start} to {kpis.end} "
                      f"({kpis.period_s:,.0f} s), audit chains "
                      f"{'intact' if kpis.chains_ok else 'NOT intact'}", title_justify="left")
        for column in ("KPI", "target", "measured", "verdict", "evidence"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["label"], row["target"], row["measured_text"], row["verdict"],
                          row["evidence"])
        console.print(table)
        for label, summary in (("before", kpis.risk_before), ("after", kpis.risk_after)):
            if summary is not None:  # the inventories given: their risk, as the HTML shows
                console.print(f"key-exchange risk {label}: {summary.get('assets', '?')} "
                              "assets, by "
                              f"risk " + ", ".join(f"{k} {v}" for k, v in
                                                   summary["by_risk"].items()),
                              highlight=False, markup=False)
        for problem in kpis.problems:
            console.print(f"problem: {problem}", highlight=False, markup=False)
        if out is not None:
            console.print(f"wrote {out}", highlight=False)
    if not kpis.chains_ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    pilot = typer.Typer(help="Pilot KPIs and the report a procurement team asks for.",
                        no_args_is_help=True)
    pilot.command("report")(report_command)
    app.add_typer(pilot, name="pilot")
