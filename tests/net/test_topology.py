"""The corridor file as a network (corridor.net.topology): what it accepts, what it refuses."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from corridor.errors import ParameterError
from corridor.hybrid.policy import Policy
from corridor.kms.node import load_corridor
from corridor.net.topology import load_network, parse_network
from tests.net.conftest import network_data

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_line_parses_with_sites_demand_and_default_policy(line: dict[str, Any]) -> None:
    network = parse_network(line)
    assert sorted(network.sites) == ["a", "b", "c"]
    assert network.sites["b"].has_coordinates and network.sites["b"].name == "B"
    assert network.site_of_kme("kme-c") == "c" and network.kmes_at("a") == ["kme-a"]
    assert [(d.master_sae_id, d.slave_sae_id, d.key_rate_bits_per_s) for d in network.demand] \
        == [("sae-a", "sae-c", 1e6)]
    assert network.policy("sae-a", "sae-c") is Policy.BOTH_REQUIRED


def test_hybrid_policies_are_read_in_either_order(line: dict[str, Any]) -> None:
    line["hybrid"] = [{"master_sae_id": "sae-c", "slave_sae_id": "sae-a", "policy": "any",
                       "rekey_after_s": 60}]
    network = parse_network(line)
    assert network.policy("sae-a", "sae-c") is Policy.ANY
    line["hybrid"][0]["policy"] = "qkd-maybe"
    with pytest.raises(ParameterError, match=r"^hybrid\[0\]\.policy = 'qkd-maybe': one of"):
        parse_network(line)


def test_without_sites_every_kme_site_is_a_site_without_coordinates(
        line: dict[str, Any]) -> None:
    del line["sites"]
    network = parse_network(line)
    assert sorted(network.sites) == ["a", "b", "c"]
    assert not any(site.has_coordinates for site in network.sites.values())


def _mutated(line: dict[str, Any], change: Any) -> dict[str, Any]:
    data = copy.deepcopy(line)
    change(data)
    return data


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["kmes"][1].update(site="nowhere"),
     r"^kmes\.kme-b\.site = 'nowhere': must be the id of a \[\[sites\]\] table \(a, b, c\)"),
    (lambda d: d["sites"].append({"id": "a"}), r"^sites\[3\]\.id = 'a': must be unique"),
    (lambda d: d["sites"].append({"id": "d"}), r"^sites\.d = 'd': must have at least one KME"),
    (lambda d: d["sites"].append({"id": "a--b"}), r"must differ from every link ID"),
    (lambda d: d["sites"][0].update(kind="castle"), r"^sites\.a\.kind = 'castle': must be one"),
    (lambda d: d["sites"][0].update(latitude_deg=123.0),
     r"^sites\.a\.latitude_deg = 123\.0: must be decimal degrees in \[-90, 90\]"),
    (lambda d: d["sites"][0].pop("longitude_deg"),
     r"^sites\.a\.longitude_deg = None: must be given with the other coordinate"),
    (lambda d: d["sites"][0].update(altitude_m=5), r"^sites\[0\]\.altitude_m = 5: unknown"),
    (lambda d: d["links"][0].update(bob_kme="kme-a"),
     r"^links\.a--b\.bob_kme = 'kme-a': must differ from alice_kme"),
    (lambda d: d["kmes"].append({"id": "kme-a2", "site": "a"}) or d["links"].append(
        {"id": "inside", "alice_kme": "kme-a", "bob_kme": "kme-a2",
         "parameters": {"length_km": 1.0}}),
     r"^links\.inside\.bob_kme = 'kme-a2': must stand at another site than alice_kme"),
    (lambda d: d["links"][0]["parameters"].update(length_km=5000.0),
     r"^links\.a--b\.parameters\.length_km = 5000\.0: must be a span length in \(0, 500\] km"),
    (lambda d: d["links"][0]["parameters"].update(length_km=-3),
     r"^links\.a--b\.parameters\.length_km = -3: must be a span length"),
    (lambda d: d["links"][0]["parameters"].pop("length_km"),
     r"^links\.a--b\.parameters\.length_km = None: is required for planning"),
    (lambda d: d["links"].append(dict(d["links"][0])), r"must be unique"),
    (lambda d: d["demand"][0].update(key_rate_bits_per_s=-1),
     r"^demand\[0\]\.key_rate_bits_per_s = -1: must be key bits per second in \(0, 1e\+09\]"),
    (lambda d: d["demand"][0].update(key_rate_bits_per_s=8e9), r"multiplied by 8"),
    (lambda d: d["demand"][0].update(priority=0),
     r"^demand\[0\]\.priority = 0: must be an integer from 1 \(served first\) to 9"),
    (lambda d: d["demand"][0].update(slave_sae_id="sae-x"),
     r"^demand\[0\]\.slave_sae_id = 'sae-x': must be the id of a \[\[saes\]\] table"),
    (lambda d: d["demand"][0].update(slave_sae_id="sae-a"), r"must differ from master_sae_id"),
    (lambda d: d["demand"].append(dict(d["demand"][0])),
     r"^demand\[1\] = 'sae-a -> sae-c': must be unique; demand\[0\] already names this pair"),
])
def test_mistakes_name_the_field_and_what_is_allowed(line: dict[str, Any], change: Any,
                                                     message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_network(_mutated(line, change))


def test_demand_between_unconnected_saes_is_refused() -> None:
    data = network_data(["a", "b", "c", "d"], [("a", "b", 5.0), ("c", "d", 5.0)],
                        {"sae-a": "a", "sae-d": "d"}, [("sae-a", "sae-d", 1e3, 1)])
    with pytest.raises(ParameterError, match=r"^demand\[0\] = 'sae-a -> sae-d': needs a path "
                       r"of links between KME 'kme-a' and KME 'kme-d'"):
        parse_network(data)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"^FILE = .*must be an existing corridor TOML"):
        load_network(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ParameterError, match=r"is not valid TOML"):
        load_network(bad)


@pytest.mark.parametrize("name", ["two-site.toml", "city.toml", "tokyo-qkd-2010.toml"])
def test_examples_load_as_networks_and_as_corridors_for_up(name: str) -> None:
    network = load_network(EXAMPLES / name)
    assert network.demand and all(site.has_coordinates for site in network.sites.values())
    spec = load_corridor(EXAMPLES / name)  # what `corridor up --config` reads
    assert set(spec.kmes) == set(network.spec.kmes)


def test_two_site_example_is_the_embedded_default_plus_sites_and_demand() -> None:
    default = load_corridor(None)
    example = load_network(EXAMPLES / "two-site.toml").spec
    assert example.name == default.name and example.saes == default.saes
    assert {k: (v.site, v.port) for k, v in example.kmes.items()} == \
        {k: (v.site, v.port) for k, v in default.kmes.items()}
    assert example.links["link-ab"].params == default.links["link-ab"].params
    data = tomllib.loads((EXAMPLES / "two-site.toml").read_text())
    assert {site["id"] for site in data["sites"]} == {k.site for k in default.kmes.values()}
