"""Small networks built as mappings, for the net tests."""

from __future__ import annotations

from typing import Any

import pytest


def network_data(sites: list[str], links: list[tuple[str, str, float]],
                 saes: dict[str, str], demand: list[tuple[str, str, float, int]],
                 *, coordinates: bool = True) -> dict[str, Any]:
    """A corridor mapping: one KME ``kme-<site>`` per site, links named ``<a>--<b>``
    (modern-snspd, blocks of 1e9 pulses), SAEs ``{sae: site}``."""
    return {
        "name": "test-net",
        "sites": [{"id": site, "name": site.upper(), "kind": "other",
                   **({"latitude_deg": 48.0 + 0.01 * i, "longitude_deg": 11.0 + 0.02 * i}
                      if coordinates else {})}
                  for i, site in enumerate(sites)],
        "kmes": [{"id": f"kme-{site}", "site": site} for site in sites],
        "links": [{"id": f"{a}--{b}", "alice_kme": f"kme-{a}", "bob_kme": f"kme-{b}",
                   "preset": "modern-snspd", "block_pulses": 1_000_000_000,
                   "parameters": {"length_km": length}} for a, b, length in links],
        "saes": [{"id": sae, "kme": f"kme-{site}"} for sae, site in saes.items()],
        "demand": [{"master_sae_id": m, "slave_sae_id": s, "key_rate_bits_per_s": rate,
                    "priority": priority} for m, s, rate, priority in demand],
    }


@pytest.fixture
def line() -> dict[str, Any]:
    """a -- b -- c, 10 km each; SAEs at a and c, 1 Mbit/s from a to c."""
    return network_data(["a", "b", "c"], [("a", "b", 10.0), ("b", "c", 10.0)],
                        {"sae-a": "a", "sae-c": "c"}, [("sae-a", "sae-c", 1e6, 1)])
