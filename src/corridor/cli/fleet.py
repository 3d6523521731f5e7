"""``corridor fleet``: signed, encrypted fleet commands over MQTT (docs/fleet.md).

This module owns the ``fleet`` command group:

- ``fleet init``: identities (senders, vehicles), ``public.json``, a role policy;
- ``fleet depot``: run a depot gateway (the slave SAE of a corridor) until Ctrl-C;
- ``fleet vehicle ID``: run a simulated vehicle until Ctrl-C, printing each decision;
- ``fleet send VEHICLE TYPE``: one command from a back end (the master SAE), printing
  its acknowledgement;
- ``fleet watch``: print every acknowledgement the depot forwards to the back end SAE;
- ``fleet demo``: back end, depot and vehicles in this process, with the attacks the
  enclave refuses, and what happened.

The QKD leg comes from a running corridor (``--from-up corridor-up.json``: its first
hybrid pair's SAEs are back end and depot, as for ``corridor hybrid session``); without
one, ``fleet demo`` runs the back end-depot session under ``pqc-required`` (X-Wing alone)
and says so. The work lives in :mod:`corridor.mobility.fleet`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from corridor.cli.common import (
    OutputFormat,
    console,
    emit_json,
    handle_errors,
    read_up_file,
    typed_on_command_line,
)
from corridor.errors import ParameterError

fleet_app = typer.Typer(
    name="fleet",
    help="Fleet command enclave: signed, encrypted commands to vehicles over MQTT.",
    no_args_is_help=True,
)

DirOpt = Annotated[Path, typer.Option("--dir", help="The fleet directory (corridor fleet "
                                      "init): keys, public.json, policy.toml.")]
BrokerOpt = Annotated[str, typer.Option("--broker", help="MQTT broker HOST:PORT.")]
FromUpOpt = Annotated[Path | None, typer.Option(
    "--from-up", help="corridor-up.json of a running `corridor up`: its SAEs key the back "
    "end-depot leg with QKD.")]
DEFAULT_BROKER = "127.0.0.1:1883"
MAX_TIMEOUT_S = 3600.0  # fleet send waits at most an hour for the depot


def _broker(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParameterError("--broker", value, "HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


def _params(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ParameterError("--param", item, "NAME=VALUE, e.g. mode=immediate")
        out[name] = value
    return out


def _depot_of(policy: Any, given: str | None) -> str:
    depots = sorted(set(policy.vehicles.values()))
    if given is not None:
        if given not in depots:
            raise ParameterError("--depot", given, f"a depot of policy.toml: {depots}")
        return given
    if len(depots) != 1:
        raise ParameterError("--depot", None, f"one of {depots} (the policy names several)")
    return depots[0]


_SAE_OPTIONS = ("--sae", "--depot-sae")  # the back end's and the depot's SAE, as typed


def _saes(up: dict[str, Any], backend: str | None, depot: str | None,
          options: tuple[str, str] = _SAE_OPTIONS) -> tuple[str, str, str]:
    from corridor.kms.up_file import pair_policy

    sessions = up.get("hybrid_sessions") or []
    saes = [s["sae_id"] for s in up.get("saes", [])]
    if not saes:
        raise ParameterError("--from-up", "saes", "a corridor-up.json with SAEs")
    for option, given in zip(options, (backend, depot), strict=True):
        if given is not None and given not in saes:
            raise ParameterError(option, given, f"an SAE of the corridor: {sorted(saes)}")
    backend = backend or (sessions[0]["initiator_sae_id"] if sessions else saes[0])
    depot = depot or (sessions[0]["responder_sae_id"] if sessions
                      else next((s for s in saes if s != backend), backend))
    return backend, depot, pair_policy(up, backend, depot)


def _check_saes(backend_sae: str | None, depot_sae: str | None,
                options: tuple[str, str] = _SAE_OPTIONS) -> None:
    """The back end's and the depot's SAE IDs, when given, are usable IDs."""
    from corridor.kms.config import check_id

    for option, given in zip(options, (backend_sae, depot_sae), strict=True):
        if given is not None:
            check_id(option, given)


def _qkd(up_path: Path | None, sae_id: str) -> Any:
    if up_path is None:
        return None
    from corridor.hybrid.qkd import KmeQkdKeys
    from corridor.kms.up_file import sae_client

    up = read_up_file(up_path)
    return KmeQkdKeys(sae_client(up, up_path.resolve().parent, sae_id))


class _Parts:
    """What a command opened, closed in reverse order on exit."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()

    def link(self, name: str, broker: tuple[str, int], client_id: str | None = None, *,
             start: bool = True) -> Any:
        from corridor.mobility.fleet.transport import MqttLink

        link = MqttLink(client_id or f"corridor-{name}-{os.urandom(3).hex()}", *broker,
                        persistent=client_id is not None)
        self.stack.callback(link.close)
        return link.start() if start else link

    def audit(self, fleet_dir: Path, party: str) -> Any:
        from corridor.kms.audit import AuditLog
        from corridor.mobility.fleet.keys import load_audit_key

        log = AuditLog(fleet_dir / "audit" / f"{party}.jsonl", load_audit_key(fleet_dir))
        self.stack.callback(log.close)
        return log


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def _print(text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


@fleet_app.command("init")
def init_command(
    directory: DirOpt,
    depot: Annotated[str, typer.Option("--depot", help="The depot's fleet ID.")],
    vehicle: Annotated[list[str], typer.Option("--vehicle", help="A vehicle ID (repeat).")],
    officer: Annotated[str, typer.Option(
        "--officer", help="Sender with the security-officer role (every command).")] = "alice",
    dispatcher: Annotated[str, typer.Option(
        "--dispatcher", help="Sender with the dispatcher role (route changes and "
        "diagnostics, this depot's vehicles).")] = "bob",
) -> None:
    """Create a fleet directory: keys of senders and vehicles, public.json, policy.toml."""
    with handle_errors():
        from corridor.mobility.fleet.keys import init_fleet_dir
        from corridor.mobility.fleet.policy import example_policy
        from corridor.mobility.fleet.wire import check_fleet_id

        if len(set(vehicle)) != len(vehicle):
            raise ParameterError("--vehicle", vehicle, "distinct vehicle IDs")
        if officer == dispatcher:
            raise ParameterError("--dispatcher", dispatcher, "a sender other than --officer")
        check_fleet_id("--depot", depot)
        if depot in vehicle:
            raise ParameterError("--vehicle", depot, "an ID other than --depot's")
        for option, name in (("--officer", officer), ("--dispatcher", dispatcher)):
            if name == depot or name in vehicle:
                raise ParameterError(option, name, "an ID other than the depot's and the "
                                     "vehicles'")
        init_fleet_dir(directory, senders=[officer, dispatcher], vehicles=vehicle,
                       policy_text=example_policy(depot, vehicle, officer=officer,
                                                  dispatcher=dispatcher))
    _print(f"fleet in {directory}: senders {officer} (security-officer), {dispatcher} "
           f"(dispatcher); vehicles {', '.join(vehicle)} at {depot}; edit "
           f"{directory / 'policy.toml'} to change who may send what")


@fleet_app.command("depot")
def depot_command(
    directory: DirOpt,
    from_up: FromUpOpt = None,
    depot: Annotated[str | None, typer.Option("--depot", help="Depot ID (default: the "
                                              "policy's only depot).")] = None,
    depot_sae: Annotated[str | None, typer.Option("--sae", help="The depot's SAE "
                                                  "(default: the first hybrid pair's slave).")
                         ] = None,
    backend_sae: Annotated[str | None, typer.Option(
        "--backend-sae", help="The back end's SAE (default: the pair's master).")] = None,
    broker: BrokerOpt = DEFAULT_BROKER,
) -> None:
    """Run a depot gateway until Ctrl-C: hybrid sessions with the back end, commands on to
    vehicles (one ML-KEM-768 encapsulation each), acknowledgements back."""
    with handle_errors():
        from corridor.mobility.fleet.depot import DepotGateway
        from corridor.mobility.fleet.keys import POLICY_FILE, load_directory
        from corridor.mobility.fleet.policy import load_policy
        from corridor.mobility.fleet.transport import depot_client_id

        address = _broker(broker)
        policy = load_policy(directory / POLICY_FILE)
        depot_id = _depot_of(policy, depot)
        _check_saes(backend_sae, depot_sae, ("--backend-sae", "--sae"))
        if from_up is not None:
            backend, sae, hybrid_policy = _saes(read_up_file(from_up), backend_sae, depot_sae,
                                                ("--backend-sae", "--sae"))
        else:
            backend, sae = backend_sae or "backend", depot_sae or "depot"
            hybrid_policy = "pqc-required"
        parts = _Parts()
        with parts.stack:
            gateway = DepotGateway(depot_id, sae, {backend: hybrid_policy}, _qkd(from_up, sae),
                                   load_directory(directory), policy,
                                   parts.link(depot_id, address, depot_client_id(depot_id)),
                                   events=parts.audit(directory, depot_id),
                                   state_path=directory / "state" / f"{depot_id}.json")
            parts.stack.callback(gateway.close)
            gateway.start()
            _print(f"depot {depot_id} (SAE {sae}, sessions from {backend} under "
                   f"{hybrid_policy}) on {broker}; Ctrl-C stops")
            _wait_for_signal()
            _print(f"depot {depot_id}: {gateway.status()}")


@fleet_app.command("vehicle")
def vehicle_command(
    vehicle_id: Annotated[str, typer.Argument(help="The vehicle's ID.")],
    directory: DirOpt,
    depot: Annotated[str | None, typer.Option("--depot", help="Its depot (default: the "
                                              "policy's).")] = None,
    broker: BrokerOpt = DEFAULT_BROKER,
) -> None:
    """Run a simulated vehicle until Ctrl-C; print each command's outcome."""
    with handle_errors():
        from corridor.mobility.fleet.keys import POLICY_FILE, load_directory, load_vehicle
        from corridor.mobility.fleet.policy import load_policy
        from corridor.mobility.fleet.transport import vehicle_client_id
        from corridor.mobility.fleet.vehicle import SimulatedVehicle

        address = _broker(broker)
        policy = load_policy(directory / POLICY_FILE)
        depot_id = depot or policy.vehicles.get(vehicle_id)
        if depot_id is None:
            raise ParameterError("vehicle_id", vehicle_id, "a vehicle of policy.toml")
        identity = load_vehicle(directory, vehicle_id)
        parts = _Parts()
        with parts.stack:
            link = parts.link(vehicle_id, address, vehicle_client_id(depot_id, vehicle_id),
                              start=False)
            vehicle = SimulatedVehicle(identity, depot_id, load_directory(directory), policy,
                                       link, events=parts.audit(directory, vehicle_id),
                                       state_path=directory / "state" / f"{vehicle_id}.json")
            vehicle.on_event = lambda event: _print(
                f"{vehicle_id}: {event['outcome']} " + " ".join(
                    f"{k}={v}" for k, v in event.items() if k != "outcome" and v is not None))
            vehicle.start()  # handler first: queued commands arrive as soon as it connects
            link.start()
            _print(f"vehicle {vehicle_id} of {depot_id} on {broker}; Ctrl-C stops")
            _wait_for_signal()
            _print(f"vehicle {vehicle_id}: {vehicle.state.as_dict()}")


def _backend(parts: _Parts, directory: Path, from_up: Path | None, depot_id: str,
             broker: tuple[str, int], backend_sae: str | None, depot_sae: str | None,
             handshake_timeout_s: float = 30.0) -> Any:
    from corridor.hybrid.errors import TransportError
    from corridor.mobility.fleet.backend import FleetBackend, SequenceStore
    from corridor.mobility.fleet.errors import FleetError
    from corridor.mobility.fleet.keys import load_directory

    _check_saes(backend_sae, depot_sae)
    if from_up is not None:
        backend, depot, hybrid_policy = _saes(read_up_file(from_up), backend_sae, depot_sae)
    else:
        backend, depot = backend_sae or "backend", depot_sae or "depot"
        hybrid_policy = "pqc-required"
    session = FleetBackend(backend, depot, depot_id, _qkd(from_up, backend),
                           load_directory(directory), parts.link("backend", broker),
                           hybrid_policy=hybrid_policy,
                           sequences=SequenceStore(directory / "sequences.json"),
                           handshake_timeout_s=handshake_timeout_s)
    parts.stack.callback(session.close)
    try:
        session.start()
    except TransportError as exc:
        if exc.reason != "transport_timeout":  # the depot never answered
            raise
        host, port = broker
        raise FleetError(f"depot {depot_id} sent no hybrid handshake message within "
                         f"{handshake_timeout_s:g} s on broker {host}:{port}: is `corridor "
                         f"fleet depot --dir {directory}` running there?") from None
    return session


def _ack_line(ack: Any) -> str:
    result = " ".join(f"{k}={v}" for k, v in sorted(ack.result.items()))
    who = f"vehicle {ack.vehicle_id}" if ack.source == "vehicle" else "depot"
    return (f"{ack.command_id}: {ack.status} by {who}"
            + (f" ({ack.reason})" if ack.reason else "") + (f": {result}" if result else ""))


@fleet_app.command("send")
def send_command(
    vehicle_id: Annotated[str, typer.Argument(help="The vehicle.")],
    command_type: Annotated[str, typer.Argument(
        help="immobilise, route-change, geofence-update or remote-diagnostics.")],
    sender: Annotated[str, typer.Option("--sender", help="Who signs (a sender of the "
                                        "fleet directory).")],
    directory: DirOpt,
    from_up: FromUpOpt = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="NAME=VALUE (repeat): mode=immediate, route_id=R, "
        "waypoints='52.1,4.3;52.2,4.4', polygon=..., action=slow, scope=full.")] = None,
    lifetime_s: Annotated[float, typer.Option("--lifetime-s", help="Valid for this long.")
                          ] = 60.0,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Wait this long for each "
                                             "handshake message from the depot, then for "
                                             "the acknowledgement.")] = 10.0,
    backend_sae: Annotated[str | None, typer.Option("--sae", help="The back end's SAE.")
                           ] = None,
    depot_sae: Annotated[str | None, typer.Option("--depot-sae", help="The depot's SAE.")
                         ] = None,
    broker: BrokerOpt = DEFAULT_BROKER,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")
                      ] = OutputFormat.table,
) -> None:
    """Send one command (hybrid session with the depot, sign, seal, publish) and print its
    acknowledgement. Without --from-up the depot must run without one too."""
    with handle_errors():
        from corridor.mobility.fleet.commands import (
            check_command_type,
            check_lifetime,
            check_params,
        )
        from corridor.mobility.fleet.keys import POLICY_FILE, load_sender
        from corridor.mobility.fleet.policy import load_policy

        check_command_type(command_type, "command_type")
        params = _params(param)
        try:
            check_params(command_type, params)
        except ParameterError as exc:  # "params.mode" is what --param mode=... set
            name = exc.field.removeprefix("params.")
            raise ParameterError(f"--param {name}" if name != exc.field else "--param",
                                 exc.value, exc.allowed, exc.hint) from None
        check_lifetime(lifetime_s, "--lifetime-s")
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise ParameterError("--timeout-s", timeout_s,
                                 f"seconds, more than 0 and at most {MAX_TIMEOUT_S:g}")
        address = _broker(broker)
        policy = load_policy(directory / POLICY_FILE)
        depot_id = policy.vehicles.get(vehicle_id)
        if depot_id is None:
            raise ParameterError("vehicle_id", vehicle_id,
                                 f"a vehicle of policy.toml: {sorted(policy.vehicles)}")
        signer = load_sender(directory, sender)
        parts = _Parts()
        with parts.stack:
            session = _backend(parts, directory, from_up, depot_id, address, backend_sae,
                               depot_sae, handshake_timeout_s=timeout_s)
            command = session.send(signer, vehicle_id, command_type, params,
                                   lifetime_s=lifetime_s)
            ack = session.wait_ack(command.command_id, timeout_s)
            record = session.records[-1].as_dict()
    if output == OutputFormat.json:
        emit_json({"command_id": command.command_id.hex(), "sequence": command.sequence,
                   "session": record, "ack": ack.as_dict()})
    else:
        _print(f"session {record['session_id']}: inputs {'+'.join(record['inputs'])}, key_ID "
               f"{record['key_id'] or '-'} (policy {record['policy']})")
        _print(f"sent {command.label}")
        _print(_ack_line(ack))
    if ack.status != "executed":
        raise typer.Exit(1)


@fleet_app.command("watch")
def watch_command(
    directory: DirOpt,
    from_up: FromUpOpt = None,
    depot: Annotated[str | None, typer.Option("--depot", help="Depot ID.")] = None,
    count: Annotated[int, typer.Option("--count", help="Stop after this many (0: until "
                                       "Ctrl-C).")] = 0,
    backend_sae: Annotated[str | None, typer.Option("--sae", help="The back end's SAE.")
                           ] = None,
    depot_sae: Annotated[str | None, typer.Option("--depot-sae", help="The depot's SAE.")
                         ] = None,
    broker: BrokerOpt = DEFAULT_BROKER,
) -> None:
    """Print every acknowledgement the depot forwards to this back end SAE (its own hybrid
    session; vehicle signatures checked here)."""
    with handle_errors():
        from corridor.mobility.fleet.keys import POLICY_FILE
        from corridor.mobility.fleet.policy import load_policy

        address = _broker(broker)
        depot_id = _depot_of(load_policy(directory / POLICY_FILE), depot)
        parts = _Parts()
        with parts.stack:
            session = _backend(parts, directory, from_up, depot_id, address, backend_sae,
                               depot_sae)
            _print(f"watching acknowledgements from {depot_id} (channel {session.channel}); "
                   "Ctrl-C stops")
            seen = 0
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.is_set() and (count == 0 or seen < count):
                with contextlib.suppress(Exception):
                    _print(_ack_line(session.acks.get(timeout=0.5)))
                    seen += 1


def _check_vehicle_count(directory: Path, vehicles: int) -> None:
    """``--vehicles`` sizes a new fleet: refused beside a fleet of another size in
    ``directory`` (the demo would run that fleet's vehicles, not the number typed)."""
    from corridor.mobility.fleet.keys import POLICY_FILE, PUBLIC_FILE
    from corridor.mobility.fleet.policy import load_policy

    if not (directory / PUBLIC_FILE).exists():
        return
    existing = len(load_policy(directory / POLICY_FILE).vehicles)
    if existing != vehicles:
        raise ParameterError(
            "--vehicles", vehicles,
            f"{existing}, the vehicles of the fleet already in {directory} (--vehicles "
            "sizes a new fleet; give another --dir for a new one)")


def _demo(directory: Path, from_up: Path | None, broker: tuple[str, int],
          vehicle_count: int) -> dict[str, Any]:
    """Back end, depot and vehicles in this process; normal commands, then attacks."""
    from corridor.mobility.fleet.commands import new_command, now_ms
    from corridor.mobility.fleet.depot import DepotGateway
    from corridor.mobility.fleet.enclave import ensure_fleet_dir
    from corridor.mobility.fleet.keys import (
        POLICY_FILE,
        load_directory,
        load_sender,
        load_vehicle,
    )
    from corridor.mobility.fleet.policy import load_policy
    from corridor.mobility.fleet.transport import vehicle_command_topic
    from corridor.mobility.fleet.vehicle import SimulatedVehicle

    depot_id = f"depot-demo-{os.urandom(2).hex()}"
    ensure_fleet_dir(directory, depot_id, vehicle_count)
    policy = load_policy(directory / POLICY_FILE)
    depot_id = _depot_of(policy, None)
    fleet = load_directory(directory)
    events: list[dict[str, Any]] = []
    parts = _Parts()
    with parts.stack:
        up = read_up_file(from_up) if from_up is not None else None
        backend_sae, depot_sae, hybrid_policy = _saes(up, None, None) if up else (
            "backend", "depot", "pqc-required")
        gateway = DepotGateway(depot_id, depot_sae, {backend_sae: hybrid_policy},
                               _qkd(from_up, depot_sae), fleet, policy,
                               parts.link(depot_id, broker),
                               events=parts.audit(directory, depot_id))
        parts.stack.callback(gateway.close)
        gateway.start()
        vehicles = {}
        for vehicle_id in sorted(v for v, d in policy.vehicles.items() if d == depot_id):
            vehicle = SimulatedVehicle(load_vehicle(directory, vehicle_id), depot_id, fleet,
                                       policy, parts.link(vehicle_id, broker),
                                       events=parts.audit(directory, vehicle_id))
            vehicle.start()
            vehicles[vehicle_id] = vehicle
        session = _backend(parts, directory, from_up, depot_id, broker, backend_sae, depot_sae)
        attacker = parts.link("attacker", broker)
        captured: list[bytes] = []
        first = sorted(vehicles)[0]
        attacker.subscribe(vehicle_command_topic(depot_id, first),
                           lambda topic, payload: captured.append(payload))
        alice, bob = (load_sender(directory, name) for name in sorted(fleet.senders)[:2])
        officer = alice if policy.role_of(alice.sender_id) == "security-officer" else bob
        dispatcher = bob if officer is alice else alice
        last = sorted(vehicles)[-1]
        script = [
            ("dispatcher: remote diagnostics", dispatcher, first, "remote-diagnostics",
             {"scope": "full"}),
            ("dispatcher: route change", dispatcher, last, "route-change",
             {"route_id": "r-7", "waypoints": "52.370,4.890;52.380,4.910"}),
            ("dispatcher: immobilise (not its role)", dispatcher, first, "immobilise", {}),
            ("security officer: immobilise", officer, first, "immobilise",
             {"mode": "next-stop"}),
        ]
        for label, sender, vehicle_id, command_type, params in script:
            started = time.perf_counter()
            command = session.send(sender, vehicle_id, command_type, params)
            ack = session.wait_ack(command.command_id)
            events.append({"step": label, "sequence": command.sequence,
                           "vehicle_id": vehicle_id, "outcome": ack.status,
                           "by": ack.source, "reason": ack.reason or None,
                           "round_trip_ms": round((time.perf_counter() - started) * 1000, 1)})
        # Attacks, as an attacker with access to the broker (or a stale queue) would try.
        old = len(vehicles[first].guard.refused)
        attacker.publish(vehicle_command_topic(depot_id, first), captured[0])
        flipped = bytearray(captured[-1])
        flipped[-4] ^= 1
        attacker.publish(vehicle_command_topic(depot_id, first), bytes(flipped))
        expired = new_command(sender_id=officer.sender_id, depot_id=depot_id,
                              vehicle_id=first, sequence=session.sequences.next(
                                  officer.sender_id, first),
                              command_type="immobilise", lifetime_s=30,
                              issued_at_ms=now_ms() - 60_000)
        session.publish(session.seal_signed(session.sign(officer, expired)))
        ack = session.wait_ack(expired.command_id)
        events.append({"step": "expired command", "outcome": ack.status, "by": ack.source,
                       "reason": ack.reason})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and \
                sum(vehicles[first].guard.refused.values()) < old + 2:
            time.sleep(0.05)
        refused = dict(vehicles[first].guard.refused)
        events.append({"step": "replay of a captured command to the vehicle",
                       "outcome": "refused" if refused.get("replayed") else "NOT refused",
                       "by": "vehicle", "reason": "replayed"})
        events.append({"step": "tampered command to the vehicle",
                       "outcome": "refused" if refused.get("tampered") else "NOT refused",
                       "by": "vehicle", "reason": "tampered"})
        record = session.records[-1].as_dict()
        return {"fleet_dir": str(directory), "depot_id": depot_id,
                "broker": f"{broker[0]}:{broker[1]}",
                "session": {k: record[k] for k in ("initiator_sae_id", "responder_sae_id",
                                                   "policy", "inputs", "missing", "key_id")},
                "steps": events, "depot": gateway.status(),
                "vehicles": {v: {k: x for k, x in vehicle.status().items() if k != "recent"}
                             for v, vehicle in vehicles.items()}}


@fleet_app.command("demo")
def demo_command(
    from_up: FromUpOpt = None,
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Fleet directory (default: a new temporary one).")] = None,
    vehicles: Annotated[int, typer.Option("--vehicles", help="Vehicles in a new fleet.")
                        ] = 3,
    broker: BrokerOpt = DEFAULT_BROKER,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")
                      ] = OutputFormat.table,
) -> None:
    """Back end, depot and vehicles on the broker in this process: commands, a refusal by
    role, then a replayed, a tampered and an expired command; prints what happened."""
    with handle_errors():
        if not 1 <= vehicles <= 50:
            raise ParameterError("--vehicles", vehicles, "1 to 50")
        if directory is not None and typed_on_command_line("vehicles"):
            _check_vehicle_count(directory, vehicles)
        address = _broker(broker)
        with tempfile.TemporaryDirectory(prefix="corridor-fleet-") as scratch:
            report = _demo(directory or Path(scratch) / "fleet", from_up, address, vehicles)
    if output == OutputFormat.json:
        emit_json(report)
        return
    session = report["session"]
    qkd_note = "" if from_up else " (no --from-up: no QKD input, X-Wing alone)"
    _print(f"back end {session['initiator_sae_id']} -> depot {report['depot_id']} (SAE "
           f"{session['responder_sae_id']}) on {report['broker']}: policy {session['policy']},"
           f" inputs {'+'.join(session['inputs'])}, key_ID {session['key_id'] or '-'}"
           f"{qkd_note}")
    for step in report["steps"]:
        extra = f" ({step['reason']})" if step.get("reason") else ""
        timing = f", {step['round_trip_ms']} ms" if "round_trip_ms" in step else ""
        _print(f"  {step['step']}: {step['outcome']} by {step['by']}{extra}{timing}")
    depot = report["depot"]
    _print(f"depot: {depot['forwarded']} forwarded, refused {depot['refused']}")
    for vehicle_id, status in report["vehicles"].items():
        _print(f"{vehicle_id}: accepted {status['accepted']}, refused {status['refused']}, "
               f"immobilised {status['state']['immobilised']}, route "
               f"{status['state']['route_id']}")


def register(app: typer.Typer) -> None:
    """Add the ``fleet`` group to the ``corridor`` application."""
    app.add_typer(fleet_app)


__all__ = ["fleet_app", "register"]
