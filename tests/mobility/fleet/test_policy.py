"""The role policy file: who may send what to whom, and one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from corridor.errors import ParameterError
from corridor.mobility.fleet.commands import new_command
from corridor.mobility.fleet.errors import FleetRefusal
from corridor.mobility.fleet.policy import example_policy, load_policy, parse_policy

TEXT = example_policy("depot-n", ["v-001", "v-002"]) + """
[vehicles.v-900]
depot = "depot-s"
"""


def test_example_policy_roles() -> None:
    policy = parse_policy(tomllib.loads(TEXT))
    assert policy.allows("alice", "immobilise", "v-900")
    assert policy.allows("bob", "route-change", "v-001")
    assert not policy.allows("bob", "route-change", "v-900")  # another depot
    assert not policy.allows("bob", "immobilise", "v-001")
    assert not policy.allows("mallory", "remote-diagnostics", "v-001")
    assert not policy.allows("alice", "immobilise", "v-unknown")
    command = new_command(sender_id="bob", depot_id="depot-n", vehicle_id="v-001",
                          sequence=1, command_type="immobilise")
    with pytest.raises(FleetRefusal, match="role dispatcher may not send immobilise"):
        policy.authorise(command)
    moved = new_command(sender_id="alice", depot_id="depot-n", vehicle_id="v-900",
                        sequence=1, command_type="immobilise")
    with pytest.raises(FleetRefusal, match="belongs to depot depot-s"):
        policy.authorise(moved)


@pytest.mark.parametrize(("change", "message"), [
    (('commands = ["route-change", "remote-diagnostics"]', 'commands = ["reboot"]'),
     r"roles.dispatcher.commands = 'reboot': one of immobilise, route-change"),
    (('role = "dispatcher"', 'role = "janitor"'),
     r"senders.bob.role = 'janitor': one of dispatcher, security-officer"),
    (('vehicles = ["depot:depot-n"]', 'vehicles = ["depot:depot-x"]'),
     r"roles.dispatcher.vehicles = 'depot:depot-x': a vehicle of \[vehicles\]"),
    (("max_lifetime_s = 300", "max_lifetime_s = -1"),
     r"max_lifetime_s = -1: a number of seconds from 1 to 86400"),
    (("clock_skew_s = 5", "clock_skew = 5"), r"clock_skew = 5: not a known field"),
    (('depot = "depot-s"', 'depot = 7'), r"vehicles.v-900.depot = 7: a depot ID"),
])
def test_policy_errors_name_field_value_allowed(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ParameterError, match=message) as exc:
        parse_policy(tomllib.loads(TEXT.replace(*change, 1)))
    assert "\n" not in str(exc.value)


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="must be an existing TOML file"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[roles\n")
    with pytest.raises(ParameterError, match="is not valid TOML"):
        load_policy(bad)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ParameterError, match=r"roles = None: at least one \[roles.<name>\]"):
        load_policy(empty)


def test_a_depot_refuses_to_start_with_vehicles_without_keys(tmp_path: Path) -> None:
    from corridor.mobility.fleet.depot import DepotGateway
    from corridor.mobility.fleet.keys import FleetDirectory

    policy = parse_policy(tomllib.loads(TEXT))
    with pytest.raises(ParameterError, match=r"policy vehicles = \['v-001', 'v-002'\]: "
                       "vehicles of depot depot-n with public keys"):
        DepotGateway("depot-n", "sae-b", {"sae-a": "any"}, None, FleetDirectory(), policy,
                     link=None)  # type: ignore[arg-type]
