"""``corridor alarm list|clear``: an operator's view of link states and alarms.

Built on :class:`corridor.kms.client.OperatorClient` and the operator endpoints of the
KMEs (docs/kms-api.md, "Operator endpoints"); needs an operator certificate
(``corridor pki init --operator NAME``; ``corridor up`` writes one and lists it in
``corridor-up.json`` under ``operators``). The connection comes either from
``--kme URL --cert --key --ca`` (one KME) or from ``--from-up FILE`` (every KME of the
file, with the operator certificate named by ``--operator``, default the first one).

``clear`` requires ``--reason``; the KME audits the operator's name (from the
certificate, never from the command line) and the reason in its ``link_cleared`` event.
In ``corridor up`` one monitor judges every link, so clearing at one KME clears the
link for both; KMEs run with ``corridor kme serve`` each hold their own alarms, and
``--from-up`` (or one ``--kme`` call per KME) clears the link at each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from corridor.cli.common import (
    OutputFormat,
    console,
    emit_json,
    handle_errors,
    read_up_file,
)
from corridor.errors import ParameterError

alarm_app = typer.Typer(help="Link states and alarms at the KMEs (operator certificate).",
                        no_args_is_help=True)


@dataclass(frozen=True)
class OperatorConnection:
    """One KME and the operator's credentials for it."""

    kme_id: str | None
    kme_url: str
    cert: Path
    key: Path
    ca: Path


def load_up_operator(path: Path, operator: str | None) -> list[OperatorConnection]:
    """A connection to every KME of a ``corridor-up.json`` with its operator certificate."""
    data = read_up_file(path)
    operators = [o for o in data.get("operators") or [] if isinstance(o, dict)]
    if not operators:
        raise ParameterError("--from-up", str(path), "must list an operator certificate",
                             "written by `corridor up` since operators exist: restart it, or "
                             "pass --kme/--cert/--key/--ca")
    if operator is None:
        entry = operators[0]
    else:
        found = [o for o in operators if o.get("name") == operator]
        if not found:
            raise ParameterError("--operator", operator,
                                 f"one of {[o.get('name') for o in operators]} (from {path})")
        entry = found[0]
    base = path.parent

    def file(field: str, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ParameterError(f"{path}:{field}", value, "a file path")
        return base / value

    cert, key = file("operators.cert", entry.get("cert")), file("operators.key", entry.get("key"))
    ca = file("ca_cert", entry.get("ca_cert", data.get("ca_cert")))
    connections = []
    for kme in data.get("kmes") or []:
        if isinstance(kme, dict) and isinstance(kme.get("base_url"), str):
            kme_id = kme.get("kme_id") if isinstance(kme.get("kme_id"), str) else None
            connections.append(OperatorConnection(kme_id, kme["base_url"], cert, key, ca))
    if not connections:
        raise ParameterError(f"{path}:kmes", data.get("kmes"), "a list of KMEs with base_url")
    return connections


def resolve_connections(kme: str | None, cert: Path | None, key: Path | None,
                        ca: Path | None, from_up: Path | None,
                        operator: str | None) -> list[OperatorConnection]:
    """Either every KME of ``--from-up`` or the one given by ``--kme/--cert/--key/--ca``."""
    if from_up is not None:
        if any(v is not None for v in (kme, cert, key, ca)):
            raise ParameterError("--from-up", str(from_up),
                                 "either --from-up or --kme/--cert/--key/--ca, not both")
        return load_up_operator(from_up, operator)
    if operator is not None:  # it picks a certificate of --from-up; --cert is the one here
        raise ParameterError("--operator", operator, "only with --from-up")
    missing = [name for name, value in (("--kme", kme), ("--cert", cert), ("--key", key),
                                        ("--ca", ca)) if value is None]
    if missing:
        raise ParameterError(missing[0], None, "required (or use --from-up corridor-up.json)")
    assert kme is not None and cert is not None and key is not None and ca is not None
    return [OperatorConnection(None, kme, cert, key, ca)]


KmeOpt = Annotated[str | None, typer.Option("--kme", help="KME base URL, https://host:port.")]
CertOpt = Annotated[Path | None, typer.Option("--cert", help="Operator certificate (PEM).")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help="Operator private key (PEM).")]
CaOpt = Annotated[Path | None, typer.Option("--ca", help="The deployment's CA certificate.")]
FromUpOpt = Annotated[Path | None, typer.Option(
    "--from-up", help="corridor-up.json written by `corridor up` (every KME of it).")]
OperatorOpt = Annotated[str | None, typer.Option(
    "--operator", help="Which operator certificate of --from-up (default: the first).")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def _client(connection: OperatorConnection) -> Any:
    from corridor.kms.client import OperatorClient

    return OperatorClient(connection.kme_url, connection.cert, connection.key, connection.ca,
                          expected_kme_id=connection.kme_id)


def _age(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:,.0f} s"


@alarm_app.command("list")
def list_command(
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    from_up: FromUpOpt = None, operator: OperatorOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Each link's state (ok, starting, pool_full, quarantined, dead) and active alarms,
    at every KME asked."""
    from corridor.kms.client import KmeConnectionError

    with handle_errors():
        answers: list[dict[str, Any]] = []
        down: list[tuple[OperatorConnection, KmeConnectionError]] = []
        connections = resolve_connections(kme, cert, key, ca, from_up, operator)
        for connection in connections:
            try:
                with _client(connection) as client:
                    answers.append(client.alarms())
            except KmeConnectionError as exc:  # the others still answer: show them
                down.append((connection, exc))
        if down and not answers:
            raise down[0][1]
    unreachable = [{"kme_id": c.kme_id, "kme_url": c.kme_url, "error": str(exc)}
                   for c, exc in down]
    if output == OutputFormat.json:
        emit_json({"kmes": answers, "unreachable": unreachable})
        if down:
            raise typer.Exit(1)
        return
    table = Table("KME", "link", "state", "fed here", "last block", "alarms")
    for gone in unreachable:
        table.add_row(str(gone["kme_id"] or gone["kme_url"]), "-",
                      Text("unreachable", style="bold red"), "-", "-",
                      Text(str(gone["error"]), style="bold red"))
    for answer in answers:
        for link in answer["links"]:
            alarms = ", ".join(
                f"{a.get('kind')}:{a.get('reason')}" + (" (latched)" if a.get("latched") else "")
                for a in link.get("alarms", [])) or "none"
            state = str(link.get("state"))
            table.add_row(str(answer.get("kme_id")), str(link.get("link_id")),
                          Text(state, style="" if state == "ok" else "bold red"),
                          "yes" if link.get("fed_here") else "no",
                          _age(link.get("last_block_age_s")),
                          Text(alarms, style="bold red" if link.get("alarms") else ""))
    console.print(table)
    if down:  # a KME that does not answer is news for the operator, and for scripts
        raise typer.Exit(1)


@alarm_app.command("clear")
def clear_command(
    link_id: Annotated[str, typer.Argument(help="The link whose alarms to clear.")],
    reason: Annotated[str, typer.Option(
        "--reason", help="Why (required; audited with the operator's name).")],
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    from_up: FromUpOpt = None, operator: OperatorOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Clear every alarm of LINK_ID (lifting its quarantine) at every KME asked that
    holds the link; the KME audits the operator's name and the reason."""
    from corridor.kms.client import KmeResponseError
    from corridor.kms.operator import check_reason

    with handle_errors():
        reason = check_reason(reason, "--reason")
        answers = []
        known: list[str] = []   # the links of the KMEs that do not hold LINK_ID
        for connection in resolve_connections(kme, cert, key, ca, from_up, operator):
            with _client(connection) as client:
                try:
                    answers.append(client.clear(link_id, reason))
                except KmeResponseError as exc:
                    if exc.status_code != 404:  # 404: not a link of that KME
                        raise
                    known += [str(link.get("link_id")) for link in client.alarms()["links"]
                              if isinstance(link, dict)]
        if not answers:
            raise ParameterError("LINK_ID", link_id, "a link of the KMEs asked: "
                                 + (", ".join(sorted(set(known))) or "they hold none"))
    if output == OutputFormat.json:
        emit_json({"results": answers})
        return
    for answer in answers:
        if answer["cleared"]:
            console.print(f"KME {answer.get('kme_id')}: cleared {len(answer['alarm_ids'])} "
                          f"alarm(s) of link {link_id}; its blocks enter the pools again",
                          highlight=False, soft_wrap=True)
        else:
            note = answer.get("note") or "no active alarm"
            console.print(f"KME {answer.get('kme_id')}: link {link_id}: {note}; nothing "
                          "cleared", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``corridor alarm`` to the main application."""
    app.add_typer(alarm_app, name="alarm")
