"""``corridor hybrid session``: one hybrid handshake between two SAEs of a running corridor.

Both SAEs run in this process, joined by a socket pair (the protocol's TCP framing);
each gets its QKD key from its own KME over mutual TLS with its own certificate, as
``corridor-up.json`` describes them. The command prints both sides' session records
(inputs used, policy decision, key_ID) and never a key. The decisions go to the log
(stderr) and the printed records; the audit trail of the corridor's own sessions is
``corridor up``'s (docs/hybrid-session.md).

``corridor hybrid listen`` and ``corridor hybrid connect`` run the two SAEs as two
processes (on two machines, each with its own SAE certificate), joined over TCP: the
responder serves handshakes, the initiator runs one and exits. Each prints its own
session record. Each finds its KME either in ``corridor-up.json`` (``--from-up``) or,
for SAEs of ``corridor kme serve`` sites, from ``--kme/--cert/--key/--ca`` as
``corridor sae`` does; then the listener names the initiators it accepts (``--peer``)
and their policy (``--policy``).
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from corridor.cli.common import (
    OutputFormat,
    console,
    emit_json,
    err_console,
    handle_errors,
    read_up_file,
    refuse_typed,
)
from corridor.cli.sae import (
    CaOpt,
    CertOpt,
    ExpectOpt,
    KeyOpt,
    KmeOpt,
    client_for,
    resolve_connection,
)
from corridor.errors import ParameterError
from corridor.kms.up_file import pair_policy, sae_client


def session_command(
    from_up: Annotated[Path, typer.Option(
        "--from-up", help="corridor-up.json of a running `corridor up`.")],
    initiator: Annotated[str | None, typer.Option(
        "--initiator", help="Master SAE (gets the QKD key with enc_keys); default: the "
        "first [\\[hybrid]] pair's, else the first SAE.")] = None,
    responder: Annotated[str | None, typer.Option(
        "--responder", help="Slave SAE (gets it by ID with dec_keys).")] = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", help="The policy the initiator declares: qkd-required, pqc-required, "
        "both-required or any (default: the pair's). The responder always holds to the "
        "pair's policy in corridor-up.json (else both-required) and refuses another.")
    ] = None,
    suite: Annotated[str, typer.Option(
        "--suite", help="xwing, mlkem768-x25519 or none.")] = "xwing",
    qrng: Annotated[str | None, typer.Option(
        "--qrng", help="Draw KEM seeds, ephemeral secrets and the session ID from this QRNG "
        "(an https:// entropy endpoint or a device path), health-tested and mixed with the "
        "OS CSPRNG; fails closed (docs/entropy.md). Default: the OS CSPRNG alone.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")
                      ] = OutputFormat.table,
) -> None:
    """Run one hybrid handshake (QKD key + X-Wing, CatKDF, key confirmation) between two
    SAEs of a running corridor and print both session records (never the key)."""
    with handle_errors():
        from corridor.hybrid.errors import HybridSessionError, SessionAborted
        from corridor.hybrid.policy import parse_policy
        from corridor.hybrid.qkd import KmeQkdKeys
        from corridor.hybrid.session import Initiator, Responder, SessionKey
        from corridor.hybrid.suites import parse_suite
        from corridor.hybrid.transport import SocketTransport
        from corridor.logs import configure_logging

        configure_logging("error", json=False)  # the outcome is the printed record or error line
        up = read_up_file(from_up)
        base = from_up.resolve().parent
        sessions = up.get("hybrid_sessions") or []
        saes = [s["sae_id"] for s in up.get("saes", [])]
        initiator = initiator or (sessions[0]["initiator_sae_id"] if sessions else saes[0])
        responder = responder or (sessions[0]["responder_sae_id"] if sessions
                                  else next(s for s in saes if s != initiator))
        configured = parse_policy(pair_policy(up, initiator, responder), "hybrid_sessions")
        chosen = parse_policy(policy, "--policy") if policy is not None else configured
        kem = parse_suite(suite, "--suite")
        rng = None
        if qrng is not None:
            from corridor.entropy import open_qrng_source

            rng = open_qrng_source(qrng)
        client_i = sae_client(up, base, initiator)
        client_r = sae_client(up, base, responder)
        ends = socket.socketpair()
        t_i, t_r = SocketTransport(ends[0], 30.0), SocketTransport(ends[1], 30.0)
        responder_side = Responder(responder, {initiator: configured},
                                   qkd=KmeQkdKeys(client_r), rng=rng)
        result: dict[str, SessionKey | HybridSessionError] = {}

        def respond() -> None:
            try:
                result["responder"] = responder_side.handshake(t_r)
            except HybridSessionError as exc:
                result["responder"] = exc

        thread = threading.Thread(target=respond, daemon=True)
        thread.start()
        try:
            key = Initiator(initiator, responder, chosen, qkd=KmeQkdKeys(client_i),
                            suite=kem, rng=rng).handshake(t_i)
        except SessionAborted:
            thread.join(timeout=60)
            # The responder refused: its error names why (the initiator only knows that).
            refusal = result.get("responder")
            if isinstance(refusal, HybridSessionError):
                raise refusal from None
            raise
        finally:
            thread.join(timeout=60)
            t_i.close()
            t_r.close()
            client_i.close()
            client_r.close()
        theirs = result.get("responder")
        if isinstance(theirs, HybridSessionError):
            key.wipe()
            raise theirs
        assert isinstance(theirs, SessionKey)
        records = [key.record.as_dict(), theirs.record.as_dict()]
        key.wipe()
        theirs.wipe()
    if output == OutputFormat.json:
        emit_json({"sessions": records})
        return
    for record in records:
        _print_record(record, output)


def _print_record(record: dict[str, Any], output: OutputFormat) -> None:
    if output == OutputFormat.json:  # one JSON object per line (a listener prints many)
        print(json.dumps(record, separators=(",", ":")), flush=True)
        return
    missing = ", ".join(record["missing"]) or "none"
    side = record["initiator_sae_id" if record["role"] == "initiator" else "responder_sae_id"]
    console.print(
        f"{record['role']} {side}: {record['outcome']} (policy {record['policy']}, inputs "
        f"{'+'.join(record['inputs'])}, missing: {missing}), key_ID "
        f"{record['key_id'] or '-'}, suite {record['suite']}, session "
        f"{record['session_id']} generation {record['generation']}",
        highlight=False, markup=False, soft_wrap=True)


def _address(value: str, name: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParameterError(name, value, "HOST:PORT with a port from 1 to 65535")
    return host.strip("[]"), int(port)


FromUpOpt = Annotated[Path | None, typer.Option(
    "--from-up", help="corridor-up.json of the corridor this SAE belongs to (else "
    "--kme/--cert/--key/--ca).")]


def _own_client(from_up: Path | None, sae: str, kme: str | None, cert: Path | None,
                key: Path | None, ca: Path | None, expect_kme: str | None
                ) -> tuple[Any, dict[str, Any] | None]:
    """This SAE's ETSI 014 client, and corridor-up.json when it came from one. With the
    explicit options, the certificate must be ``sae``'s: the handshake names ``sae`` and
    the KME knows the caller by its certificate."""
    from corridor.kms.config import check_id
    from corridor.kms.pki import ROLE_SAE, CertificateIdentityError, identity_from_pem

    check_id("--sae", sae)
    if from_up is not None:
        refuse_typed([("kme", "--kme", kme), ("cert", "--cert", cert), ("key", "--key", key),
                      ("ca", "--ca", ca), ("expect_kme", "--expect-kme", expect_kme)],
                     "only without --from-up (corridor-up.json names this SAE's KME and "
                     "files)")
        up = read_up_file(from_up)
        return sae_client(up, from_up.resolve().parent, sae, "--sae"), up
    connection = resolve_connection(kme, cert, key, ca, expect_kme, None, None)
    try:
        identity = identity_from_pem(connection.cert.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, CertificateIdentityError) as exc:
        raise ParameterError("--cert", str(connection.cert),
                             "a readable SAE certificate of `corridor pki`",
                             str(exc) if isinstance(exc, CertificateIdentityError)
                             else type(exc).__name__) from None
    if identity.role != ROLE_SAE or identity.entity_id != sae:
        raise ParameterError("--sae", sae, f"the SAE --cert names ({identity.role} "
                             f"{identity.entity_id!r})")
    return client_for(connection), None


def listen_command(
    sae: Annotated[str, typer.Option(
        "--sae", help="This (responder) SAE: it fetches the QKD key by ID (dec_keys).")],
    from_up: FromUpOpt = None,
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    expect_kme: ExpectOpt = None,
    peers: Annotated[list[str] | None, typer.Option(
        "--peer", help="An initiator SAE to accept (repeat for several); required "
        "without --from-up, whose SAEs it accepts otherwise.")] = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", help="Without --from-up: the policy the --peer SAEs must declare "
        "(qkd-required, pqc-required, both-required or any; default both-required).")
    ] = None,
    listen: Annotated[str, typer.Option(
        "--listen", help="HOST:PORT to accept initiators on (TCP).")] = "127.0.0.1:7444",
    count: Annotated[int, typer.Option(
        "--count", min=0, help="Handshakes to answer, established or refused, then exit "
        "(0: until stopped); exit 1 if one was refused.")] = 1,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")
                      ] = OutputFormat.table,
) -> None:
    """Serve hybrid handshakes as the responder SAE in its own process: each initiator
    that connects gets one handshake under the pair's policy (corridor-up.json's
    ``hybrid_sessions``, else both-required; without --from-up, --policy for the --peer
    SAEs); prints one session record per handshake, never a key."""
    with handle_errors():
        from corridor.hybrid.errors import HybridSessionError
        from corridor.hybrid.policy import parse_policy
        from corridor.hybrid.qkd import KmeQkdKeys
        from corridor.hybrid.session import Responder
        from corridor.hybrid.transport import SocketTransport
        from corridor.kms.config import check_id
        from corridor.logs import configure_logging

        configure_logging("warning", json=False)
        if from_up is not None:
            refuse_typed([("peers", "--peer", peers), ("policy", "--policy", policy)],
                         "only without --from-up (corridor-up.json's SAEs and "
                         "hybrid_sessions say whom to accept and under which policy)")
        elif not peers:
            raise ParameterError("--peer", None, "at least one initiator SAE to accept "
                                 "(required without --from-up)")
        else:
            for peer in peers:
                check_id("--peer", peer)
                if peer == sae:
                    raise ParameterError("--peer", peer, "another SAE than --sae")
            pair = parse_policy(policy if policy is not None else "both-required",
                                "--policy")
        host, port = _address(listen, "--listen")
        client, up = _own_client(from_up, sae, kme, cert, key, ca, expect_kme)
        if up is not None:
            accepted = [s["sae_id"] for s in up.get("saes", []) if s["sae_id"] != sae]
            policies = {peer: pair_policy(up, peer, sae) for peer in accepted}
        else:
            policies = dict.fromkeys(peers or [], pair)
        responder = Responder(sae, policies, qkd=KmeQkdKeys(client))
        try:
            server = socket.create_server((host, port))
        except OSError as exc:
            raise ParameterError("--listen", listen,
                                 f"a free local address ({exc.strerror or exc})") from None
        answered = refused = 0
        try:
            with server:
                err_console.print(f"listening on {host}:{server.getsockname()[1]} as {sae}",
                                  highlight=False)
                while count == 0 or answered < count:
                    conn, _ = server.accept()
                    answered += 1  # a refused one counts too: --count 2 never hangs
                    transport = SocketTransport(conn, 30.0)
                    try:
                        session_key = responder.handshake(transport)
                    except HybridSessionError as exc:
                        err_console.print(f"handshake refused: {exc}", highlight=False,
                                          markup=False)
                        refused += 1
                        continue
                    finally:
                        transport.close()
                    _print_record(session_key.record.as_dict(), output)
                    session_key.wipe()
        except KeyboardInterrupt:
            pass
        finally:
            client.close()
    if refused:
        raise typer.Exit(1)


def connect_command(
    initiator: Annotated[str, typer.Option(
        "--sae", help="This (initiator) SAE: it gets the QKD key (enc_keys).")],
    responder: Annotated[str, typer.Option(
        "--peer", help="The responder SAE listening at --connect.")],
    from_up: FromUpOpt = None,
    kme: KmeOpt = None, cert: CertOpt = None, key: KeyOpt = None, ca: CaOpt = None,
    expect_kme: ExpectOpt = None,
    connect: Annotated[str, typer.Option(
        "--connect", help="HOST:PORT of `corridor hybrid listen`.")] = "127.0.0.1:7444",
    policy: Annotated[str | None, typer.Option(
        "--policy", help="The policy to declare (default: the pair's in --from-up, else "
        "both-required).")] = None,
    suite: Annotated[str, typer.Option(
        "--suite", help="xwing, mlkem768-x25519 or none.")] = "xwing",
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")
                      ] = OutputFormat.table,
) -> None:
    """Run one hybrid handshake as the initiator SAE against a responder in another
    process (`corridor hybrid listen`), over TCP; prints this side's session record,
    never the key."""
    with handle_errors():
        if responder == initiator:
            raise ParameterError("--peer", responder, "another SAE than --sae")
        from corridor.hybrid.policy import parse_policy
        from corridor.hybrid.qkd import KmeQkdKeys
        from corridor.hybrid.session import Initiator
        from corridor.hybrid.suites import parse_suite
        from corridor.hybrid.transport import SocketTransport
        from corridor.kms.config import check_id
        from corridor.logs import configure_logging

        configure_logging("error", json=False)  # the outcome is the printed record or error line
        check_id("--peer", responder)
        host, port = _address(connect, "--connect")
        kem = parse_suite(suite, "--suite")
        if policy is not None:
            parse_policy(policy, "--policy")
        client, up = _own_client(from_up, initiator, kme, cert, key, ca, expect_kme)
        try:
            if up is not None and not any(s.get("sae_id") == responder
                                          for s in up.get("saes", [])):
                raise ParameterError("--peer", responder, "one of "
                                     f"{[s.get('sae_id') for s in up.get('saes', [])]} "
                                     "(corridor-up.json: saes)")
            chosen = parse_policy(policy if policy is not None else
                                  pair_policy(up, initiator, responder) if up is not None
                                  else "both-required", "--policy")
            transport = SocketTransport.connect(host, port, timeout_s=30.0)
            try:
                session_key = Initiator(initiator, responder, chosen,
                                        qkd=KmeQkdKeys(client), suite=kem
                                        ).handshake(transport)
            finally:
                transport.close()
        finally:
            client.close()
        record = session_key.record.as_dict()
        session_key.wipe()
    _print_record(record, output)


def register(hybrid_app: typer.Typer) -> None:
    """Add ``corridor hybrid session``, ``listen`` and ``connect``."""
    hybrid_app.command("session")(session_command)
    hybrid_app.command("listen")(listen_command)
    hybrid_app.command("connect")(connect_command)


__all__ = ["connect_command", "listen_command", "register", "session_command"]
