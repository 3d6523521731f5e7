"""corridor.net.generate: the shipped 1,000-site example is what the generator makes."""

from __future__ import annotations

from pathlib import Path

from corridor.net.generate import generate_regional
from corridor.net.topology import load_network

REGIONAL = Path(__file__).resolve().parents[2] / "examples" / "regional-1000.toml"


def test_the_shipped_regional_network_is_the_generators_output() -> None:
    # examples/regional-1000.toml is `corridor net generate --sites 1000 --seed 1`: if the
    # generator changes, regenerate the file (and the figures docs/network.md quotes).
    assert REGIONAL.read_text() == generate_regional(1000, 1)


def test_the_shipped_regional_network_loads() -> None:
    network = load_network(REGIONAL)
    assert len(network.sites) == 1000 and len(network.links) == 1968
