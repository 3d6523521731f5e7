"""``corridor pki init``: a local CA and the KME, SAE and operator certificates of a
deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corridor.cli.common import OutputFormat, console, emit_json, handle_errors
from corridor.kms.pki import DEFAULT_KME_HOSTS, DEFAULT_VALIDITY_DAYS, init_pki, parse_sae_spec

pki_app = typer.Typer(help="Certificates for mutual TLS between SAEs and KMEs.",
                      no_args_is_help=True)


@pki_app.command("init")
def init_command(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the PKI into.")],
    kme: Annotated[list[str], typer.Option("--kme", help="A KME ID (repeat for each KME).")],
    sae: Annotated[list[str] | None, typer.Option(
        "--sae", help="SAE_ID@KME_ID: an SAE and the KME it is attached to (repeatable).")
    ] = None,
    operator: Annotated[list[str] | None, typer.Option(
        "--operator", help="An operator name: a certificate that reads /metrics and the "
        "OpenAPI document and lists and clears alarms (repeatable).")] = None,
    dashboard: Annotated[list[str] | None, typer.Option(
        "--dashboard", help="A dashboard name: a server certificate for `corridor web` "
        "(server authentication only; repeatable).")] = None,
    host: Annotated[list[str] | None, typer.Option(
        "--host", help="Host name or IP address KMEs and dashboards are reached at "
                       "(repeatable; default localhost, 127.0.0.1, ::1).")] = None,
    validity_days: Annotated[int, typer.Option(help="Certificate lifetime in days.")
                             ] = DEFAULT_VALIDITY_DAYS,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA.")] = False,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")
                      ] = OutputFormat.table,
) -> None:
    """Create a CA, a certificate per KME (server and client), per SAE and per operator
    (client), and per dashboard (server).

    Private keys are written with mode 0600 in directories with mode 0700; the
    manifest pki.json lists every file.
    """
    with handle_errors():
        saes = [parse_sae_spec(spec) for spec in (sae or [])]
        layout = init_pki(out, kme, saes, operators=list(operator or []),
                          dashboards=list(dashboard or []),
                          hosts=tuple(host) if host else DEFAULT_KME_HOSTS,
                          force=force, validity_days=validity_days)
    if output == OutputFormat.json:
        emit_json({"root": str(layout.root), **layout.to_json()})
        return
    console.print(f"CA certificate: {layout.ca_cert}")
    for kme_id, paths in layout.kmes.items():
        console.print(f"KME {kme_id}: {paths.cert} (key {paths.key})", highlight=False)
    for sae_id, paths in layout.saes.items():
        console.print(f"SAE {sae_id} @ {layout.sae_kme[sae_id]}: {paths.cert} (key {paths.key})",
                      highlight=False)
    for name, paths in layout.operators.items():
        console.print(f"operator {name}: {paths.cert} (key {paths.key})", highlight=False)
    for name, paths in layout.dashboards.items():
        console.print(f"dashboard {name}: {paths.cert} (key {paths.key})", highlight=False)
    console.print(f"Manifest: {layout.root / 'pki.json'}")


def register(app: typer.Typer) -> None:
    """Add ``corridor pki`` to the main application."""
    app.add_typer(pki_app, name="pki")
