"""``corridor audit verify|export``: check a KME's audit chain, hand it to a SIEM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from corridor.cli.common import OutputFormat, console, emit_json, handle_errors
from corridor.errors import ParameterError
from corridor.kms.audit import EXPORT_FORMATS, export, looks_like_audit_log, verify_audit_log
from corridor.kms.crypto import load_kek

audit_app = typer.Typer(help="The tamper-evident audit log of a KME.", no_args_is_help=True)


@audit_app.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="The audit log (JSON Lines).")],
    kek_file: Annotated[Path | None, typer.Option(
        "--kek-file", help="File holding the KME's key-encryption key.")] = None,
    kek_env: Annotated[str | None, typer.Option(
        "--kek-env", help="Environment variable holding the key-encryption key.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")
                      ] = OutputFormat.table,
) -> None:
    """Check every entry's MAC, sequence and chain link, and the head file.

    Exit 0 when intact; exit 1 naming the first bad entry and why; exit 2 for a file
    that is no audit log at all (no head file, no line shaped like an entry).
    """
    with handle_errors():
        if not file.is_file():  # before the KEK: the file is the first thing to get right
            raise ParameterError("FILE", str(file), "an existing audit log file")
        if (kek_file is None) == (kek_env is None):
            raise ParameterError("--kek-file/--kek-env", None,
                                 "give exactly one of --kek-file F or --kek-env VAR")
        kek = load_kek(kek_file) if kek_file is not None else load_kek(None, str(kek_env))
        if not looks_like_audit_log(file):
            raise ParameterError("FILE", str(file), "an audit log (a KME's audit.jsonl or "
                                 "hybrid-audit.jsonl)", "no head file beside it and no line "
                                 "is an audit entry")
        result = verify_audit_log(file, kek)
    if output == OutputFormat.json:
        emit_json({"file": str(file), "ok": result.ok, "entries": result.entries,
                   "first_bad_seq": result.first_bad_seq, "line": result.line,
                   "reason": result.reason, "head_seq": result.head_seq,
                   "warnings": list(result.warnings)})
    elif result.ok:
        console.print(f"{file}: intact, {result.entries} entries, chain and head verify",
                      highlight=False, markup=False, soft_wrap=True)
    else:
        where = f"seq {result.first_bad_seq}"
        if result.line is not None:
            where += f" (line {result.line})"
        console.print(f"{file}: BROKEN at {where}: {result.reason}; {result.entries} entries "
                      "before it verify", highlight=False, markup=False, soft_wrap=True)
    if output != OutputFormat.json:
        for warning in result.warnings:
            console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def export_command(
    file: Annotated[Path, typer.Argument(help="The audit log (JSON Lines).")],
    format: Annotated[str, typer.Option(
        "--format", help=f"Output format: {', '.join(EXPORT_FORMATS)}.")] = "jsonl",
) -> None:
    """Write the log to stdout as JSON Lines, CEF or RFC 5424 syslog lines.

    Does not verify the chain: run `corridor audit verify` for that. Every line
    carries the entry's seq and MAC so the chain can be checked downstream.
    """
    with handle_errors():
        for line in export(file, format):
            sys.stdout.write(line + "\n")


def register(app: typer.Typer) -> None:
    """Add ``corridor audit`` to the main application."""
    app.add_typer(audit_app, name="audit")
