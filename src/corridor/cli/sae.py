"""``corridor sae status|get-key|get-key-with-id``: a command-line SAE.

Built on :class:`corridor.kms.client.SaeClient`. The connection comes either from
``--kme URL --cert --key --ca`` or from the ``corridor-up.json`` that ``corridor up``
writes (``--from-up FILE --sae SAE_ID``), whose layout is::

    {
      "ca_cert": "pki/ca.pem",
      "kmes": [{"kme_id": "kme-a", "base_url": "https://127.0.0.1:8443"}, ...],
      "saes": [{"sae_id": "sae-a", "kme_id": "kme-a", "cert": "pki/sae/sae-a/cert.pem",
                "key": "pki/sae/sae-a/key.pem", "ca_cert": "pki/ca.pem"}, ...]
    }

(relative paths are relative to the file; an SAE's ``ca_cert`` falls back to the
top-level one). Output is JSON by default with keys in base64, exactly as the interface
delivers them: this is the key delivery tool, so printing the key is its purpose.
"""

from __future__ import annotations

import base64
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from corridor.cli.common import OutputFormat, console, emit_json, handle_errors, read_up_file
from corridor.errors import ParameterError
from corridor.kms.client import SaeClient
from corridor.kms.interface import DeliveredKey

sae_app = typer.Typer(help="A command-line SAE: get keys from a KME over ETSI GS QKD 014.",
                      no_args_is_help=True)


@dataclass(frozen=True)
class SaeConnection:
    """Where an SAE's KME is and the SAE's credentials."""

    kme_url: str
    cert: Path
    key: Path
    ca: Path
    expected_kme_id: str | None


def _entry(entries: Any, id_field: str, wanted: str, what: str, source: Path) -> dict[str, Any]:
    if not isinstance(entries, list):
        raise ParameterError(f"{source}:{what}s", type(entries).__name__, "a JSON array")
    for entry in entries:
        if isinstance(entry, dict) and entry.get(id_field) == wanted:
            return entry
    known = [e.get(id_field) for e in entries if isinstance(e, dict)]
    raise ParameterError(f"--{what}", wanted, f"one of {known} (from {source})")


def load_up_connection(path: Path, sae_id: str) -> SaeConnection:
    """The connection of ``sae_id`` as described by a ``corridor-up.json``."""
    data = read_up_file(path)
    base = path.parent
    sae = _entry(data.get("saes"), "sae_id", sae_id, "sae", path)
    kme_id = sae.get("kme_id")
    if not isinstance(kme_id, str):
        raise ParameterError(f"{path}:saes.{sae_id}.kme_id", kme_id, "a KME ID")
    kme = _entry(data.get("kmes"), "kme_id", kme_id, "kme", path)

    def file(field: str, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ParameterError(f"{path}:{field}", value, "a file path")
        return base / value

    url = kme.get("base_url")
    if not isinstance(url, str):
        raise ParameterError(f"{path}:kmes.{kme_id}.base_url", url, "an https:// URL")
    return SaeConnection(kme_url=url, cert=file("cert", sae.get("cert")),
                         key=file("key", sae.get("key")),
                         ca=file("ca_cert", sae.get("ca_cert", data.get("ca_cert"))),
                         expected_kme_id=kme_id)


KmeOpt = Annotated[str | None, typer.Option("--kme", help="KME base URL, https://host:port.")]
CertOpt = Annotated[Path | None, typer.Option("--cert", help="SAE certificate (PEM).")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help="SAE private key (PEM).")]
CaOpt = Annotated[Path | None, typer.Option("--ca", help="The deployment's CA certificate.")]
ExpectOpt = Annotated[str | None, typer.Option(
    "--expect-kme", help="KME ID the KME's certificate must carry.")]
FromUpOpt = Annotated[Path | None, typer.Option(
    "--from-up", help="corridor-up.json written by `corridor up`.")]
SaeOpt = Annotated[str | None, typer.Option("--sae", help="This SAE's ID (with --from-up).")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def resolve_connection(kme: str | None, cert: Path | None, key: Path | None, ca: Path | None,
                       expect_kme: str | None, from_up: Path | None,
                       sae: str | None) -> SaeConnection:
    """One connection from either the explicit options or ``--from-up``/``--sae``."""
    if from_up is not None:
        if sae is None:
            raise ParameterError("--sae", None, "this SAE's ID, required with --from-up")
        if any(v is not None for v in (kme, cert, key, ca)):
            raise ParameterError("--from-up", str(from_up),
                                 "either --from-up/--sae or --kme/--cert/--key/--ca, not both")
        connection = load_up_connection(from_up, sae)
        if expect_kme is not None:
            connection = dataclasses.replace(connection, expected_kme_id=expect_kme)
        return connection
    if sae is not None:  # the certificate names the SAE; --sae would be ignored
        raise ParameterError("--sae", sae, "only with --from-up (with --cert, the "
                             "certificate says which SAE this is)")
    missing = [name for name, value in (("--kme", kme), ("--cert", cert), ("--key", key),
                                        ("--ca", ca)) if value is None]
    if missing:
        raise ParameterError(missing[0], None,
                             "required (or use --from-up corridor-up.json --sae SAE_ID)")
    assert kme is not None and cert is not None and key is not None and ca is not None
    if not kme.startswith("https://"):
        raise ParameterError("--kme", kme, "an https:// URL (https://host:port)",
                             "ETSI GS QKD 014 runs over TLS only")
    return SaeConnection(kme, cert, key, ca, expect_kme)


def client_for(connection: SaeConnection) -> SaeClient:
    """The ETSI 014 client of ``connection``."""
    return SaeClient(connection.kme_url, connection.cert, connection.key, connection.ca,
                     expected_kme_id=connection.expected_kme_id)


def _keys_json(keys: list[DeliveredKey]) -> dict[str, Any]:
    return {"keys": [{"key_ID": k.key_id, "key": base64.b64encode(k.key).decode("ascii")}
                     for k in keys]}


def _print_keys(keys: list[DeliveredKey], output: OutputFormat) -> None:
    if output == OutputFormat.json:
        emit_json(_keys_json(keys))
        return
    # Plain lines, never a width-fitted table: a key or key ID cut at the terminal's edge
    # would be lost, since the KME has already handed it out.
    lines = ["key_ID  size_bits  key_base64"]
    lines += [f"{k.key_id}  {len(k.key) * 8}  {base64.b64encode(k.key).decode('ascii')}"
              for k in keys]
    sys.stdout.write("\n".join(lines) + "\n")


@sae_app.command("status")
def status_command(
    slave_sae_id: Annotated[str, typer.Argument(help="The slave SAE's ID.")],
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    expect_kme: ExpectOpt = None, from_up: FromUpOpt = None, sae: SaeOpt = None,
    output: FormatOpt = OutputFormat.json,
) -> None:
    """Get status of the key pool this SAE (master) shares with SLAVE_SAE_ID."""
    with handle_errors():
        connection = resolve_connection(kme, cert, key, ca, expect_kme, from_up, sae)
        with client_for(connection) as client:
            status = client.status(slave_sae_id)
    body = {k: v for k, v in dataclasses.asdict(status).items()
            if not (k == "status_extension" and v is None)}
    if output == OutputFormat.json:
        emit_json(body)
        return
    table = Table("field", "value")
    for name, value in body.items():
        table.add_row(name, str(value))
    console.print(table)


@sae_app.command("get-key")
def get_key_command(
    slave_sae_id: Annotated[str, typer.Argument(help="The slave SAE to share the keys with.")],
    number: Annotated[int, typer.Option(help="Number of keys.")] = 1,
    size: Annotated[int | None, typer.Option(help="Key size in bits (default: the KME's).")
                    ] = None,
    additional_slave: Annotated[list[str] | None, typer.Option(
        "--additional-slave", help="Another slave SAE to share the keys with (repeatable).")
    ] = None,
    get: Annotated[bool, typer.Option("--get", help="Use the GET form (number and size only).")
                   ] = False,
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    expect_kme: ExpectOpt = None, from_up: FromUpOpt = None, sae: SaeOpt = None,
    output: FormatOpt = OutputFormat.json,
) -> None:
    """Get new keys for this SAE (master) to share with SLAVE_SAE_ID."""
    with handle_errors():
        if get and additional_slave:
            raise ParameterError("--get", True, "only without --additional-slave",
                                 "the GET form carries only number and size; drop --get")
        # What ETSI GS QKD 014 allows of any KME, checked before one is asked; the KME's
        # own limits (max_key_per_request, min/max_key_size) come back in its answer.
        if number < 1:
            raise ParameterError("--number", number, "a number of keys, at least 1")
        if size is not None and (size < 1 or size % 8):
            raise ParameterError("--size", size, "a key size in bits, a positive multiple "
                                 "of 8 (ETSI GS QKD 014)")
        connection = resolve_connection(kme, cert, key, ca, expect_kme, from_up, sae)
        with client_for(connection) as client:
            keys = client.get_key(slave_sae_id, number=number, size=size,
                                  additional_slave_sae_ids=additional_slave,
                                  method="GET" if get else "POST")
    _print_keys(keys, output)


@sae_app.command("get-key-with-id")
def get_key_with_id_command(
    master_sae_id: Annotated[str, typer.Argument(help="The master SAE that got the keys.")],
    key_ids: Annotated[list[str], typer.Argument(help="Key IDs (UUIDs).")],
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    expect_kme: ExpectOpt = None, from_up: FromUpOpt = None, sae: SaeOpt = None,
    output: FormatOpt = OutputFormat.json,
) -> None:
    """Get, as slave SAE, the keys KEY_IDS that MASTER_SAE_ID obtained for this SAE."""
    with handle_errors():
        from corridor.kms.store import is_uuid

        for key_id in key_ids:  # a typo would cost a round trip and a "not found"
            if not is_uuid(key_id):
                raise ParameterError("KEY_IDS", key_id, "key_IDs as the KME gave them "
                                     "(UUIDs, ETSI GS QKD 014)")
        connection = resolve_connection(kme, cert, key, ca, expect_kme, from_up, sae)
        with client_for(connection) as client:
            keys = client.get_key_with_id(master_sae_id, key_ids)
    _print_keys(keys, output)


def register(app: typer.Typer) -> None:
    """Add ``corridor sae`` to the main application."""
    app.add_typer(sae_app, name="sae")
