"""The SAE client's parsing of KME answers (no server needed: the wire objects alone)."""

from __future__ import annotations

import base64
import uuid

import pytest

from corridor.errors import ParameterError
from corridor.kms.api import KeyContainer
from corridor.kms.client import KmeProtocolError, SaeClient, parse_keys, parse_status

KEY_ID = str(uuid.uuid4())
KEY_B64 = base64.b64encode(bytes(range(32))).decode()
STATUS = {"source_KME_ID": "kme-a", "target_KME_ID": "kme-b", "master_SAE_ID": "sae-a",
          "slave_SAE_ID": "sae-b", "key_size": 256, "stored_key_count": 3,
          "max_key_count": 10, "max_key_per_request": 5, "max_key_size": 1024,
          "min_key_size": 64, "max_SAE_ID_count": 0}


@pytest.mark.parametrize("array", ["keys", "Keys"])
def test_both_spellings_of_the_key_array_are_accepted(array: str) -> None:
    body = {array: [{"key_ID": KEY_ID, "key": KEY_B64}]}
    (key,) = parse_keys(body)
    assert key.key_id == KEY_ID and key.key == bytes(range(32))
    assert KeyContainer.model_validate(body).keys[0].key_ID == KEY_ID


@pytest.mark.parametrize(("body", "needle"), [
    ([], "not a JSON object"),
    ({"keys": "x"}, "no keys array"),
    ({"keys": [{"key_ID": KEY_ID}]}, "lacks"),
    ({"keys": [{"key_ID": "42", "key": KEY_B64}]}, "not a UUID"),
    ({"keys": [{"key_ID": KEY_ID, "key": "@@not base64@@"}]}, "not valid base64"),
])
def test_malformed_containers_are_refused_without_echoing_key_fields(body, needle) -> None:
    with pytest.raises(KmeProtocolError, match=needle) as info:
        parse_keys(body)
    assert "@@not base64@@" not in str(info.value)


def test_status_types_are_checked() -> None:
    assert parse_status(STATUS).max_key_size == 1024
    for field, value in (("key_size", "256"), ("max_SAE_ID_count", True), ("slave_SAE_ID", 7)):
        with pytest.raises(KmeProtocolError, match=field):
            parse_status({**STATUS, field: value})
    missing = dict(STATUS)
    del missing["min_key_size"]
    with pytest.raises(KmeProtocolError, match="min_key_size"):
        parse_status(missing)


def test_delivered_keys_never_show_their_bytes() -> None:
    (key,) = parse_keys({"keys": [{"key_ID": KEY_ID, "key": KEY_B64}]})
    assert KEY_B64 not in repr(key) and str(bytes(range(32))) not in repr(key)
    assert "size_bits=256" in repr(key)


def test_only_https_kme_urls_are_accepted(tmp_path) -> None:
    with pytest.raises(ParameterError, match="https://"):
        SaeClient("http://127.0.0.1:8443", tmp_path / "c", tmp_path / "k", tmp_path / "a")
    with pytest.raises(ParameterError, match="ca"):
        SaeClient("https://127.0.0.1:8443", tmp_path / "c", tmp_path / "k", tmp_path / "a")
