"""The ``[[hybrid]]`` tables of the corridor file, and the reason codes of KME failures."""

from __future__ import annotations

from typing import Any

import pytest

from corridor.errors import ParameterError
from corridor.hybrid.policy import Policy
from corridor.hybrid.qkd import missing_reason
from corridor.kms.client import KmeConnectionError, KmeProtocolError, KmeResponseError
from corridor.kms.config import HYBRID_POLICY_NAMES, HybridPairConfig, parse_hybrid_pairs
from corridor.kms.node import load_corridor, parse_corridor

SAES = {"sae-a": "kme-a", "sae-b": "kme-b", "sae-c": "kme-b"}


def test_the_kms_list_of_policy_names_is_the_hybrid_policy_enum() -> None:
    assert tuple(p.value for p in Policy) == HYBRID_POLICY_NAMES


def test_the_embedded_corridor_names_its_pair() -> None:
    spec = load_corridor()
    assert spec.hybrid == (HybridPairConfig("sae-a", "sae-b", "both-required", 1048576, 30.0),)
    assert spec.hybrid_pair("sae-b", "sae-a") is spec.hybrid[0]


def test_defaults_and_off_switches() -> None:
    [pair] = parse_hybrid_pairs([{"master_sae_id": "sae-a", "slave_sae_id": "sae-b"}], SAES)
    assert pair.policy == "both-required" and pair.rekey_after_bytes == 1 << 30
    [off] = parse_hybrid_pairs([{"master_sae_id": "sae-a", "slave_sae_id": "sae-b",
                                 "rekey_after_bytes": 0, "rekey_after_s": 0}], SAES)
    assert off.rekey_after_bytes is None and off.rekey_after_s is None


@pytest.mark.parametrize(("entry", "message"), [
    ({"policy": "x"}, "hybrid[0].policy = 'x': one of qkd-required, pqc-required, "
                      "both-required, any"),
    ({"slave_sae_id": "sae-z"}, "hybrid[0].slave_sae_id = 'sae-z': one of the [[saes]]"),
    ({"slave_sae_id": "sae-a"}, "hybrid[0].slave_sae_id = 'sae-a': an SAE other than"),
    ({"rekey_after_bytes": -1}, "hybrid[0].rekey_after_bytes = -1"),
    ({"rekey_after_s": "soon"}, "hybrid[0].rekey_after_s = 'soon'"),
    ({"colour": "red"}, "hybrid[0].colour = 'red': unknown setting"),
])
def test_bad_entries_are_named(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as excinfo:
        parse_hybrid_pairs([{"master_sae_id": "sae-a", "slave_sae_id": "sae-b", **entry}],
                           SAES)
    assert str(excinfo.value).startswith(message)


def test_one_entry_per_pair() -> None:
    with pytest.raises(ParameterError, match=r"hybrid\[1\].slave_sae_id .* already configured"):
        parse_hybrid_pairs([{"master_sae_id": "sae-a", "slave_sae_id": "sae-b"},
                            {"master_sae_id": "sae-b", "slave_sae_id": "sae-a"}], SAES)


def test_the_corridor_file_refuses_an_unknown_policy() -> None:
    data = {"kmes": [{"id": "kme-a"}, {"id": "kme-b"}],
            "links": [{"id": "l", "alice_kme": "kme-a", "bob_kme": "kme-b",
                       "preset": "modern-snspd", "parameters": {"length_km": 5.0}}],
            "saes": [{"id": "sae-a", "kme": "kme-a"}, {"id": "sae-b", "kme": "kme-b"}],
            "hybrid": [{"master_sae_id": "sae-a", "slave_sae_id": "sae-b", "policy": "x"}]}
    with pytest.raises(ParameterError) as excinfo:
        parse_corridor(data)
    assert excinfo.value.field == "hybrid[0].policy"


@pytest.mark.parametrize(("exc", "reason"), [
    (KmeConnectionError("cannot reach KME"), "kme_unreachable"),
    (KmeProtocolError("bad"), "kme_protocol_error"),
    (KmeResponseError(503, "not enough key material for 1 keys of 256 bits to 'sae-b'; "
                      "try fewer or smaller keys, or later"), "pool_empty"),
    (KmeResponseError(503, "the slave's KME 'kme-b' is unreachable; nothing was reserved"),
     "peer_kme_unreachable"),
    (KmeResponseError(503, "the slave's KME 'kme-b' is unreachable: the reservation was "
                      "not accepted; nothing was delivered"), "peer_kme_unreachable"),
    (KmeResponseError(503, "the slave's KME 'kme-b' refused the reservation (bytes 0..32 "
                      "of pool l A->B are not all held by KME kme-b (not yet ingested, "
                      "dropped, or already cut)); nothing was delivered"), "peer_kme_refused"),
    # A relayed pair at start-up: the message lists "KMEs unreachable" among the causes.
    (KmeResponseError(503, "no usable relay path from KME 'kme-a' to KME 'kme-c' now "
                      "(links quarantined, KMEs unreachable, a pool on the path short of "
                      "key, or too few disjoint paths for the pair's policy); nothing was "
                      "reserved"), "no_relay_path"),
    (KmeResponseError(503, "the key could not be relayed to KME 'kme-c': KME 'kme-b' did "
                      "not answer (timeout); nothing was delivered"), "relay_failed"),
    (KmeResponseError(503, "quota exceeded: 10 keys per minute"), "quota_exceeded"),
    (KmeResponseError(503, "the key store cannot be written now"), "kme_unavailable"),
    (KmeResponseError(400, "one or more keys specified are not found on KME"),
     "key_not_found"),
    (KmeResponseError(401, "unauthorized"), "kme_unauthorized"),
    (KmeResponseError(400, "size shall be a multiple of 8"), "kme_bad_request"),
])
def test_kme_failures_map_to_reason_codes(exc: Exception, reason: str) -> None:
    assert missing_reason(exc) == reason
