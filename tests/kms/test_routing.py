"""Key-aware routing (corridor.kms.routing): examples and properties on random snapshots."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.kms.routing import (
    LinkState,
    NetworkSnapshot,
    disjoint_paths,
    hop_cost,
    key_aware_path,
    shortest_path,
)


def _link(a: str, b: str, pool: float = 1e6, *, rate: float = 0.0,
          quarantined: bool = False, pool_ba: float | None = None) -> LinkState:
    return LinkState(f"{a}-{b}", a, b, pool_bits_ab=pool,
                     pool_bits_ba=pool if pool_ba is None else pool_ba,
                     rate_bits_per_s_ab=rate, rate_bits_per_s_ba=rate, quarantined=quarantined)


def _diamond(upper_pool: float, lower_pool: float) -> NetworkSnapshot:
    """s - u - t and s - l - t: two paths of two hops each."""
    return NetworkSnapshot.of("sult", [_link("s", "u", upper_pool), _link("u", "t", upper_pool),
                                       _link("s", "l", lower_pool), _link("l", "t", lower_pool)])


def test_shortest_path_counts_hops_and_names_links() -> None:
    snapshot = NetworkSnapshot.of("abcd", [_link("a", "b"), _link("b", "c"), _link("c", "d"),
                                           _link("a", "d")])
    route = shortest_path(snapshot, "a", "c")
    assert route is not None and route.hops == 2 and route.cost == 2.0
    assert route.links in (("a-b", "b-c"), ("a-d", "c-d"))
    assert shortest_path(snapshot, "a", "a") == shortest_path(snapshot, "a", "a")


def test_key_aware_prefers_the_fuller_pool_and_detours_around_an_empty_one() -> None:
    assert key_aware_path(_diamond(1e6, 1e3), "s", "t", 256).kmes == ("s", "u", "t")
    assert key_aware_path(_diamond(1e3, 1e6), "s", "t", 256).kmes == ("s", "l", "t")
    # A direct link with an empty pool and no refill costs 1 + 4096 > three full hops.
    snapshot = NetworkSnapshot.of("abcd", [_link("a", "d", 0.0), _link("a", "b"),
                                           _link("b", "c"), _link("c", "d")])
    assert key_aware_path(snapshot, "a", "d", 4096).kmes == ("a", "b", "c", "d")
    assert shortest_path(snapshot, "a", "d").kmes == ("a", "d")


def test_key_aware_uses_the_pool_of_the_direction_of_travel() -> None:
    # Upper branch full from s towards t, empty the other way; lower branch the reverse.
    snapshot = NetworkSnapshot.of("sult", [
        LinkState("su", "s", "u", pool_bits_ab=1e6), LinkState("ut", "u", "t", pool_bits_ab=1e6),
        LinkState("sl", "s", "l", pool_bits_ba=1e6), LinkState("lt", "l", "t", pool_bits_ba=1e6)])
    assert key_aware_path(snapshot, "s", "t", 256).kmes == ("s", "u", "t")
    assert key_aware_path(snapshot, "t", "s", 256).kmes == ("t", "l", "s")


def test_refill_rate_counts_over_the_horizon() -> None:
    link = _link("a", "b", 0.0, rate=1000.0)
    assert hop_cost(link, "a", 1000.0, horizon_s=0.0) == pytest.approx(1001.0)
    assert hop_cost(link, "a", 1000.0, horizon_s=1.0) == pytest.approx(1.0 + 1000 / 1001)


def test_quarantined_link_is_avoided_and_can_disconnect() -> None:
    snapshot = NetworkSnapshot.of("abc", [_link("a", "b", quarantined=True), _link("b", "c")])
    assert shortest_path(snapshot, "a", "c") is None
    assert key_aware_path(snapshot, "a", "c", 256) is None
    assert disjoint_paths(snapshot, "a", "c", 2, 256) == []


def test_disjoint_paths_on_a_ring_and_a_chain() -> None:
    ring = NetworkSnapshot.of("abcdef", [_link(x, y) for x, y in
                                         zip("abcdef", "bcdefa", strict=True)])
    routes = disjoint_paths(ring, "a", "d", 3, 256)
    assert sorted(route.kmes for route in routes) == [("a", "b", "c", "d"), ("a", "f", "e", "d")]
    chain = NetworkSnapshot.of("abc", [_link("a", "b"), _link("b", "c")])
    assert [route.kmes for route in disjoint_paths(chain, "a", "c", 2, 256)] == [("a", "b", "c")]
    assert disjoint_paths(chain, "b", "b", 2, 256)[0].kmes == ("b",)


def test_bad_requests_name_the_field() -> None:
    snapshot = NetworkSnapshot.of("ab", [_link("a", "b")])
    with pytest.raises(ParameterError, match=r"^target = 'z'"):
        shortest_path(snapshot, "a", "z")
    with pytest.raises(ParameterError, match=r"^key_bits = -1"):
        key_aware_path(snapshot, "a", "b", -1)
    with pytest.raises(ParameterError, match=r"^k = 0"):
        disjoint_paths(snapshot, "a", "b", 0, 1)
    with pytest.raises(ParameterError, match=r"pool_bits_ab = -5"):
        LinkState("x", "a", "b", pool_bits_ab=-5)
    with pytest.raises(ParameterError, match="must differ from kme_a"):
        LinkState("x", "a", "a")
    with pytest.raises(ParameterError, match="must be the only link"):
        NetworkSnapshot.of("ab", [_link("a", "b"), LinkState("other", "b", "a")])
    with pytest.raises(ParameterError, match="must join KMEs of the snapshot"):
        NetworkSnapshot.of("ab", [_link("a", "c")])


# --- properties on random snapshots -----------------------------------------------------

@st.composite
def snapshots(draw: st.DrawFn) -> NetworkSnapshot:
    size = draw(st.integers(2, 9))
    kmes = [f"k{i}" for i in range(size)]
    pairs = [(a, b) for i, a in enumerate(kmes) for b in kmes[i + 1:]]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    pool = st.sampled_from([0.0, 10.0, 1e3, 1e5, 1e7])
    links = [LinkState(f"{a}-{b}", a, b, pool_bits_ab=draw(pool), pool_bits_ba=draw(pool),
                       rate_bits_per_s_ab=draw(pool), rate_bits_per_s_ba=draw(pool),
                       quarantined=draw(st.booleans()))
             for a, b in chosen]
    return NetworkSnapshot.of(kmes, links)


def _ends(snapshot: NetworkSnapshot, data: st.DataObject) -> tuple[str, str]:
    return (data.draw(st.sampled_from(snapshot.kmes)), data.draw(st.sampled_from(snapshot.kmes)))


def _reference_graph(snapshot: NetworkSnapshot) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(snapshot.kmes)
    graph.add_edges_from((link.kme_a, link.kme_b) for link in snapshot.links
                         if not link.quarantined)
    return graph


def _is_walk(snapshot: NetworkSnapshot, route, source: str, target: str) -> None:
    by_id = {link.link_id: link for link in snapshot.links}
    assert route.kmes[0] == source and route.kmes[-1] == target
    assert len(set(route.kmes)) == len(route.kmes)  # simple
    for (u, v), link_id in zip(itertools.pairwise(route.kmes), route.links, strict=True):
        assert {u, v} == {by_id[link_id].kme_a, by_id[link_id].kme_b}
        assert not by_id[link_id].quarantined


@settings(max_examples=150, deadline=None)
@given(snapshot=snapshots(), data=st.data(), key_bits=st.sampled_from([0, 256, 1e6]))
def test_a_path_exists_iff_connected_without_quarantined_links(
        snapshot: NetworkSnapshot, data: st.DataObject, key_bits: float) -> None:
    source, target = _ends(snapshot, data)
    connected = nx.has_path(_reference_graph(snapshot), source, target)
    hop_route = shortest_path(snapshot, source, target)
    aware_route = key_aware_path(snapshot, source, target, key_bits)
    assert (hop_route is not None) == connected
    assert (aware_route is not None) == connected
    if connected:
        _is_walk(snapshot, hop_route, source, target)
        _is_walk(snapshot, aware_route, source, target)
        assert hop_route.hops == nx.shortest_path_length(_reference_graph(snapshot), source,
                                                         target)
        assert aware_route.hops >= hop_route.hops


@settings(max_examples=150, deadline=None)
@given(snapshot=snapshots(), data=st.data(), k=st.integers(1, 4))
def test_disjoint_paths_share_no_interior_node(snapshot: NetworkSnapshot, data: st.DataObject,
                                               k: int) -> None:
    source, target = _ends(snapshot, data)
    routes = disjoint_paths(snapshot, source, target, k, 256)
    reference = _reference_graph(snapshot)
    if source == target:
        assert [route.kmes for route in routes] == [(source,)]
        return
    if not nx.has_path(reference, source, target):
        assert routes == []
        return
    most = len(list(nx.node_disjoint_paths(reference, source, target)))
    assert len(routes) == min(k, most)
    interiors = [set(route.interior) for route in routes]
    for i, first in enumerate(interiors):
        for second in interiors[i + 1:]:
            assert not first & second
    for route in routes:
        _is_walk(snapshot, route, source, target)


@settings(max_examples=150, deadline=None)
@given(snapshot=snapshots(), data=st.data())
def test_key_aware_never_uses_a_quarantined_link(snapshot: NetworkSnapshot,
                                                 data: st.DataObject) -> None:
    source, target = _ends(snapshot, data)
    quarantined = {link.link_id for link in snapshot.links if link.quarantined}
    route = key_aware_path(snapshot, source, target, 256)
    if route is not None:
        assert not set(route.links) & quarantined
    for disjoint in disjoint_paths(snapshot, source, target, 3, 256):
        assert not set(disjoint.links) & quarantined


@settings(max_examples=150, deadline=None)
@given(fuller=st.floats(1.0, 1e9), ratio=st.floats(0.0, 0.99), key_bits=st.floats(1.0, 1e6),
       upper_first=st.booleans())
def test_key_aware_prefers_the_fuller_pool_when_hops_tie(fuller: float, ratio: float,
                                                         key_bits: float,
                                                         upper_first: bool) -> None:
    emptier = fuller * ratio
    snapshot = _diamond(fuller, emptier) if upper_first else _diamond(emptier, fuller)
    route = key_aware_path(snapshot, "s", "t", key_bits)
    assert route is not None
    assert route.kmes == (("s", "u", "t") if upper_first else ("s", "l", "t"))
