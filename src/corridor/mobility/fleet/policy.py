"""The role policy: who may send which command type to which vehicles (TOML).

This module owns the policy file and its checks. Example (docs/fleet.md)::

    max_lifetime_s = 300        # a command may be valid for at most this long
    clock_skew_s = 5            # issued_at may lie this far in the future

    [roles.security-officer]
    commands = ["immobilise", "route-change", "geofence-update", "remote-diagnostics"]
    vehicles = ["*"]

    [roles.dispatcher]
    commands = ["route-change", "remote-diagnostics"]
    vehicles = ["depot:depot-north"]      # every vehicle of that depot

    [senders.alice]
    role = "security-officer"
    [senders.bob]
    role = "dispatcher"

    [vehicles.v-001]
    depot = "depot-north"

A vehicle selector is ``*`` (every vehicle), ``depot:<depot_id>`` (the vehicles of that
depot) or a vehicle ID. A sender has exactly one role. A mistake is one
:class:`~corridor.errors.ParameterError` line naming the field (``roles.dispatcher.commands``),
the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.mobility.fleet.commands import COMMAND_TYPES
from corridor.mobility.fleet.errors import UNAUTHORISED, FleetRefusal
from corridor.mobility.fleet.wire import Command, check_fleet_id
from corridor.tomlfile import read_toml

_TOP = {"max_lifetime_s", "clock_skew_s", "roles", "senders", "vehicles"}


@dataclass(frozen=True)
class Role:
    name: str
    commands: frozenset[str]
    vehicles: tuple[str, ...]


@dataclass(frozen=True)
class FleetPolicy:
    """The parsed policy (module docstring)."""

    roles: Mapping[str, Role]
    senders: Mapping[str, str]
    vehicles: Mapping[str, str]
    max_lifetime_s: float = 300.0
    clock_skew_s: float = 5.0

    def role_of(self, sender_id: str) -> str | None:
        return self.senders.get(sender_id)

    def allows(self, sender_id: str, command_type: str, vehicle_id: str) -> bool:
        role_name = self.senders.get(sender_id)
        if role_name is None or vehicle_id not in self.vehicles:
            return False
        role = self.roles[role_name]
        if command_type not in role.commands:
            return False
        depot = self.vehicles[vehicle_id]
        return any(sel == "*" or sel == vehicle_id or sel == f"depot:{depot}"
                   for sel in role.vehicles)

    def authorise(self, command: Command) -> None:
        """Nothing if the policy allows ``command``; :class:`FleetRefusal` (unauthorised)."""
        if command.vehicle_id in self.vehicles and \
                self.vehicles[command.vehicle_id] != command.depot_id:
            raise FleetRefusal(UNAUTHORISED, f"{command.label}: vehicle belongs to depot "
                               f"{self.vehicles[command.vehicle_id]}, not {command.depot_id}")
        if not self.allows(command.sender_id, command.command_type, command.vehicle_id):
            role = self.senders.get(command.sender_id, "no role")
            raise FleetRefusal(UNAUTHORISED, f"{command.label}: role {role} may not send "
                               f"{command.command_type} to this vehicle")


def _number(field: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ParameterError(field, value, f"a number of seconds from {low:g} to {high:g}")
    return float(value)


def _table(field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ParameterError(field, value, "a table")
    return value


def _unknown(field: str, data: Mapping[str, Any], known: set[str]) -> None:
    for name in data:
        if name not in known:
            raise ParameterError(f"{field}{name}" if field else name, data[name],
                                 f"not a known field; allowed: {', '.join(sorted(known))}")


def parse_policy(data: Mapping[str, Any]) -> FleetPolicy:
    """A :class:`FleetPolicy` from parsed TOML; :class:`ParameterError` on any mistake."""
    _unknown("", data, _TOP)
    roles: dict[str, Role] = {}
    for name, entry in _table("roles", data.get("roles", {})).items():
        where = f"roles.{name}"
        check_fleet_id(where, name)
        entry = _table(where, entry)
        _unknown(f"{where}.", entry, {"commands", "vehicles"})
        commands = entry.get("commands")
        if not isinstance(commands, list) or not commands:
            raise ParameterError(f"{where}.commands", commands,
                                 f"a non-empty list of {', '.join(COMMAND_TYPES)}")
        for command in commands:
            if command not in COMMAND_TYPES:
                raise ParameterError(f"{where}.commands", command,
                                     f"one of {', '.join(COMMAND_TYPES)}")
        vehicles = entry.get("vehicles")
        if not isinstance(vehicles, list) or not vehicles:
            raise ParameterError(f"{where}.vehicles", vehicles, 'a non-empty list of "*", '
                                 '"depot:<depot_id>" or vehicle IDs')
        for selector in vehicles:
            if not isinstance(selector, str):
                raise ParameterError(f"{where}.vehicles", selector, '"*", "depot:<depot_id>" '
                                     "or a vehicle ID")
            if selector != "*":
                check_fleet_id(f"{where}.vehicles", selector.removeprefix("depot:"))
        roles[name] = Role(name, frozenset(commands), tuple(vehicles))
    if not roles:
        raise ParameterError("roles", None, "at least one [roles.<name>] table")
    senders: dict[str, str] = {}
    for sender, entry in _table("senders", data.get("senders", {})).items():
        where = f"senders.{sender}"
        check_fleet_id(where, sender)
        entry = _table(where, entry)
        _unknown(f"{where}.", entry, {"role"})
        role = entry.get("role")
        if role not in roles:
            raise ParameterError(f"{where}.role", role, f"one of {', '.join(sorted(roles))}")
        senders[sender] = str(role)
    vehicles_out: dict[str, str] = {}
    for vehicle, entry in _table("vehicles", data.get("vehicles", {})).items():
        where = f"vehicles.{vehicle}"
        check_fleet_id(where, vehicle)
        entry = _table(where, entry)
        _unknown(f"{where}.", entry, {"depot"})
        depot = entry.get("depot")
        if not isinstance(depot, str):
            raise ParameterError(f"{where}.depot", depot, "a depot ID")
        vehicles_out[vehicle] = check_fleet_id(f"{where}.depot", depot)
    for role in roles.values():
        for selector in role.vehicles:
            known = selector == "*" or selector in vehicles_out or (
                selector.startswith("depot:") and selector[6:] in vehicles_out.values())
            if not known:
                raise ParameterError(f"roles.{role.name}.vehicles", selector,
                                     "a vehicle of [vehicles], depot:<a depot of [vehicles]> "
                                     'or "*"')
    return FleetPolicy(roles, senders, vehicles_out,
                       _number("max_lifetime_s", data.get("max_lifetime_s", 300.0), 1, 86_400),
                       _number("clock_skew_s", data.get("clock_skew_s", 5.0), 0, 3_600))


def load_policy(path: Path) -> FleetPolicy:
    """Read and check a policy file."""
    return parse_policy(read_toml(path, "policy"))


def example_policy(depot_id: str, vehicle_ids: list[str], *, officer: str = "alice",
                   dispatcher: str = "bob") -> str:
    """A policy file text for one depot: a security officer (every command, every
    vehicle) and a dispatcher (route changes and diagnostics, this depot's vehicles)."""
    lines = ["max_lifetime_s = 300", "clock_skew_s = 5", "",
             "[roles.security-officer]",
             'commands = ["immobilise", "route-change", "geofence-update", '
             '"remote-diagnostics"]', 'vehicles = ["*"]', "",
             "[roles.dispatcher]", 'commands = ["route-change", "remote-diagnostics"]',
             f'vehicles = ["depot:{depot_id}"]', "",
             f"[senders.{officer}]", 'role = "security-officer"', "",
             f"[senders.{dispatcher}]", 'role = "dispatcher"', ""]
    for vehicle in vehicle_ids:
        lines += [f"[vehicles.{vehicle}]", f'depot = "{depot_id}"', ""]
    return "\n".join(lines)


__all__ = ["FleetPolicy", "Role", "example_policy", "load_policy", "parse_policy"]
