"""The four fleet command types, their parameters, and how a command is built.

This module owns what a command *means*: the types (:data:`COMMAND_TYPES`), the
parameters each one takes and their checks (:func:`check_params`), what a simulated
vehicle does when it executes one (:func:`execute`), and :func:`new_command`, which numbers
and time-limits a command for one vehicle. The bytes are :mod:`.wire`'s.

=====================  ====================================================================
type                   parameters
=====================  ====================================================================
immobilise             ``mode``: ``next-stop`` (default) or ``immediate``
route-change           ``route_id`` (identifier), ``waypoints`` (``lat,lon;lat,lon;...``,
                       2 to 64 points)
geofence-update        ``polygon`` (``lat,lon;...``, 3 to 64 points), ``action``: ``alert``
                       (default), ``slow`` or ``immobilise``
remote-diagnostics     ``scope``: ``dtc`` (default), ``battery`` or ``full``
=====================  ====================================================================
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from corridor.errors import ParameterError
from corridor.mobility.fleet.wire import COMMAND_ID_BYTES, Command, check_fleet_id

IMMOBILISE = "immobilise"
ROUTE_CHANGE = "route-change"
GEOFENCE_UPDATE = "geofence-update"
REMOTE_DIAGNOSTICS = "remote-diagnostics"
COMMAND_TYPES = (IMMOBILISE, ROUTE_CHANGE, GEOFENCE_UPDATE, REMOTE_DIAGNOSTICS)

DEFAULT_LIFETIME_S = 60.0
MAX_LIFETIME_S = 86_400  # the longest a new command may stay valid, in seconds

_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    IMMOBILISE: {"mode": ("next-stop", "immediate")},
    GEOFENCE_UPDATE: {"action": ("alert", "slow", "immobilise")},
    REMOTE_DIAGNOSTICS: {"scope": ("dtc", "battery", "full")},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    IMMOBILISE: (), ROUTE_CHANGE: ("route_id", "waypoints"), GEOFENCE_UPDATE: ("polygon",),
    REMOTE_DIAGNOSTICS: (),
}
_POINTS = {"waypoints": (2, 64), "polygon": (3, 64)}


def check_command_type(value: str, field: str = "command_type") -> str:
    if value not in COMMAND_TYPES:
        raise ParameterError(field, value, f"one of {', '.join(COMMAND_TYPES)}")
    return value


def _points(field: str, value: str, low: int, high: int) -> None:
    parts = value.split(";")
    if not low <= len(parts) <= high:
        raise ParameterError(field, value, f"{low} to {high} points lat,lon;lat,lon;...")
    for part in parts:
        try:
            lat_s, lon_s = part.split(",")
            lat, lon = float(lat_s), float(lon_s)
        except ValueError:
            raise ParameterError(field, value, "points as lat,lon separated by ;") from None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ParameterError(field, part, "latitude -90..90 and longitude -180..180")


def check_params(command_type: str, params: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The parameters of a ``command_type`` command, checked, defaults filled, sorted."""
    check_command_type(command_type)
    choices = _CHOICES.get(command_type, {})
    allowed = set(_REQUIRED[command_type]) | set(choices)
    out = dict(params)
    for name, value in out.items():
        if name not in allowed:
            raise ParameterError(f"params.{name}", value,
                                 f"{command_type} takes {sorted(allowed) or 'no parameters'}")
        if not isinstance(value, str):
            raise ParameterError(f"params.{name}", value, "a string")
    for name in _REQUIRED[command_type]:
        if name not in out:
            raise ParameterError(f"params.{name}", None, f"required for {command_type}")
    for name, options in choices.items():
        out.setdefault(name, options[0])
        if out[name] not in options:
            raise ParameterError(f"params.{name}", out[name], f"one of {', '.join(options)}")
    for name, (low, high) in _POINTS.items():
        if name in out:
            _points(f"params.{name}", out[name], low, high)
    if "route_id" in out:
        check_fleet_id("params.route_id", out["route_id"])
    return tuple(sorted(out.items()))


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch (commands carry UTC times)."""
    return time.time_ns() // 1_000_000


def check_lifetime(lifetime_s: Any, field: str = "lifetime_s") -> float:
    """``lifetime_s`` if it is a command's valid lifetime: seconds, (0, 86400]."""
    if isinstance(lifetime_s, bool) or not isinstance(lifetime_s, int | float) \
            or not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise ParameterError(field, lifetime_s,
                             f"seconds, more than 0 and at most {MAX_LIFETIME_S}")
    return float(lifetime_s)


def new_command(*, sender_id: str, depot_id: str, vehicle_id: str, sequence: int,
                command_type: str, params: Mapping[str, str] | None = None,
                lifetime_s: float = DEFAULT_LIFETIME_S, issued_at_ms: int | None = None,
                command_id: bytes | None = None) -> Command:
    """A command for one vehicle, valid from now for ``lifetime_s`` seconds."""
    check_fleet_id("sender_id", sender_id)
    check_fleet_id("depot_id", depot_id)
    check_fleet_id("vehicle_id", vehicle_id)
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 1 <= sequence < 2**63:
        raise ParameterError("sequence", sequence, "an integer from 1 to 2^63-1")
    check_lifetime(lifetime_s)
    issued = now_ms() if issued_at_ms is None else issued_at_ms
    return Command(command_id=command_id or os.urandom(COMMAND_ID_BYTES), sender_id=sender_id,
                   depot_id=depot_id, vehicle_id=vehicle_id, sequence=sequence,
                   command_type=check_command_type(command_type),
                   issued_at_ms=issued, expires_at_ms=issued + round(lifetime_s * 1000),
                   params=check_params(command_type, params or {}))


class VehicleState:
    """What a simulated vehicle is doing; :func:`execute` changes it."""

    def __init__(self) -> None:
        self.immobilised: str | None = None
        self.route_id: str | None = None
        self.waypoints = 0
        self.geofence_points = 0
        self.geofence_action: str | None = None
        self.diagnostics_runs = 0

    def as_dict(self) -> dict[str, Any]:
        return {"immobilised": self.immobilised, "route_id": self.route_id,
                "waypoints": self.waypoints, "geofence_points": self.geofence_points,
                "geofence_action": self.geofence_action,
                "diagnostics_runs": self.diagnostics_runs}


def execute(state: VehicleState, command: Command) -> tuple[tuple[str, str], ...]:
    """Apply an accepted command to the simulated vehicle; the result pairs for its ack."""
    params = dict(command.params)
    if command.command_type == IMMOBILISE:
        state.immobilised = params["mode"]
        return (("immobilised", params["mode"]),)
    if command.command_type == ROUTE_CHANGE:
        state.route_id = params["route_id"]
        state.waypoints = len(params["waypoints"].split(";"))
        return (("route_id", state.route_id), ("waypoints", str(state.waypoints)))
    if command.command_type == GEOFENCE_UPDATE:
        state.geofence_points = len(params["polygon"].split(";"))
        state.geofence_action = params["action"]
        return (("action", params["action"]), ("points", str(state.geofence_points)))
    state.diagnostics_runs += 1
    report = {"dtc": (("dtc_count", "0"),),
              "battery": (("battery_soc_percent", "81"),),
              "full": (("battery_soc_percent", "81"), ("dtc_count", "0"),
                       ("odometer_km", "48213"))}
    return report[params["scope"]]


__all__ = ["COMMAND_TYPES", "DEFAULT_LIFETIME_S", "GEOFENCE_UPDATE", "IMMOBILISE",
           "MAX_LIFETIME_S", "REMOTE_DIAGNOSTICS", "ROUTE_CHANGE", "VehicleState",
           "check_command_type", "check_lifetime", "check_params", "execute", "new_command",
           "now_ms"]
