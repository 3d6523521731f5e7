"""``corridor evidence``: the evidence pack an auditor or a buyer asks for, from a
recorded ``corridor-up.json`` or (``--from-up``) a running corridor whose KMEs are asked
with the operator certificate (docs/inventory.md, "Evidence pack")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corridor.cli.common import OutputFormat, as_option, console, emit_json, handle_errors
from corridor.errors import ParameterError


def evidence_command(
    file: Annotated[Path | None, typer.Argument(
        help="corridor-up.json of a recorded corridor (its working directory kept).",
        show_default=False)] = None,
    from_up: Annotated[Path | None, typer.Option(
        "--from-up", help="corridor-up.json of a running corridor: also ask its KMEs "
        "(operator certificate) and handshake with them.")] = None,
    operator: Annotated[str | None, typer.Option(
        "--operator", help="Which operator certificate of --from-up (default: the first).")
                        ] = None,
    before: Annotated[Path | None, typer.Option(
        "--before", help="Inventory JSON of the estate before migration.")] = None,
    after: Annotated[Path | None, typer.Option(
        "--after", help="Inventory JSON after migration (default: scan the corridor).")
                     ] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")
                    ] = None,
    pdf: Annotated[Path | None, typer.Option("--pdf", help="Write the PDF report here.")
                   ] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output on stdout.")
                      ] = OutputFormat.table,
) -> None:
    """Which links are QKD-secured and by what; the threat model; the fallback path and
    how often it was taken; key rotation and where it is logged; audit-chain
    verification; certificate expiry; key-exchange risk before and after."""
    from corridor.cli.alarm import load_up_operator
    from corridor.inventory.evidence import (
        collect_evidence,
        evidence_html,
        evidence_pdf,
        sections,
    )
    from corridor.inventory.report import load_assets

    with handle_errors():
        if (file is None) == (from_up is None):
            raise ParameterError("FILE", str(file) if file and from_up else None,
                                 "exactly one of FILE (recorded) or --from-up (running)")
        if operator is not None and from_up is None:
            raise ParameterError("--operator", operator, "only with --from-up")
        up_file = file if file is not None else from_up
        assert up_file is not None
        connections = None
        if from_up is not None:
            connections = [(c.kme_id, c.kme_url, c.cert, c.key, c.ca)
                           for c in load_up_operator(from_up, operator)]
        for option, target, suffixes in (("--html", html, (".html", ".htm")),
                                         ("--pdf", pdf, (".pdf",))):
            if target is not None and target.suffix.lower() not in suffixes:
                raise ParameterError(option, str(target), f"a file ending in {suffixes[0]}")
        for option, inventory in (("--before", before), ("--after", after)):
            if inventory is not None:
                with as_option("inventory", option):
                    load_assets(inventory)
        pack = collect_evidence(up_file, connections=connections, before=before, after=after)
        for target, write in ((html, lambda p: p.write_text(evidence_html(pack))),
                              (pdf, lambda p: evidence_pdf(pack, p))):
            if target is None:
                continue
            try:
                write(target)
            except OSError as exc:
                raise ParameterError("--html" if target is html else "--pdf", str(target),
                                     "a writable file path",
                                     exc.strerror or type(exc).__name__) from None
    if output == OutputFormat.json:
        emit_json(pack.to_dict())
    else:
        for heading, lines in sections(pack):
            console.print(f"[bold]{heading}[/]", highlight=False)
            for line in lines:
                console.print(f"  - {line}", highlight=False, markup=False, soft_wrap=True)
        for target in (html, pdf):
            if target is not None:
                console.print(f"wrote {target}", highlight=False, soft_wrap=True)
    if pack.problems and any("BROKEN" in p for p in pack.problems):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``corridor evidence`` to the main application."""
    app.command("evidence")(evidence_command)
