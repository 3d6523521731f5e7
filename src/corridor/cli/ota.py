"""``corridor ota``: Uptane-style over-the-air updates, hybrid-signed (docs/ota.md).

This module owns the ``ota`` command group:

- ``ota init``: keys of both repositories (Ed25519 + ML-DSA-65 per key by default), the
  image repository with a supplier delegation, one director repository per vehicle;
- ``ota release FILE``: encrypt a firmware image under a new campaign key, sign it in;
- ``ota assign CAMPAIGN``: bring the campaign key to the regional site over a hybrid
  session (QKD from a running corridor with ``--from-up``, else X-Wing alone under
  ``pqc-required``, said so), wrap it to each vehicle, sign each vehicle's bundle;
- ``ota serve``: both repositories and the director over HTTPS until Ctrl-C;
- ``ota vehicle ID``: one simulated vehicle's update, with a progress bar;
- ``ota status``: each vehicle's campaign state;
- ``ota rotate``: new keys for roles of a repository, by a root rotation.

The work lives in :mod:`corridor.mobility.ota`.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from corridor.cli.common import OutputFormat, console, emit_json, handle_errors, read_up_file
from corridor.errors import ParameterError

ota_app = typer.Typer(
    name="ota",
    help="Over-the-air updates: Uptane-style repositories, hybrid signatures, vehicles.",
    no_args_is_help=True,
)

DirOpt = Annotated[Path, typer.Option("--dir", help="The OTA directory (corridor ota init).")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def _print(text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _ota(directory: Path) -> Any:
    from corridor.mobility.ota.backend import OtaDirectory

    return OtaDirectory(directory)


@ota_app.command("init")
def init_command(
    directory: DirOpt,
    vehicles: Annotated[int, typer.Option("--vehicles", help="Simulated vehicles.")] = 3,
    scheme: Annotated[str, typer.Option(
        "--scheme", help="Key of every role: hybrid (Ed25519 and ML-DSA-65, both must "
        "verify), ed25519 or ml-dsa-65.")] = "hybrid",
    supplier: Annotated[list[str] | None, typer.Option(
        "--supplier", help="A supplier whose role signs paths under SUPPLIER/ (repeat).")
        ] = None,
) -> None:
    """Create the keys, the image repository and a director repository per vehicle."""
    with handle_errors():
        from corridor.mobility.ota.backend import DEFAULT_SUPPLIER, init_ota

        if not 1 <= vehicles <= 10_000:
            raise ParameterError("--vehicles", vehicles, "1 to 10000")
        ota = init_ota(directory, [f"v-{n:03d}" for n in range(1, vehicles + 1)],
                       scheme=scheme, suppliers=supplier or [DEFAULT_SUPPLIER])
    hardware = sorted({h for ecus in ota.vehicles.values() for h in ecus.values()})
    _print(f"OTA back end in {directory}: {vehicles} vehicles, {scheme} keys on every role, "
           f"suppliers {', '.join(ota.config['suppliers'])}, hardware {', '.join(hardware)}")


@ota_app.command("release")
def release_command(
    firmware: Annotated[Path, typer.Argument(help="The firmware image.")],
    directory: DirOpt,
    name: Annotated[str, typer.Option(
        "--name", help="Target path, e.g. oem/telematics-2.bin (SUPPLIER/... for a "
        "supplier's role).")],
    version: Annotated[int, typer.Option("--version", help="Firmware version (>= 1).")],
    hardware_id: Annotated[str, typer.Option("--hardware-id", help="Hardware it runs on.")],
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Encrypt FIRMWARE under a new campaign key and sign it into the image repository."""
    with handle_errors():
        from corridor.mobility.ota.backend import release

        try:
            data = firmware.read_bytes()
        except OSError:
            raise ParameterError("FIRMWARE", str(firmware), "a readable file") from None
        record = release(_ota(directory), data, name, version=version, hardware_id=hardware_id)
    if output == OutputFormat.json:
        emit_json(record)
        return
    _print(f"campaign {record['campaign_id']}: {name} v{version} for {hardware_id}, "
           f"{record['plaintext_length']} B encrypted to {record['encrypted_length']} B, "
           f"signed by role {record['role']}")


def _transfer(from_up: Path | None, oem: str | None, regional: str | None) -> tuple[Any, str]:
    from corridor.mobility.ota.regional import transfer_campaign_key

    if from_up is None:
        oem_sae, regional_sae, policy = oem or "oem", regional or "regional", "pqc-required"
        oem_qkd = regional_qkd = None
        note = " (no --from-up: no QKD input, X-Wing alone)"
    else:
        from corridor.hybrid.qkd import KmeQkdKeys
        from corridor.kms.up_file import pair_policy, sae_client

        up = read_up_file(from_up)
        sessions = up.get("hybrid_sessions") or []
        saes = [s["sae_id"] for s in up.get("saes", [])]
        if not saes:
            raise ParameterError("--from-up", "saes", "a corridor-up.json with SAEs")
        oem_sae = oem or (sessions[0]["initiator_sae_id"] if sessions else saes[0])
        regional_sae = regional or (sessions[0]["responder_sae_id"] if sessions
                                    else next((s for s in saes if s != oem_sae), oem_sae))
        policy = pair_policy(up, oem_sae, regional_sae)
        base = from_up.resolve().parent
        oem_qkd = KmeQkdKeys(sae_client(up, base, oem_sae, "--oem-sae"))
        regional_qkd = KmeQkdKeys(sae_client(up, base, regional_sae, "--regional-sae"))
        note = ""

    def transfer(campaign_id: str, key: bytearray) -> tuple[bytearray, dict[str, Any]]:
        received, record = transfer_campaign_key(
            campaign_id, key, oem_sae_id=oem_sae, regional_sae_id=regional_sae, policy=policy,
            oem_qkd=oem_qkd, regional_qkd=regional_qkd)
        return received, record.as_dict()
    return transfer, note


@ota_app.command("assign")
def assign_command(
    campaign: Annotated[str, typer.Argument(help="Campaign ID (corridor ota release).")],
    directory: DirOpt,
    vehicle: Annotated[list[str] | None, typer.Option(
        "--vehicle", help="A vehicle to assign it to (repeat; default: every vehicle).")
        ] = None,
    from_up: Annotated[Path | None, typer.Option(
        "--from-up", help="corridor-up.json of a running `corridor up`: its SAEs key the "
        "OEM -> regional leg with QKD.")] = None,
    oem_sae: Annotated[str | None, typer.Option("--oem-sae", help="The OEM's SAE.")] = None,
    regional_sae: Annotated[str | None, typer.Option(
        "--regional-sae", help="The regional site's SAE.")] = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Bring CAMPAIGN's key to the regional site and put it in each vehicle's bundle."""
    with handle_errors():
        from corridor.mobility.ota.backend import assign

        ota = _ota(directory)
        ota.campaign(campaign)
        vehicles = vehicle or sorted(ota.vehicles)
        for vid in vehicles:
            ota.check_vehicle(vid)
        transfer, note = _transfer(from_up, oem_sae, regional_sae)
        result = assign(ota, campaign, vehicles, transfer)
    if output == OutputFormat.json:
        emit_json(result)
        return
    session = result["session"]
    if session is not None:
        _print(f"campaign key {session['initiator_sae_id']} -> {session['responder_sae_id']}:"
               f" policy {session['policy']}, inputs {'+'.join(session['inputs'])}, key_ID "
               f"{session['key_id'] or '-'}{note}")
    else:
        _print("campaign key already at the regional site")
    for vid, ecus in sorted(result["vehicles"].items()):
        _print(f"{vid}: {', '.join(ecus)}")
    skipped = sorted(set(vehicles) - set(result["vehicles"]))
    if skipped:
        _print(f"no ECU of that hardware: {', '.join(skipped)}")


@ota_app.command("serve")
def serve_command(
    directory: DirOpt,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free one).")] = 8443,
) -> None:
    """Serve both repositories and the director over HTTPS until Ctrl-C."""
    with handle_errors():
        from corridor.kms.tls import is_address_error
        from corridor.mobility.ota.director import Director
        from corridor.mobility.ota.server import OtaServer

        if not 0 <= port < 65536:
            raise ParameterError("--port", port, "0 to 65535")
        ota = _ota(directory)
        director = Director(ota)
        try:
            server = OtaServer(directory, host=host, port=port, on_manifest=director.receive)
        except OSError as exc:
            if is_address_error(exc):
                raise ParameterError("--host", host, "an address of this machine",
                                     exc.strerror or str(exc)) from None
            raise ParameterError("--port", port, "a free port", exc.strerror) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        _print(f"OTA server on {server.url} (CA {server.ca_file}); Ctrl-C stops")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        status = server.status()
    _print(f"stopped: {status['requests']} requests, {status['bytes_served']} bytes served")


DEFAULT_URL = "https://127.0.0.1:8443"  # where `corridor ota serve` listens by default
OptionalDirOpt = Annotated[Path | None, typer.Option(
    "--dir", help="The OTA directory (corridor ota init; default with --from-up: the "
    "one corridor up runs).", show_default=False)]
FromUpOpt = Annotated[Path | None, typer.Option(
    "--from-up", help="corridor-up.json of a running `corridor up`: its OTA directory and "
    "server.", show_default=False)]


def _from_up(directory: Path | None, url: str | None, from_up: Path | None, *,
             need_server: bool = True) -> tuple[Path, str]:
    """The OTA directory and server URL: as given, else those of ``corridor up``'s
    campaign (``--from-up``), else ``--dir`` is required and the URL is ota serve's."""
    ota_up: dict[str, Any] = {}
    if from_up is not None:
        ota_up = read_up_file(from_up).get("ota") or {}
        if not isinstance(ota_up.get("ota_dir"), str) or (
                need_server and url is None and not isinstance(ota_up.get("server"), str)):
            raise ParameterError("--from-up", str(from_up), "a corridor-up.json with an OTA "
                                 "campaign and its server", "corridor up without "
                                 "--no-mobility runs one")
    if directory is None:
        if not ota_up:
            raise ParameterError("--dir", None, "required (or --from-up)")
        directory = Path(ota_up["ota_dir"])
    return directory, url or (str(ota_up.get("server")) if ota_up else DEFAULT_URL)


@ota_app.command("vehicle")
def vehicle_command(
    vehicle_id: Annotated[str, typer.Argument(help="The vehicle (v-001, ...).")],
    directory: OptionalDirOpt = None,
    url: Annotated[str | None, typer.Option("--url", help="The OTA server (default: "
                                            f"corridor up's with --from-up, else {DEFAULT_URL})"
                                            ".", show_default=False)] = None,
    from_up: FromUpOpt = None,
    time_limit_s: Annotated[float, typer.Option(
        "--time-limit-s", help="Longest time one download may take.")] = 30.0,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Run one update of a simulated vehicle: verify, download, decrypt, install, report."""
    with handle_errors():
        from corridor.mobility.ota.primary import Limits, PrimaryEcu

        if not time_limit_s > 0:
            raise ParameterError("--time-limit-s", time_limit_s, "a number > 0")
        directory, url = _from_up(directory, url, from_up)
        if not url.startswith("https://"):
            raise ParameterError("--url", url, "an https:// URL")
        ota = _ota(directory)
        ota.check_vehicle(vehicle_id, "VEHICLE_ID")  # the argument, not --vehicle
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), console=console,
                            disable=output == OutputFormat.json)
        tasks: dict[str, Any] = {}
        server_path = urlsplit(url).path.rstrip("/")

        def on_progress(file_url: str, received: int, total: int | None) -> None:
            if file_url not in tasks:  # "director/v-001/timestamp.json", not "timestamp.json"
                label = urlsplit(file_url).path.removeprefix(server_path).lstrip("/")
                tasks[file_url] = progress.add_task(label, total=total)
            progress.update(tasks[file_url], completed=received)

        vehicle = PrimaryEcu.of(ota, vehicle_id, url, limits=Limits(time_limit_s=time_limit_s),
                                on_progress=on_progress)
        with progress:
            result = vehicle.update()
    if output == OutputFormat.json:
        emit_json({"vehicle_id": vehicle_id, **result.as_dict()})
    else:
        why = f" ({result.reason}: {result.detail})" if result.reason else ""
        _print(f"{vehicle_id}: {result.result}{why}; {result.received_bytes} B received, "
               f"manifest {'accepted' if result.manifest_posted else 'not accepted'}")
        for ecu, slot in result.installed.items():
            _print(f"  {ecu} ({slot['hardware_id']}): {slot['target'] or 'factory image'} "
                   f"v{slot['version']}")
    if result.result == "refused":
        raise typer.Exit(1)


@ota_app.command("status")
def status_command(directory: OptionalDirOpt = None, from_up: FromUpOpt = None,
                   output: FormatOpt = OutputFormat.table) -> None:
    """Each vehicle's campaign state, as its manifests told the director."""
    with handle_errors():
        from corridor.mobility.ota.director import Director

        directory, _url = _from_up(directory, None, from_up, need_server=False)
        rows = Director(_ota(directory)).status()
    if output == OutputFormat.json:
        emit_json(rows)
        return
    table = Table(title="OTA campaign status", title_justify="left")
    for column in ("vehicle", "state", "installed", "assigned", "last error"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["vehicle_id"], row["state"],
                      ", ".join(f"{e}:v{v}" for e, v in sorted(row["installed"].items())) or "-",
                      ", ".join(f"{e}:v{v}" for e, v in sorted(row["assigned"].items())) or "-",
                      row["last_error"] or "-")
    console.print(table)


@ota_app.command("rotate")
def rotate_command(
    directory: DirOpt,
    role: Annotated[list[str], typer.Option("--role", help="A role to re-key (repeat).")],
    party: Annotated[str, typer.Option(
        "--party", help="oem (image repository) or regional (every director repository).")
        ] = "oem",
) -> None:
    """New keys for ROLEs by a root rotation that the old and new root keys sign."""
    with handle_errors():
        from corridor.mobility.ota.backend import rotate_keys

        version = rotate_keys(_ota(directory), role, party=party)
    _print(f"{party}: new keys for {', '.join(role)}; root version {version}")


def register(app: typer.Typer) -> None:
    """Add the ``ota`` group to the ``corridor`` application."""
    app.add_typer(ota_app)


__all__ = ["ota_app", "register"]
