"""Tests of corridor.kms.up_file: reading corridor-up.json and what commands take from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from corridor.errors import ParameterError
from corridor.kms.up_file import pair_policy, read_up_file, sae_client

UP = {"kmes": [{"kme_id": "kme-a", "base_url": "https://127.0.0.1:1"}],
      "saes": [{"sae_id": "sae-a", "kme_id": "kme-a", "cert": "a.pem", "key": "a.key",
                "ca_cert": "ca.pem"}],
      "hybrid_sessions": [{"initiator_sae_id": "sae-a", "responder_sae_id": "sae-b",
                           "policy": "qkd-required"}]}


def test_a_pair_has_its_policy_in_either_order_and_both_required_otherwise() -> None:
    assert pair_policy(UP, "sae-a", "sae-b") == "qkd-required"
    assert pair_policy(UP, "sae-b", "sae-a") == "qkd-required"
    assert pair_policy(UP, "sae-a", "sae-c") == "both-required"
    assert pair_policy({}, "sae-a", "sae-b") == "both-required"


def test_an_unknown_sae_is_one_error_naming_the_option_and_the_known_ones() -> None:
    with pytest.raises(ParameterError) as caught:
        sae_client(UP, Path("."), "sae-x", "--sae")
    message = str(caught.value)
    assert "--sae" in message and "sae-x" in message and "sae-a" in message


def test_a_broken_file_is_one_error_naming_the_option(tmp_path: Path) -> None:
    path = tmp_path / "corridor-up.json"
    path.write_text("[1, 2]")
    with pytest.raises(ParameterError, match="--from-up"):
        read_up_file(path)
    with pytest.raises(ParameterError, match=r"an existing corridor-up\.json"):
        read_up_file(tmp_path / "missing.json")
