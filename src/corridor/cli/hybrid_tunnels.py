"""``corridor hybrid macsec ...`` and ``corridor hybrid wireguard ...``: tunnel key exports.

A QKD key comes either from a file (``--key-file`` with ``--key-id``: the base64 ``key``
of an ETSI 014 answer) or from the KME: as master SAE (``--slave-sae``: a new key, whose
key_ID is printed on stderr for the peer) or as slave SAE (``--master-sae`` with
``--key-id``). Exports are written to ``--output FILE`` with mode 0600; ``--output -``
prints them, and only then does key material reach the terminal.
"""

from __future__ import annotations

import base64
import binascii
import logging
import signal
import stat
import sys
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from corridor.cli.common import (
    AuditKeyFileOpt,
    AuditLogOpt,
    as_options,
    err_console,
    handle_errors,
    open_decision_audit,
    refuse_typed,
)
from corridor.cli.sae import (
    CaOpt,
    CertOpt,
    ExpectOpt,
    FromUpOpt,
    KeyOpt,
    KmeOpt,
    SaeOpt,
    client_for,
    resolve_connection,
)
from corridor.errors import ParameterError
from corridor.hybrid.policy import DEFAULT_POLICY, DecisionRecorder, parse_policy
from corridor.mobility import macsec, wireguard
from corridor.mobility.derive import check_key_id
from corridor.mobility.secret_file import write_secret_file
from corridor.mobility.wireguard_agent import Initiator, Responder, load_channel_key

macsec_app = typer.Typer(help="MACsec: MKA CAK/CKN (wpa_supplicant) or static SAK (ip macsec).",
                         no_args_is_help=True)
wireguard_app = typer.Typer(help="WireGuard: preshared keys from QKD (+ PQC), and rotation.",
                            no_args_is_help=True)


class MacsecFormat(StrEnum):
    wpa_supplicant = "wpa_supplicant"
    ip_macsec = "ip-macsec"
    json = "json"


KeyFileOpt = Annotated[Path | None, typer.Option(
    "--key-file", help="The QKD key: a file holding its base64 (the ETSI 014 'key').")]
KeyIdOpt = Annotated[str | None, typer.Option("--key-id", help="The QKD key's key_ID.")]
SlaveOpt = Annotated[str | None, typer.Option(
    "--slave-sae", help="Get a new key from the KME for this slave SAE (enc_keys).")]
MasterOpt = Annotated[str | None, typer.Option(
    "--master-sae", help="Get --key-id from the KME, obtained by this master SAE (dec_keys).")]
SizeOpt = Annotated[int, typer.Option("--size-bits", help="QKD key size asked of the KME.")]
GenerationOpt = Annotated[int, typer.Option(help="Rotation counter bound into the keys.")]
OutputOpt = Annotated[str, typer.Option(
    "--output", "-o", help="File to write (mode 0600); '-' prints the keys on stdout.")]


def _qkd_key(key_file: Path | None, key_id: str | None, slave_sae: str | None,
             master_sae: str | None, size_bits: int, kme: str | None, cert: Path | None,
             key: Path | None, ca: Path | None, expect_kme: str | None, from_up: Path | None,
             sae: str | None) -> tuple[bytes, str]:
    sources = [n for n, v in (("--key-file", key_file), ("--slave-sae", slave_sae),
                              ("--master-sae", master_sae)) if v is not None]
    if len(sources) != 1:
        raise ParameterError("/".join(sources) if len(sources) > 1 else "--key-file", None,
                             "give exactly one of --key-file, --slave-sae, --master-sae")
    if slave_sae is not None:
        if key_id is not None:
            raise ParameterError("--key-id", key_id, "not with --slave-sae (the KME picks it)")
        connection = resolve_connection(kme, cert, key, ca, expect_kme, from_up, sae)
        with client_for(connection) as client:
            delivered = client.get_key(slave_sae, number=1, size=size_bits)[0]
        err_console.print(f"key_ID {delivered.key_id} (give it to the peer)", highlight=False)
        return delivered.key, delivered.key_id
    if key_id is None:
        raise ParameterError("--key-id", None, "required with --key-file or --master-sae")
    key_id = str(check_key_id(key_id, "--key-id"))
    if master_sae is not None:
        connection = resolve_connection(kme, cert, key, ca, expect_kme, from_up, sae)
        with client_for(connection) as client:
            return client.get_key_with_id(master_sae, key_id)[0].key, key_id
    assert key_file is not None
    # They reach a KME, which a key file does without.
    refuse_typed(((name, f"--{name.replace('_', '-')}", None if value is None else str(value))
                  for name, value in (("kme", kme), ("cert", cert), ("key", key), ("ca", ca),
                                      ("expect_kme", expect_kme), ("from_up", from_up),
                                      ("sae", sae))),
                 "only with --slave-sae or --master-sae")
    refuse_typed([("size_bits", "--size-bits", size_bits)],
                 "only with --slave-sae (the key file has its own size)")
    try:
        mode = stat.S_IMODE(key_file.stat().st_mode)
        text = key_file.read_text()
    except OSError:
        raise ParameterError("--key-file", str(key_file), "a readable file") from None
    if mode & 0o077:  # a QKD key that others can read is no secret: refused, as a KEK is
        raise ParameterError("--key-file", str(key_file), f"must be private to its owner; "
                             f"it has mode {mode:04o}", f"run: chmod 600 {key_file}")
    try:
        return base64.b64decode(text.strip(), validate=True), key_id
    except (binascii.Error, ValueError):
        raise ParameterError("--key-file", str(key_file), "a file holding base64") from None


def _write(output: str, text: str) -> None:
    if output == "-":
        sys.stdout.write(text)
    else:
        err_console.print(f"wrote {write_secret_file(output, text)} (mode 0600)",
                          highlight=False)


@macsec_app.command("export")
def macsec_export_command(
    output: OutputOpt,
    output_format: Annotated[MacsecFormat, typer.Option("--format")] = MacsecFormat.wpa_supplicant,
    key_file: KeyFileOpt = None, key_id: KeyIdOpt = None, slave_sae: SlaveOpt = None,
    master_sae: MasterOpt = None, size_bits: SizeOpt = 256, generation: GenerationOpt = 0,
    cak_size_bytes: Annotated[int, typer.Option(help="16 (CAK-128) or 32 (CAK-256).")] = 32,
    mka_priority: Annotated[int, typer.Option(help="MKA key-server priority.")] = 255,
    cipher: Annotated[str, typer.Option(help="ip-macsec: gcm-aes-128 or gcm-aes-256.")]
    = "gcm-aes-256",
    device: Annotated[str | None, typer.Option(help="ip-macsec: the lower device.")] = None,
    peer_mac: Annotated[str | None, typer.Option(help="ip-macsec: the peer's MAC.")] = None,
    macsec_device: Annotated[str, typer.Option(help="ip-macsec: device to create.")]
    = "macsec0",
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    expect_kme: ExpectOpt = None, from_up: FromUpOpt = None, sae: SaeOpt = None,
) -> None:
    """Export MACsec keys from a QKD key: MKA CAK/CKN, or a static SAK for ip macsec."""
    with handle_errors():
        if output_format is MacsecFormat.ip_macsec and (device is None or peer_mac is None):
            raise ParameterError("--device" if device is None else "--peer-mac", None,
                                 "required with --format ip-macsec")
        # Each option shapes one format's output; beside another it would be ignored.
        ip_only = (("cipher", "--cipher", cipher), ("device", "--device", device),
                   ("peer_mac", "--peer-mac", peer_mac),
                   ("macsec_device", "--macsec-device", macsec_device))
        mka_only = (("cak_size_bytes", "--cak-size-bytes", cak_size_bytes),
                    ("mka_priority", "--mka-priority", mka_priority))
        if output_format is MacsecFormat.ip_macsec:
            refuse_typed(mka_only, "only with --format wpa_supplicant or json (MKA)")
        else:
            refuse_typed(ip_only, "only with --format ip-macsec")

        def export(qkd_key: bytes, qkd_key_id: str) -> str:
            if output_format is MacsecFormat.ip_macsec:
                assert device is not None and peer_mac is not None
                sak = macsec.derive_static_sak(qkd_key, qkd_key_id, generation=generation,
                                               cipher=cipher)
                return macsec.ip_macsec_script(sak, device=device, peer_mac=peer_mac,
                                               macsec_device=macsec_device)
            keys = macsec.derive_mka(qkd_key, qkd_key_id, generation=generation,
                                     cak_size_bytes=cak_size_bytes)
            return (macsec.wpa_supplicant_conf(keys, mka_priority=mka_priority)
                    if output_format is MacsecFormat.wpa_supplicant
                    else macsec.export_json(keys=keys))

        _rehearse(export, output, size_bits if key_file is None else None)
        _write(output, export(*_qkd_key(key_file, key_id, slave_sae, master_sae, size_bits,
                                        kme, cert, key, ca, expect_kme, from_up, sae)))


def _rehearse(export: Callable[[bytes, str], str], output: str, size_bits: int | None
              ) -> None:
    """Check ``output``'s folder and, for a key the KME will hand out (``size_bits``),
    run ``export`` on a stand-in key of that size: a mistake in the other options is
    reported before a key is taken from the KME (a key taken is gone from the pool,
    whatever happens next)."""
    if output != "-" and not Path(output).resolve().parent.is_dir():
        raise ParameterError("--output", output, "a file in an existing directory, or '-'")
    if size_bits is not None and size_bits >= 8:
        export(bytes(size_bits // 8), "00000000-0000-4000-8000-000000000000")


def _public_key(value: str, field: str) -> str:
    return wireguard.check_public_key(value, field)


#: combine_psk's fields as this command's options name them.
_PSK_OPTIONS = {"qkd_key": "the QKD key (--key-file, --slave-sae or --master-sae)",
                "public_keys": "--public-key/--peer", "pqc_secret": "--pqc-key-file"}


@wireguard_app.command("psk")
def wireguard_psk_command(
    output: OutputOpt,
    public_key: Annotated[str, typer.Option(help="This end's WireGuard public key.")],
    peer: Annotated[str, typer.Option(help="The peer's WireGuard public key.")],
    key_file: KeyFileOpt = None, key_id: KeyIdOpt = None, slave_sae: SlaveOpt = None,
    master_sae: MasterOpt = None, size_bits: SizeOpt = 256, generation: GenerationOpt = 0,
    pqc_key_file: Annotated[Path | None, typer.Option(
        help="A Rosenpass-style output key (base64 of 32 bytes) to mix in.")] = None,
    no_qkd: Annotated[bool, typer.Option("--no-qkd", help="PSK from the PQC key alone.")]
    = False,
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    expect_kme: ExpectOpt = None, from_up: FromUpOpt = None, sae: SaeOpt = None,
) -> None:
    """Export one WireGuard PSK (wg genpsk form) for 'wg set IFACE peer PUB preshared-key FILE'."""
    with handle_errors():
        pubs = (_public_key(public_key, "--public-key"), _public_key(peer, "--peer"))
        if no_qkd and pqc_key_file is None:
            raise ParameterError("--no-qkd", True, "only with --pqc-key-file",
                                 "without a QKD key the PSK comes from the PQC key alone")
        pqc: bytes | None = None
        if pqc_key_file is not None:
            pqc, reason = wireguard.read_pqc_secret(pqc_key_file)
            if reason is not None:
                raise ParameterError("--pqc-key-file", str(pqc_key_file),
                                     "a file holding base64 of 32 bytes", reason)

        def export(qkd_key: bytes | None, qkd_key_id: str | None) -> str:
            with as_options(_PSK_OPTIONS):
                psk = wireguard.combine_psk(qkd_key=qkd_key, key_id=qkd_key_id,
                                            pqc_secret=pqc, generation=generation,
                                            public_keys=pubs)
            return wireguard.encode_psk(psk) + "\n"

        if no_qkd:
            _write(output, export(None, None))
            return
        _rehearse(export, output, size_bits if key_file is None else None)
        _write(output, export(*_qkd_key(key_file, key_id, slave_sae, master_sae, size_bits,
                                        kme, cert, key, ca, expect_kme, from_up, sae)))


def _address(value: str, field: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ParameterError(field, value, "HOST:PORT")
    return host.strip("[]"), int(port)


@wireguard_app.command("run")
def wireguard_run_command(
    role: Annotated[str, typer.Option(help="initiator (master SAE) or responder (slave SAE).")],
    interface: Annotated[str, typer.Option(help="The WireGuard interface (wg0).")],
    public_key: Annotated[str, typer.Option(help="This end's WireGuard public key.")],
    peer: Annotated[str, typer.Option(help="The peer's WireGuard public key.")],
    channel_key: Annotated[Path, typer.Option(
        help="Key authenticating the key_ID channel: a 'wg genpsk' file both ends hold.")],
    slave_sae: Annotated[str | None, typer.Option(help="initiator: the peer's SAE ID.")]
    = None,
    master_sae: Annotated[str | None, typer.Option(help="responder: the peer's SAE ID.")]
    = None,
    responder: Annotated[str | None, typer.Option(help="initiator: responder HOST:PORT.")]
    = None,
    listen: Annotated[str, typer.Option(help="responder: HOST:PORT to listen on.")]
    = "0.0.0.0:51821",
    policy: Annotated[str, typer.Option(help="qkd-required, pqc-required, both-required, "
                                        "any.")] = DEFAULT_POLICY.value,
    pqc_key_file: Annotated[Path | None, typer.Option(help="Rosenpass-style output key.")]
    = None,
    pqc_max_age_s: Annotated[float, typer.Option(help="An older PQC key file is stale.")]
    = 300.0,
    interval_s: Annotated[float, typer.Option(help="initiator: seconds between rotations.")]
    = 120.0,
    size_bits: SizeOpt = 256,
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    expect_kme: ExpectOpt = None, from_up: FromUpOpt = None, sae: SaeOpt = None,
    audit_log: AuditLogOpt = None, audit_key_file: AuditKeyFileOpt = None,
) -> None:
    """Rotate the peer's PSK every --interval-s from QKD keys (+ PQC), as the policy decides."""
    with handle_errors():
        if role not in ("initiator", "responder"):
            raise ParameterError("--role", role, "initiator or responder")
        if interval_s < 1:
            raise ParameterError("--interval-s", interval_s, "at least 1")
        parsed_policy = parse_policy(policy, "--policy")
        pubs = (_public_key(public_key, "--public-key"), _public_key(peer, "--peer"))
        channel = load_channel_key(channel_key)
        sink = wireguard.WgPeer(interface, pubs[1])
        connection = resolve_connection(kme, cert, key, ca, expect_kme, from_up, sae)
        client = client_for(connection)
        common = dict(kme=client, peer=sink, channel_key=channel, own_public_key=pubs[0],
                      peer_public_key=pubs[1], policy=parsed_policy,
                      recorder=DecisionRecorder(open_decision_audit(audit_log, audit_key_file)),
                      pqc_file=pqc_key_file,
                      pqc_max_age_s=pqc_max_age_s)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        try:
            if role == "initiator":
                if slave_sae is None or responder is None:
                    raise ParameterError("--slave-sae" if slave_sae is None else "--responder",
                                         None, "required with --role initiator")
                Initiator(slave_sae_id=slave_sae, responder_address=_address(
                    responder, "--responder"), key_size_bits=size_bits,
                    **common).run(interval_s, stop)  # type: ignore[arg-type]
            else:
                if master_sae is None:
                    raise ParameterError("--master-sae", None, "required with --role responder")
                host, port = _address(listen, "--listen")
                Responder(master_sae_id=master_sae, **common).serve(  # type: ignore[arg-type]
                    host, port, stop)
        except KeyboardInterrupt:
            stop.set()
        finally:
            client.close()


def register(hybrid_app: typer.Typer) -> None:
    """Add ``macsec`` and ``wireguard`` to ``corridor hybrid``."""
    hybrid_app.add_typer(macsec_app, name="macsec")
    hybrid_app.add_typer(wireguard_app, name="wireguard")
