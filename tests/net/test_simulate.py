"""The discrete-event simulation of key pools: conservation, blocking against the fluid
expectation, key-aware against shortest-path, determinism, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import corridor.net.simulate as simulate_module
from corridor.errors import ParameterError
from corridor.kms.routing import DEFAULT_HORIZON_S
from corridor.net.simulate import STATES, STRATEGIES, SimulationConfig, build_pools, simulate
from corridor.net.topology import Network, load_network, parse_network
from tests.net.conftest import network_data

CITY = Path(__file__).resolve().parents[2] / "examples" / "city.toml"
REQUEST_BITS = 262_144


def _single_link(demand_bits_per_s: float) -> Network:
    return parse_network(network_data(["a", "b"], [("a", "b", 10.0)],
                                      {"sae-a": "a", "sae-b": "b"},
                                      [("sae-a", "sae-b", demand_bits_per_s, 1)]))


def _direction_rate() -> float:
    pools = build_pools(_single_link(1e3), SimulationConfig())
    return pools[0].rate_bits_per_s


def test_pools_conserve_key_and_stay_within_capacity() -> None:
    network = load_network(CITY)
    config = SimulationConfig(hours=0.2, horizon_s=0.0)
    sim = simulate(network, config)
    assert sim.config.duration_s == pytest.approx(720.0)
    for name in STRATEGIES:
        result = sim.results[name]
        served_key = sum(p.key_consumed_bits for p in result.pairs)
        # bits consumed from the pools = bits x hops of every served request
        assert sum(result.consumed_bits) == pytest.approx(served_key)
        assert served_key == pytest.approx(sum(
            REQUEST_BITS * hops * n for p in result.pairs for hops, n in p.hops.items()))
        for p in result.pairs:
            assert p.served + p.blocked == p.offered and p.served == sum(p.hops.values())
        for i, pool in enumerate(sim.pools):
            final = result.level_bits[i]
            assert 0.0 <= final <= pool.capacity_bits
            assert pool.capacity_bits + result.refilled_bits[i] - result.consumed_bits[i] \
                == pytest.approx(final, abs=1e-3)
            assert result.refilled_bits[i] + result.overflow_bits[i] == pytest.approx(
                pool.rate_bits_per_s * config.duration_s)
            assert sum(result.state_s[i]) == pytest.approx(config.duration_s)
            assert all(s >= 0 for s in result.state_s[i])
            assert all(0.0 <= row[i] <= pool.capacity_bits for row in result.samples)
    # the backup stream (4 Mbit/s, more than its direct link) drains dc -> cloud
    assert sim.results["shortest-path"].blocked > 0


def test_demand_below_the_rate_blocks_almost_nothing() -> None:
    rate = _direction_rate()
    sim = simulate(_single_link(0.5 * rate),
                   SimulationConfig(hours=0.5, pool_bits=20 * REQUEST_BITS))
    for name in STRATEGIES:
        assert sim.results[name].offered > 5_000
        assert sim.results[name].blocking_probability < 0.002


@pytest.mark.parametrize("load", [1.5, 3.0])
def test_demand_above_the_rate_blocks_the_fluid_share(load: float) -> None:
    """Fluid expectation: of the demand d over T, the pool gives its start C and rate R:
    blocking = 1 - (R T + C) / (d T)."""
    rate = _direction_rate()
    capacity = 20.0 * REQUEST_BITS
    config = SimulationConfig(hours=0.5, pool_bits=capacity)
    sim = simulate(_single_link(load * rate), config)
    duration = config.duration_s
    expected = 1.0 - (rate * duration + capacity) / (load * rate * duration)
    for name in STRATEGIES:
        assert sim.results[name].blocking_probability == pytest.approx(expected, abs=0.02)


def _square(load: float) -> Network:
    # a -- b -- d and a -- c -- d: two node-disjoint paths of two hops, equal spans
    return parse_network(network_data(
        ["a", "b", "c", "d"], [("a", "b", 10.0), ("b", "d", 10.0), ("a", "c", 10.0),
                               ("c", "d", 10.0)],
        {"sae-a": "a", "sae-d": "d"}, [("sae-a", "sae-d", load * _direction_rate(), 1)]))


@pytest.mark.parametrize("load", [0.5, 1.5])
def test_key_aware_is_never_worse_with_a_parallel_path(load: float) -> None:
    sim = simulate(_square(load), SimulationConfig(hours=0.25, pool_bits=20 * REQUEST_BITS))
    shortest = sim.results["shortest-path"].blocking_probability
    aware = sim.results["key-aware"].blocking_probability
    assert aware <= shortest
    if load > 1:  # one path gives 1/load of the demand, two give all of it
        assert shortest == pytest.approx(1 - 1 / load, abs=0.03)
        assert aware < 0.02


def test_candidate_paths_choose_what_key_aware_path_chooses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast least-cost choice over simple paths and kms.routing.key_aware_path on a
    snapshot (forced by allowing no candidates) route every request alike."""
    network = load_network(CITY)
    config = SimulationConfig(hours=0.05, horizon_s=0.0)
    fast = simulate(network, config).as_dict()["strategies"]["key-aware"]
    monkeypatch.setattr(simulate_module, "MAX_CANDIDATE_PATHS", 0)
    slow = simulate(network, config).as_dict()["strategies"]["key-aware"]
    assert slow == fast
    assert any(len(p["served_by_hops"]) > 1 for p in fast["pairs"])  # it did re-route


def _comparable(sim: simulate_module.Simulation) -> dict[str, Any]:
    data = sim.as_dict()
    for timing in ("elapsed_s", "cpu_s"):
        data.pop(timing)
    return data


def test_same_seed_same_run_other_seed_other_arrivals() -> None:
    network = load_network(CITY)
    one = _comparable(simulate(network, SimulationConfig(hours=0.05, seed=7)))
    assert one == _comparable(simulate(network, SimulationConfig(hours=0.05, seed=7)))
    other = _comparable(simulate(network, SimulationConfig(hours=0.05, seed=8)))
    assert [p["offered"] for p in other["strategies"]["shortest-path"]["pairs"]] != \
        [p["offered"] for p in one["strategies"]["shortest-path"]["pairs"]]


def test_thresholds_and_defaults_are_reported() -> None:
    sim = simulate(load_network(CITY), SimulationConfig(hours=0.01))
    data = sim.as_dict()
    assert data["config"]["horizon_s"] == DEFAULT_HORIZON_S
    assert data["config"]["states"] == list(STATES)
    pool = data["pools"][0]
    # city.toml: max_key_count 100000 x key_size_bits 256
    assert pool["capacity_bits"] == 25_600_000
    assert pool["high_bits"] == 0.5 * pool["capacity_bits"]
    assert pool["low_bits"] == 0.1 * pool["capacity_bits"]
    assert pool["empty_bits"] == REQUEST_BITS


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"hours": 0.0}, "--hours"), ({"hours": float("nan")}, "--hours"),
    ({"request_bits": 0}, "--request-bits"), ({"seed": -1}, "--seed"),
    ({"pool_bits": -5.0}, "--pool-bits"), ({"high_fraction": 1.5}, "--high"),
    ({"low_fraction": 0.6}, "--low/--high"), ({"low_fraction": 1.5}, "--low"),
    ({"horizon_s": -1.0}, "--horizon-s"),
])
def test_bad_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ParameterError) as caught:
        SimulationConfig(**kwargs)
    assert caught.value.field == field
    assert "\n" not in str(caught.value)
