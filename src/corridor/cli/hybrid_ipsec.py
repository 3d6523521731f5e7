"""``corridor hybrid ipsec status|responder|initiator``: QKD PPKs into strongSwan charon.

Built on :mod:`corridor.mobility.ipsec` (docs/ipsec.md). Each site runs its own
command next to its charon (``--vici-socket``):

- ``responder``: one action per call, ``--prepare GEN:KEY_ID`` (fetch the key from the
  KME by ID, load the PPK and the connection), ``--retire GEN`` (unload that
  generation's PPK) or ``--tear-down`` (unload the connection and every PPK).
- ``initiator``: rotates the tunnel (``--once`` for one generation, else every
  ``--interval-s``); before each generation it runs ``--responder-command`` with the
  responder's action appended (e.g. ``ssh site-b corridor hybrid ipsec responder ...``):
  that command is the authenticated channel that carries the public ``key_ID``.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import subprocess
import threading
from pathlib import Path
from typing import Annotated

import typer

from corridor.cli.common import (
    AuditKeyFileOpt,
    AuditLogOpt,
    emit_json,
    handle_errors,
    open_decision_audit,
    parse_count,
)
from corridor.errors import CorridorError, ParameterError
from corridor.hybrid.policy import DEFAULT_POLICY, DecisionRecorder, parse_policy
from corridor.kms.client import SaeClient
from corridor.mobility.charon import DEFAULT_VICI_SOCKET, Charon
from corridor.mobility.ipsec import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    IpsecInitiator,
    IpsecResponder,
    TunnelSpec,
)

ipsec_app = typer.Typer(help="RFC 8784 PPKs from QKD keys into strongSwan charon "
                        "(docs/ipsec.md).", no_args_is_help=True)

Socket = Annotated[Path, typer.Option("--vici-socket", help="charon's VICI socket "
                                      "(charon.plugins.vici.socket).")]
Kme = Annotated[str, typer.Option("--kme", help="This site's KME, https://host:port.")]
Cert = Annotated[Path, typer.Option("--cert", help="This SAE's certificate.")]
Key = Annotated[Path, typer.Option("--key", help="This SAE's private key.")]
Ca = Annotated[Path, typer.Option("--ca", help="The corridor's CA certificate.")]
SaeId = Annotated[str, typer.Option("--sae-id", help="This SAE's ID (audit).")]
PeerSae = Annotated[str, typer.Option("--peer-sae-id", help="The other site's SAE ID.")]
Policy_ = Annotated[str, typer.Option("--policy", help="qkd-required, pqc-required, "
                                      "both-required or any.")]
Conn = Annotated[str, typer.Option("--connection", help="Connection base name.")]
Local = Annotated[str, typer.Option("--local-addr", help="Outer local address.")]
Remote = Annotated[str, typer.Option("--remote-addr", help="Outer remote address.")]
LocalTs = Annotated[list[str], typer.Option("--local-ts", help="Local traffic selector "
                                            "(CIDR), repeatable.")]
RemoteTs = Annotated[list[str], typer.Option("--remote-ts", help="Remote traffic "
                                             "selector (CIDR), repeatable.")]
PskFile = Annotated[Path, typer.Option("--ike-psk-file", help="File with the IKE "
                                       "authentication pre-shared key (>= 16 bytes).")]
Ike = Annotated[list[str] | None, typer.Option("--ike-proposal", help="IKE proposal, "
                                               "repeatable.")]
Esp = Annotated[list[str] | None, typer.Option("--esp-proposal", help="ESP proposal, "
                                               "repeatable.")]
def _spec(connection: str, local_addr: str, remote_addr: str, local_ts: list[str],
          remote_ts: list[str], ike: list[str] | None, esp: list[str] | None) -> TunnelSpec:
    return TunnelSpec(connection, local_addr, remote_addr, tuple(local_ts), tuple(remote_ts),
                      ike_proposals=tuple(ike or DEFAULT_IKE_PROPOSALS),
                      esp_proposals=tuple(esp or DEFAULT_ESP_PROPOSALS))


def _psk(path: Path) -> bytes:
    try:
        psk = path.read_bytes().strip()
    except OSError as exc:
        raise ParameterError("--ike-psk-file", str(path), "a readable file",
                             exc.strerror) from None
    if len(psk) < 16:
        raise ParameterError("--ike-psk-file", str(path), "a file with at least 16 bytes")
    return psk


@ipsec_app.command("status")
def status(vici_socket: Socket = Path(DEFAULT_VICI_SOCKET)) -> None:
    """charon's version and IKE SAs (with whether each used its PPK), as JSON."""
    with handle_errors(), Charon(vici_socket) as charon:
        emit_json({"charon": charon.version(),
                   "ike_sas": [{"connection": sa.connection, "id": sa.unique_id,
                                "state": sa.state, "ppk": sa.ppk,
                                "children": list(sa.children)}
                               for sa in charon.ike_sas()]})


_PREPARE = re.compile(r"(\d+):(.+)")


@ipsec_app.command("responder")
def responder(kme: Kme, cert: Cert, key: Key, ca: Ca, sae_id: SaeId, peer_sae_id: PeerSae,
              connection: Conn, local_addr: Local, remote_addr: Remote, local_ts: LocalTs,
              remote_ts: RemoteTs, ike_psk_file: PskFile,
              prepare: Annotated[str | None, typer.Option(
                  "--prepare", metavar="GEN:KEY_ID", help="Load generation GEN with the "
                  "QKD key KEY_ID.")] = None,
              retire: Annotated[int | None, typer.Option(
                  "--retire", metavar="GEN", help="Unload generation GEN's PPK.")] = None,
              tear_down: Annotated[bool, typer.Option(
                  "--tear-down", help="Unload the connection and all its PPKs.")] = False,
              policy: Policy_ = DEFAULT_POLICY.value, ike_proposal: Ike = None,
              esp_proposal: Esp = None, vici_socket: Socket = Path(DEFAULT_VICI_SOCKET),
              audit_log: AuditLogOpt = None, audit_key_file: AuditKeyFileOpt = None) -> None:
    """The responder's side of one step of a rotation."""
    with handle_errors():
        if sum((prepare is not None, retire is not None, tear_down)) != 1:
            raise ParameterError("--prepare/--retire/--tear-down", "", "exactly one of them")
        spec = _spec(connection, local_addr, remote_addr, local_ts, remote_ts, ike_proposal,
                     esp_proposal)
        events = open_decision_audit(audit_log, audit_key_file)
        with Charon(vici_socket) as charon, SaeClient(kme, cert, key, ca) as client:
            side = IpsecResponder(charon, spec, client, local_sae_id=sae_id,
                                  peer_sae_id=peer_sae_id, policy=parse_policy(policy),
                                  recorder=DecisionRecorder(events), events=events)
            side.install_ike_psk(_psk(ike_psk_file))
            prefix = f"{connection}-ppk-g"
            if prepare is not None:
                found = _PREPARE.fullmatch(prepare)
                if not found:
                    raise ParameterError("--prepare", prepare, "GEN:KEY_ID")
                side.prepare(int(found.group(1)), found.group(2))
                emit_json({"prepared": int(found.group(1)), "key_ID": found.group(2)})
                return
            # One call per action: what is loaded is read back from charon.
            loaded = [s for s in charon.shared_ids() if s.startswith(prefix)]
            if retire is not None:
                if f"{prefix}{retire}" in loaded:
                    charon.unload_shared(f"{prefix}{retire}")
                emit_json({"retired": retire})
                return
            for secret in loaded:
                charon.unload_shared(secret)
            if connection in charon.conn_names():
                charon.unload_conn(connection)
            emit_json({"torn_down": connection})


class CommandLink:
    """A ResponderLink that runs the responder's command with the action appended."""

    def __init__(self, command: str) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ParameterError("--responder-command", command, "a command line")

    def _run(self, *args: str) -> None:
        try:
            done = subprocess.run([*self.argv, *args], capture_output=True, text=True,
                                  timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CorridorError(f"responder command failed: {exc}") from None
        if done.returncode != 0:
            raise CorridorError(f"responder command exited {done.returncode}: "
                                f"{done.stderr.strip()[-500:]}")

    def prepare(self, generation: int, key_id: str) -> None:
        self._run("--prepare", f"{generation}:{key_id}")

    def retire(self, generation: int) -> None:
        self._run("--retire", str(generation))


@ipsec_app.command("initiator")
def initiator(kme: Kme, cert: Cert, key: Key, ca: Ca, sae_id: SaeId, peer_sae_id: PeerSae,
              connection: Conn, local_addr: Local, remote_addr: Remote, local_ts: LocalTs,
              remote_ts: RemoteTs, ike_psk_file: PskFile,
              responder_command: Annotated[str, typer.Option(
                  "--responder-command", help="Runs the responder's `corridor hybrid ipsec "
                  "responder` with everything but the action (e.g. over ssh).")],
              policy: Policy_ = DEFAULT_POLICY.value, ike_proposal: Ike = None,
              esp_proposal: Esp = None, vici_socket: Socket = Path(DEFAULT_VICI_SOCKET),
              interval_s: Annotated[float, typer.Option(
                  "--interval-s", help="Rotate every this many seconds.")] = 3600.0,
              rotate_bytes: Annotated[int | None, typer.Option(
                  "--rotate-bytes", parser=parse_count, metavar="N",
                  help="Also rotate after this many bytes.")] = None,
              once: Annotated[bool, typer.Option(
                  "--once", help="Bring up one generation and exit.")] = False,
              audit_log: AuditLogOpt = None, audit_key_file: AuditKeyFileOpt = None) -> None:
    """Rotate the tunnel's PPK from QKD keys: make-before-break, one generation each."""
    with handle_errors():
        spec = _spec(connection, local_addr, remote_addr, local_ts, remote_ts, ike_proposal,
                     esp_proposal)
        events = open_decision_audit(audit_log, audit_key_file)
        with Charon(vici_socket) as charon, SaeClient(kme, cert, key, ca) as client:
            side = IpsecInitiator(charon, spec, client, CommandLink(responder_command),
                                  local_sae_id=sae_id, peer_sae_id=peer_sae_id,
                                  policy=parse_policy(policy),
                                  recorder=DecisionRecorder(events), events=events)
            side.install_ike_psk(_psk(ike_psk_file))
            if once:
                decision = side.rotate()
                current = side.current
                emit_json({"outcome": decision.outcome, "inputs": decision.inputs_label,
                           "generation": current.number if current else None,
                           "key_ID": current.key_id if current else None})
                if not decision.proceed:
                    raise typer.Exit(1)
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                side.run(stop, interval_s=interval_s, rotate_bytes=rotate_bytes)


def register(hybrid_app: typer.Typer) -> None:
    """Add ``corridor hybrid ipsec``."""
    hybrid_app.add_typer(ipsec_app, name="ipsec")
